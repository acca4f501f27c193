-- Two kinds of report that some receivers need beside the outcome:
--
-- * at_intake: a report deliverable as soon as its request is stored, telling the receiver that
--   the request was taken ("in progress"). It is written 'pending', not 'waiting'. The request's
--   other reports of the same connector are not claimed while it is undelivered, so that a
--   receiver never hears of the intake after the outcome.
-- * not_before: a report held until then (intake + the connector's hold), for a receiver that
--   cannot take the outcome straight after it handed the request over. The statements that
--   finish a request make it deliverable no sooner.
--
-- Expand only: the previous release keeps working against this schema during a rolling update.
-- It writes neither column (false and NULL are what its reports mean), and its claim does not
-- know them: it never claims a connector it does not know, and a held report that one of its
-- replicas finishes goes out at once, which the connector that asked for the hold tolerates.

-- Metadata only: a constant default rewrites no row.
ALTER TABLE erasure_reports ADD COLUMN at_intake boolean NOT NULL DEFAULT false;
ALTER TABLE erasure_reports ADD COLUMN not_before timestamptz;

-- The claim's check that a request's report at intake is still undelivered: tiny, since it
-- holds only those. Not CONCURRENTLY (migrate runs in one transaction): writes of reports wait
-- while it is built, one read of the table; no row matches yet.
CREATE INDEX erasure_reports_intake_undelivered ON erasure_reports (request_id, connector)
    WHERE at_intake AND status IN ('pending', 'delivering');

COMMENT ON COLUMN erasure_reports.at_intake IS
    'The report tells the receiver that the request was taken: deliverable from intake, before the request finishes; the request''s other reports of its connector wait until it is delivered or failed.';
COMMENT ON COLUMN erasure_reports.not_before IS
    'The report is not delivered sooner (its connector''s hold after intake); NULL: no hold.';
