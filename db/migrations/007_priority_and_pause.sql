-- 007: running batches share every resource in proportion to their priority (an integer >= 1,
-- default 1), and a batch can be paused (no new requests; those in flight finish).
ALTER TABLE batches ADD COLUMN priority integer NOT NULL DEFAULT 1 CHECK (priority >= 1);
ALTER TABLE batches DROP CONSTRAINT IF EXISTS batches_state_check;
ALTER TABLE batches ADD CONSTRAINT batches_state_check
    CHECK (state IN ('created', 'running', 'paused', 'completed', 'completed_with_errors',
                     'cancelled'));
