-- 008: hot queries that cost what they claim or read, not the size of calls (a million rows).
--
-- Claims filter on `stage` (GPU stages 0..4, NLP 5..6): with `stage` out of the pending
-- index (004), a GPU claim read past every call waiting at the NLP stages (300,000 at llm1
-- ahead of 600,000 at stage 0: 366 ms a claim). With it in the key a claim reads what it
-- takes (1.4 ms). A call's move to its next stage is no longer a HOT update; bench/ab.py
-- measured the cost (docs/BENCHMARKS.md, "million").
DROP INDEX IF EXISTS calls_pending_idx;
CREATE INDEX calls_pending_idx ON calls (batch_id, stage, id) WHERE status = 'pending';

-- GET /batches/{id}/calls?state=failed|cancelled: the ended calls of a batch in seq order,
-- without reading the others (partial: only ended calls have entries).
CREATE INDEX calls_ended_idx ON calls (batch_id, status, seq)
    WHERE status IN ('failed', 'cancelled');

-- The progress of every stage over all batches (GET /stages/{name}/status): the sum of
-- batch_progress by (stage, status), kept by the same triggers in the same transactions,
-- so the status reads about 40 rows whatever the number of batches. Rows are updated in
-- (stage, status) order, after those of batch_progress, so concurrent writers take the
-- locks in one order.
CREATE TABLE stage_progress (
    stage  smallint NOT NULL,
    status text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (stage, status)
) WITH (fillfactor = 50);
INSERT INTO stage_progress (stage, status, n)
    SELECT stage, status, sum(n) FROM batch_progress GROUP BY 1, 2;

CREATE OR REPLACE FUNCTION calls_progress_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_progress AS p (batch_id, stage, status, n)
    SELECT batch_id, stage, status, count(*) FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (batch_id, stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    INSERT INTO stage_progress AS p (stage, status, n)
    SELECT stage, status, count(*) FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION calls_progress_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_progress AS p (batch_id, stage, status, n)
    SELECT batch_id, stage, status, sum(d) FROM (
        SELECT batch_id, stage, status, -1 AS d FROM old_rows
        UNION ALL
        SELECT batch_id, stage, status, 1 AS d FROM new_rows) x
    GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (batch_id, stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    INSERT INTO stage_progress AS p (stage, status, n)
    SELECT stage, status, sum(d) FROM (
        SELECT stage, status, -1 AS d FROM old_rows
        UNION ALL
        SELECT stage, status, 1 AS d FROM new_rows) x
    GROUP BY 1, 2 HAVING sum(d) <> 0 ORDER BY 1, 2
    ON CONFLICT (stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- DELETE /batches/{id} removes a batch's progress rows: they leave the sums too.
CREATE FUNCTION batch_progress_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stage_progress AS p (stage, status, n)
    SELECT stage, status, -sum(n) FROM old_rows GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2
    ON CONFLICT (stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER batch_progress_del AFTER DELETE ON batch_progress
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_progress_delete();
