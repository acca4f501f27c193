-- Replicas share one rate limit (RATE_LIMIT_RPS is the deployment's, not a pod's).
--
-- Each replica heartbeats its row in erasure_workers; its share of the deployment's rate is its
-- weight (busy or idle) over the sum of the live replicas' weights. erasure_rate_limit holds the
-- deployment's current rate, halved by any replica told 429 and raised again by heartbeats once
-- the 429s stop (AIMD). Every time here is the database's clock, so replicas' clocks never
-- meet.

CREATE TABLE erasure_workers (
    id           text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- The row counts as a live replica until then: heartbeat_at plus the replica's TTL.
    expires_at   timestamptz NOT NULL,
    busy         boolean     NOT NULL DEFAULT false,
    -- The rate this replica allowed itself at its last heartbeat, for `status` and dashboards.
    share_rps    double precision NOT NULL DEFAULT 0
);

CREATE TABLE erasure_rate_limit (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    ceiling_rps  double precision NOT NULL CHECK (ceiling_rps > 0),
    current_rps  double precision NOT NULL CHECK (current_rps > 0),
    decreased_at timestamptz NOT NULL DEFAULT 'epoch',
    increased_at timestamptz NOT NULL DEFAULT now(),
    -- Nobody calls Knot before this: the longest Retry-After any replica was given.
    hold_until   timestamptz NOT NULL DEFAULT 'epoch'
);
