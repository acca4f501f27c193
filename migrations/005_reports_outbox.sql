-- Outcomes go back to the privacy request system a request came from, through an outbox.
--
-- A request that came in by a door whose system wants its outcome (the HTTP API with
-- REPORT_WEBHOOK_URL set, Ketch, Transcend) gets its report rows in the statement that inserts
-- it, 'waiting'. The statement that finishes the request makes them 'pending' (one statement:
-- no finished request without its report, no report without its finish). Every replica's
-- reporter claims pending rows with SKIP LOCKED and a lease, delivers them and records each
-- attempt; a leased row whose lease ran out is claimable again.

CREATE TABLE erasure_reports (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id       bigint      NOT NULL REFERENCES erasure_requests (id) ON DELETE CASCADE,
    connector        text        NOT NULL,
    -- Which of the request's receivers: Ketch sends one callback or more, each with its own
    -- headers, and each gets the final status. 0 for the other connectors.
    target           integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL DEFAULT 'waiting',
    -- What the delivery needs and no one else may see: Ketch's callback URL and headers,
    -- Transcend's nonce. Never logged; dropped once the report is delivered.
    credentials      jsonb,
    attempts         integer     NOT NULL DEFAULT 0,
    -- Claimable from then on: the next try of a pending row, or the end of a delivering row's
    -- lease.
    run_after        timestamptz,
    lease_owner      text,
    lease_token      bigint,
    ready_at         timestamptz, -- when the request finished: the report's age counts from it
    delivered_at     timestamptz,
    last_result      text,
    last_http_status integer,
    last_error       text,

    CONSTRAINT erasure_reports_target_key UNIQUE (request_id, connector, target),
    CONSTRAINT report_status_known
        CHECK (status IN ('waiting', 'pending', 'delivering', 'delivered', 'failed')),
    CONSTRAINT report_due_iff_undelivered
        CHECK ((status IN ('pending', 'delivering')) = (run_after IS NOT NULL)),
    CONSTRAINT report_lease_iff_delivering
        CHECK ((status = 'delivering') = (lease_owner IS NOT NULL AND lease_token IS NOT NULL)),
    CONSTRAINT report_ready_unless_waiting CHECK ((status = 'waiting') = (ready_at IS NULL)),
    CONSTRAINT report_delivered_keeps_no_credentials
        CHECK (status <> 'delivered' OR (credentials IS NULL AND delivered_at IS NOT NULL)),
    CONSTRAINT report_last_error_bounded CHECK (octet_length(last_error) <= 2048)
);

COMMENT ON TABLE erasure_reports IS
    'The outcome of each erasure request for the privacy request system it came from: an outbox, written by the statement that finishes the request and delivered by the erasure-worker. credentials is secret.';

-- The reporter's claim, and the pending gauge: small however many reports were delivered.
CREATE INDEX erasure_reports_due ON erasure_reports (run_after, id) WHERE status IN ('pending', 'delivering');
-- The oldest undelivered report.
CREATE INDEX erasure_reports_undelivered ON erasure_reports (ready_at) WHERE status IN ('pending', 'delivering');
-- Reports a receiver refused for good wait for a person: status, requeue and the failed gauge.
CREATE INDEX erasure_reports_failed ON erasure_reports (connector) WHERE status = 'failed';

CREATE TABLE erasure_report_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    report_id    bigint      NOT NULL REFERENCES erasure_reports (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    worker       text        NOT NULL,
    duration_ms  integer     NOT NULL,
    http_status  integer,
    result       text        NOT NULL,
    error        text,

    CONSTRAINT report_attempt_result_known CHECK (result IN
        ('delivered', 'closed', 'retry', 'rate_limited', 'unauthorized', 'rejected')),
    CONSTRAINT report_attempt_error_bounded CHECK (octet_length(error) <= 2048)
);

COMMENT ON TABLE erasure_report_attempts IS
    'One row per attempt to deliver a report: when, by which worker, the receiver''s HTTP status and what it meant. Holds no credentials.';

CREATE INDEX erasure_report_attempts_report ON erasure_report_attempts (report_id);

-- Work that one replica at a time must do (pulling Transcend; later, purging), River's way: a
-- row per duty with its holder and an expiry, renewed while held and taken over once it lapses.
-- It needs no session state, so it works behind PgBouncer in transaction mode, where a session
-- advisory lock would not hold.
CREATE TABLE erasure_leaders (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    elected_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
