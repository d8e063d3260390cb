-- 002: what each instance publishes with its heartbeat: its granted share of the NLP API's
-- concurrency (the shares of all instances never add up to more than llm.concurrency)
-- and its requests in flight per stage (so every instance reports the same totals).
ALTER TABLE instances ADD COLUMN nlp_share integer NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN in_flight jsonb NOT NULL DEFAULT '{}';
