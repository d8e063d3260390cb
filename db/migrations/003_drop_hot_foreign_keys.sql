-- 003: drop the foreign keys on the hot, append-mostly tables. Rows of calls are only ever
-- inserted in the transaction that creates their batch, call_stages rows only by the
-- engine for calls it holds, and nothing is deleted; the checks cost about half of the
-- database time of a 200,000-file POST /batches and a share of every flush.
ALTER TABLE calls DROP CONSTRAINT IF EXISTS calls_batch_id_fkey;
ALTER TABLE call_stages DROP CONSTRAINT IF EXISTS call_stages_call_id_fkey;
ALTER TABLE batch_progress DROP CONSTRAINT IF EXISTS batch_progress_batch_id_fkey;
