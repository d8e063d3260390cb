-- 004: make a call's move from one stage to the next a HOT update (no index entries
-- written): the pending index no longer has `stage` in its key (claims filter on it), and
-- pages keep room for the new row versions.
DROP INDEX IF EXISTS calls_pending_idx;
CREATE INDEX calls_pending_idx ON calls (batch_id, id) WHERE status = 'pending';
ALTER TABLE calls SET (fillfactor = 70);
ALTER TABLE batch_progress SET (fillfactor = 50);
