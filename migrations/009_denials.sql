-- A door's final denial of a request, as a record: the request the system sent and why it was
-- answered "denied" without being carried out (Ketch's denied/insufficient_identification when it
-- names no identity in KETCH_IDENTITY_SPACE). Ketch takes that answer as final and closes the
-- request, so the operator and an auditor must be able to find it: the CCPA's regulations
-- (11 CCR §7101) ask for records of requests and how they were answered, the reason for a denial
-- included, for 24 months. No personal data: the request's ref, the door, the reason and the
-- field at fault. Kept EVIDENCE_RETENTION after its last repeat, like a finished request.
--
-- A new table: the previous release neither reads nor writes it.

CREATE TABLE erasure_denials (
    request_ref text        PRIMARY KEY,
    door        text        NOT NULL,
    reason      text        NOT NULL,
    field       text,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    times       integer     NOT NULL DEFAULT 1,

    CONSTRAINT denial_ref_bounded CHECK (octet_length(request_ref) <= 255),
    CONSTRAINT denial_fields_bounded CHECK (octet_length(door) <= 64 AND octet_length(reason) <= 64
                                            AND octet_length(field) <= 256)
);

-- The purge, oldest first.
CREATE INDEX erasure_denials_last ON erasure_denials (last_at);

COMMENT ON TABLE erasure_denials IS
    'Requests a door answered with a final denial without carrying them out, and why: no personal data. Kept EVIDENCE_RETENTION after the last repeat.';
