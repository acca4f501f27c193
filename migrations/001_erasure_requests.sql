-- The queue of erasure requests and the evidence of every call made for them.
--
-- A privacy request system writes rows with:
--   INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2)
--   ON CONFLICT (request_ref) DO NOTHING;
-- Everything else is the worker's.

CREATE TABLE erasure_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_ref      text        NOT NULL,
    external_user_id text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    outcome          text,
    attempts         integer     NOT NULL DEFAULT 0,
    run_after        timestamptz NOT NULL DEFAULT now(),
    received_at      timestamptz NOT NULL DEFAULT now(),
    due_at           timestamptz NOT NULL DEFAULT now() + interval '30 days',
    completed_at     timestamptz,
    last_error       text,
    last_error_code  text,
    lease_owner      text,
    lease_expires_at timestamptz,

    CONSTRAINT erasure_requests_request_ref_key UNIQUE (request_ref),
    CONSTRAINT request_ref_present
        CHECK (request_ref ~ '[^[:space:]]' AND octet_length(request_ref) <= 255),
    -- Empty, blank and oversized ids can never be sent to Knot: refuse them at the door.
    CONSTRAINT external_user_id_present
        CHECK (external_user_id ~ '[^[:space:]]' AND octet_length(external_user_id) <= 1024),
    CONSTRAINT status_known
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    -- A row is leased exactly while it is running.
    CONSTRAINT lease_iff_running
        CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- A row is finished exactly when it has a completion time and an outcome.
    CONSTRAINT completed_iff_finished
        CHECK ((status IN ('succeeded', 'failed')) = (completed_at IS NOT NULL)),
    CONSTRAINT outcome_matches_status
        CHECK (CASE status
                   WHEN 'succeeded' THEN outcome IN ('deleted', 'not_found')
                   WHEN 'failed'    THEN outcome IN ('rejected', 'invalid', 'exhausted')
                   ELSE outcome IS NULL
               END),
    CONSTRAINT last_error_bounded CHECK (octet_length(last_error) <= 2048)
);

COMMENT ON TABLE erasure_requests IS
    'GDPR erasure requests for Knot. Insert (request_ref, external_user_id[, due_at]) ON CONFLICT (request_ref) DO NOTHING; the erasure-worker does the rest.';

-- The claim reads only this index: it stays small however many finished rows accumulate.
CREATE INDEX erasure_requests_claimable ON erasure_requests (run_after, id) WHERE status = 'pending';
-- Lease recovery and the running gauge.
CREATE INDEX erasure_requests_leased ON erasure_requests (lease_expires_at) WHERE status = 'running';
-- Oldest pending age, overdue count: bounded to unfinished rows.
CREATE INDEX erasure_requests_open_due ON erasure_requests (due_at) WHERE status IN ('pending', 'running');
CREATE INDEX erasure_requests_pending_received ON erasure_requests (received_at) WHERE status = 'pending';
-- Failed rows need a person: status, requeue and the failed gauge read them.
CREATE INDEX erasure_requests_failed ON erasure_requests (completed_at) WHERE status = 'failed';

CREATE TABLE erasure_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  bigint      NOT NULL REFERENCES erasure_requests (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    http_status integer,
    error_code  text,
    result      text        NOT NULL,

    CONSTRAINT result_known CHECK (result IN
        ('deleted', 'not_found', 'permanent', 'retryable', 'rate_limited', 'unauthorized', 'invalid'))
);

COMMENT ON TABLE erasure_attempts IS
    'One row per call to Knot (or refusal to call): the evidence that an erasure was carried out. Holds no secrets and no external_user_id.';

CREATE INDEX erasure_attempts_request ON erasure_attempts (request_id);

-- Wake idle workers as soon as requests arrive. One notification per statement, not per row,
-- so a bulk load of a million rows sends one.
CREATE FUNCTION erasure_requests_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('erasure_requests', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER erasure_requests_notify
    AFTER INSERT ON erasure_requests
    FOR EACH STATEMENT EXECUTE FUNCTION erasure_requests_notify();
