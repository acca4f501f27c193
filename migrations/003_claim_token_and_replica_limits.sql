-- Fence every transition of a claimed row on a token that no other claim of the row ever
-- carries. Owner and attempt were not enough: a released claim gives its attempt back, so the
-- owner's next claim of the row carried the same pair, and a retried finish of the release
-- could land on the new, live claim.
CREATE SEQUENCE erasure_claim_token_seq AS bigint;

-- Kept after the row leaves running, so that a finish retried after its answer was lost can
-- tell that it committed; cleared when a lease is recovered or a failed row is requeued.
ALTER TABLE erasure_requests ADD COLUMN claim_token bigint;

-- Rows claimed by an older binary during a rollout get a token now; their owner still fences on
-- (owner, attempt) and never reads it.
UPDATE erasure_requests SET claim_token = nextval('erasure_claim_token_seq') WHERE status = 'running';

ALTER TABLE erasure_requests ADD CONSTRAINT claim_token_while_running
    CHECK (status <> 'running' OR claim_token IS NOT NULL);

-- Each replica's own RATE_LIMIT_RPS and RATE_LIMIT_BURST. While replicas disagree (a rollout
-- that changes them), the deployment follows the lowest among the live ones. NULL for rows of
-- replicas older than this migration.
ALTER TABLE erasure_workers ADD COLUMN ceiling_rps double precision CHECK (ceiling_rps > 0);
ALTER TABLE erasure_workers ADD COLUMN burst integer CHECK (burst >= 1);
