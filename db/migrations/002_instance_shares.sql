-- 002: what instances share. Each worker resource (the NLP API, every GPU node) has a
-- limit of requests in flight; instance_shares holds each live instance's granted part of
-- it, and the parts of one resource never add up to more than its limit. in_flight is what
-- each instance had in flight per stage at its last heartbeat, so every instance reports
-- the same totals.
CREATE TABLE instance_shares (
    instance text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    resource text NOT NULL,
    share    integer NOT NULL CHECK (share >= 0),
    PRIMARY KEY (instance, resource)
);
ALTER TABLE instances ADD COLUMN in_flight jsonb NOT NULL DEFAULT '{}';
