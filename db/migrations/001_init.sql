-- 001: batches, calls (the work queue), per-stage records, progress counters, instances.

CREATE TABLE instances (
    id           text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE batches (
    id              bigserial PRIMARY KEY,
    name            text,
    state           text NOT NULL DEFAULT 'created'
                    CHECK (state IN ('created', 'running', 'completed',
                                     'completed_with_errors', 'cancelled')),
    mode            text NOT NULL DEFAULT 'pipelined' CHECK (mode IN ('pipelined', 'staged')),
    file_count      integer NOT NULL,
    metadata        jsonb,
    idempotency_key text UNIQUE,
    request_hash    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX batches_state_idx ON batches (state, id);

-- One row per call. `stage` is the index (0..6) of the stage the call is at, 7 once every
-- stage is done. `status` says where it is at that stage. A call is claimed by setting
-- status='running' and lease_owner to an instance id; the lease holds while that
-- instance's heartbeat is fresh.
CREATE TABLE calls (
    id               bigserial PRIMARY KEY,
    batch_id         bigint NOT NULL REFERENCES batches (id),
    seq              integer NOT NULL,
    file             text NOT NULL,
    stage            smallint NOT NULL DEFAULT 0 CHECK (stage BETWEEN 0 AND 7),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    not_before       timestamptz,
    node             text,
    file_name        text,
    lease_owner      text,
    stage_started_at timestamptz,
    UNIQUE (batch_id, seq)
);
CREATE INDEX calls_pending_idx ON calls (batch_id, stage, id) WHERE status = 'pending';
CREATE INDEX calls_running_idx ON calls (lease_owner) WHERE status = 'running';

-- The record of every stage a call finished (done) or failed at.
CREATE TABLE call_stages (
    call_id     bigint NOT NULL REFERENCES calls (id),
    stage       smallint NOT NULL CHECK (stage BETWEEN 0 AND 6),
    state       text NOT NULL CHECK (state IN ('done', 'failed')),
    attempts    integer NOT NULL,
    last_error  text,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL,
    result      jsonb,
    PRIMARY KEY (call_id, stage)
);

-- How many calls of a batch are at each (stage, status): kept by the triggers below in the
-- same transaction as every change to calls, so progress is read from at most 40 rows
-- per batch and is always one consistent snapshot.
CREATE TABLE batch_progress (
    batch_id bigint NOT NULL REFERENCES batches (id),
    stage    smallint NOT NULL,
    status   text NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (batch_id, stage, status)
);

CREATE FUNCTION calls_progress_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_progress AS p (batch_id, stage, status, n)
    SELECT batch_id, stage, status, count(*) FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (batch_id, stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION calls_progress_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_progress AS p (batch_id, stage, status, n)
    SELECT batch_id, stage, status, sum(d) FROM (
        SELECT batch_id, stage, status, -1 AS d FROM old_rows
        UNION ALL
        SELECT batch_id, stage, status, 1 AS d FROM new_rows) x
    GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (batch_id, stage, status) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER calls_progress_ins AFTER INSERT ON calls
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION calls_progress_insert();
CREATE TRIGGER calls_progress_upd AFTER UPDATE ON calls
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION calls_progress_update();
