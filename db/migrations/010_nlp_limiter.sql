-- 010: one adaptive NLP limit for the whole cluster (pipeline/limiter.c). A single row: the
-- limit every instance's shares of "nlp" split (1..max_lim, llm.concurrency), the limit at
-- the last decrease (ceiling, 0 = none known), the probes above it refused in a row (each
-- doubles the wait before the next one, for the whole cluster), when it last changed and decreased (the
-- updates are rate-limited on the database's clock), the time until which no instance starts
-- an NLP request (a Retry-After seen by any of them), and the last 20 changes, newest first.
CREATE TABLE nlp_limiter (
    id           integer PRIMARY KEY CHECK (id = 1),
    lim          integer NOT NULL CHECK (lim >= 1),
    max_lim      integer NOT NULL CHECK (max_lim >= 1),
    ceiling      integer NOT NULL DEFAULT 0 CHECK (ceiling >= 0),
    probes_refused integer NOT NULL DEFAULT 0 CHECK (probes_refused >= 0),
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    decreased_at timestamptz,
    pause_until  timestamptz,
    history      jsonb NOT NULL DEFAULT '[]'::jsonb
);

-- The NLP budgets (llm.tokens_per_minute, llm.requests_per_minute) for the whole cluster: the
-- grants each instance took, on the database's clock. A grant is spent within a few seconds
-- (pipeline/budget.c), and what was granted over any window of a minute plus that never
-- passes the budget, so what is spent over any minute never does either.
CREATE TABLE nlp_budget_grants (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    instance text NOT NULL,
    tokens   bigint NOT NULL CHECK (tokens >= 0),
    requests integer NOT NULL CHECK (requests >= 0)
);
CREATE INDEX nlp_budget_grants_at ON nlp_budget_grants (at);
