-- One token bucket for the whole deployment (GCRA, the generic cell rate algorithm), kept in
-- erasure_rate_limit's single row. Each replica takes its sends from it in small batches, so the
-- deployment's burst is RATE_LIMIT_BURST however many replicas there are, and a replica that
-- joins sends at once into whatever room the others leave. Shares of the rate, as migration 002
-- computed them, remain only as each replica's estimate of what it will get.

-- The theoretical arrival time: the bucket is full when it is in the past, and each send taken
-- moves it on by one emission interval (1 / the current rate).
ALTER TABLE erasure_rate_limit ADD COLUMN tat timestamptz NOT NULL DEFAULT 'epoch';

-- The lowest RATE_LIMIT_BURST among the live replicas, written by each heartbeat as
-- ceiling_rps is. NULL until a replica of this version has beaten.
ALTER TABLE erasure_rate_limit ADD COLUMN burst integer CHECK (burst >= 1);

-- Replicas of this version take from the bucket; older ones during a rollout still send at the
-- share they computed (share_rps), which the bucket leaves to them.
ALTER TABLE erasure_workers ADD COLUMN takes_from_bucket boolean NOT NULL DEFAULT false;
