-- 009: completion webhooks. A batch may name a callback_url. When the batch ends (finished_at
-- set: completed, completed_with_errors or cancelled), a delivery is queued in
-- webhook_deliveries by the very statement that ends it (an outbox: never lost on a restart).
-- Any instance sends a due delivery under a lease (lease_owner, lease_until, claim_token from
-- claim_token_seq), so with several instances each attempt is made by one of them; a delivery
-- is retried with back-off until its receiver answers 2xx (README "Webhooks").
ALTER TABLE batches ADD COLUMN callback_url text;

CREATE TABLE webhook_deliveries (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(), -- X-Cofi-Delivery
    batch_id     bigint NOT NULL,  -- no foreign key: a delivery outlives DELETE of its batch
    url          text NOT NULL,
    body         text,             -- the batch object sent, rendered once (NULL: not yet)
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_at      timestamptz NOT NULL DEFAULT clock_timestamp(), -- due from then
    attempts     integer NOT NULL DEFAULT 0,
    last_status  integer,          -- the HTTP status of the last answer, NULL when none came
    last_error   text,
    delivered_at timestamptz,
    lease_owner  text,
    lease_until  timestamptz,
    claim_token  bigint
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_at)
    WHERE delivered_at IS NULL;
CREATE INDEX webhook_deliveries_batch_idx ON webhook_deliveries (batch_id, created_at);

-- The batch object's "callback" figures (db/batches_db.c): a batch's latest delivery as JSON
-- text, NULL when it has none. A function, so the batch queries stay short: their text shows
-- whole in pg_stat_activity (track_activity_query_size, 1024 bytes by default).
CREATE FUNCTION webhook_last_delivery(batch bigint) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', d.id, 'attempts', d.attempts, 'last_status', d.last_status,
        'last_error', d.last_error,
        'delivered_at',
        to_char(d.delivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'next_attempt_at', CASE WHEN d.delivered_at IS NULL
            THEN to_char(d.next_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END)::text
    FROM webhook_deliveries d WHERE d.batch_id = batch ORDER BY d.created_at DESC LIMIT 1
$$;
