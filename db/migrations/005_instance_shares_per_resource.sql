-- 005: shares for every limited resource, not only the NLP API. Each worker resource (the
-- NLP API, every GPU node) has a limit of requests in flight; instance_shares holds each
-- live instance's granted part of it, and the parts of one resource never add up to more
-- than its limit. Replaces instances.nlp_share of 002.
CREATE TABLE instance_shares (
    instance text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    resource text NOT NULL,
    share    integer NOT NULL CHECK (share >= 0),
    PRIMARY KEY (instance, resource)
);
ALTER TABLE instances DROP COLUMN nlp_share;
