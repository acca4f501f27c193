-- Storage limitation (GDPR Art. 5(1)(e)): a finished request keeps its raw external_user_id for
-- IDENTIFIER_RETENTION only. Then the worker replaces it with an HMAC-SHA256 of it under a key
-- kept outside the database (IDENTIFIER_KEY_FILE), computed in the worker, so that the key
-- never reaches the database or its logs. EVIDENCE_RETENTION after completion the request, its
-- calls and its reports are deleted (the ON DELETE CASCADEs of erasure_attempts, erasure_reports
-- and erasure_report_attempts).

-- When the raw id was replaced; NULL while the row still holds it.
ALTER TABLE erasure_requests ADD COLUMN pseudonymised_at timestamptz;

-- A pending or running request needs its raw id to be carried out: only a finished one may lose
-- it, and a pseudonymised row can never go back to pending (a requeue must leave it be). NOT
-- VALID: every existing row has pseudonymised_at NULL, which satisfies both, and checking them
-- would scan the whole table under this migration's lock. Both are enforced on every write.
ALTER TABLE erasure_requests ADD CONSTRAINT pseudonymised_only_when_finished
    CHECK (pseudonymised_at IS NULL OR status IN ('succeeded', 'failed')) NOT VALID;
-- What a pseudonymised row holds is a pseudonym, never a raw id left behind.
ALTER TABLE erasure_requests ADD CONSTRAINT pseudonymised_holds_a_pseudonym
    CHECK (pseudonymised_at IS NULL OR external_user_id ~ '^hmac-sha256:[0-9a-f]{64}$') NOT VALID;

-- The pseudonymisation's work list, and the deletion's while IDENTIFIER_RETENTION is off:
-- finished rows that still hold their raw id, oldest first (id orders the rows of one finish,
-- which share its instant, so that a batch can start where the last one ended). It is the one
-- index a finish adds an entry to (a finish already writes a new entry into the primary key and
-- request_ref's index), and it stays small: a row leaves it IDENTIFIER_RETENTION after it
-- finished.
CREATE INDEX erasure_requests_identified ON erasure_requests (completed_at, id)
    WHERE pseudonymised_at IS NULL AND status IN ('succeeded', 'failed');

-- The deletion's work list: pseudonymised rows, oldest first. Written by the pseudonymisation,
-- never on the hot path.
CREATE INDEX erasure_requests_pseudonymised ON erasure_requests (completed_at)
    WHERE pseudonymised_at IS NOT NULL;

COMMENT ON COLUMN erasure_requests.pseudonymised_at IS
    'When external_user_id was replaced by hmac-sha256:<hex> (IDENTIFIER_RETENTION after completion); NULL while it holds the raw id.';

-- Until it is analysed, the planner knows nothing of the new column and takes
-- "pseudonymised_at IS NULL" for rare: the first purge's statements would be planned for a
-- handful of rows over what may be millions.
ANALYZE erasure_requests (pseudonymised_at);
