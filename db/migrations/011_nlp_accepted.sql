-- 011: what the NLP API held when it refused (pipeline/limiter.c). At a refusal every
-- instance counts its requests the API had accepted and were still in flight at that
-- moment, and adds them here; the reports of one refusal arrive within est_window of the
-- first (est_at). Once every live instance reported (est_n), est_sum is the number of
-- requests the API was working on when it refused: an upper bound of its capacity, and the
-- capacity itself when nothing older was still in flight (the burst after a pause).
ALTER TABLE nlp_limiter
    ADD COLUMN est_at  timestamptz,
    ADD COLUMN est_sum integer NOT NULL DEFAULT 0 CHECK (est_sum >= 0),
    ADD COLUMN est_n   integer NOT NULL DEFAULT 0 CHECK (est_n >= 0);
