-- The outbox's lanes: reports are delivered per lane, one per connector and one per receiver
-- host where a connector reports to many (Ketch's callbacks), so that a receiver that hangs or
-- is down holds back only its own reports.
--
-- Expand only: the previous release keeps working against this schema during a rolling update.
-- It inserts reports without a lane (they take the connector's one lane, '') and claims with its
-- own statement over erasure_reports_due, which stays.

-- Metadata only: a constant default rewrites no row.
ALTER TABLE erasure_reports ADD COLUMN lane text NOT NULL DEFAULT '';

-- A lane is a host and port (a host name is at most 253 bytes); bounded so that no caller's URL
-- can make an index entry too large to store. NOT VALID: every existing row holds '', and
-- checking them would scan the table under this migration's lock; every write is checked.
ALTER TABLE erasure_reports ADD CONSTRAINT report_lane_bounded CHECK (octet_length(lane) <= 512) NOT VALID;

-- The claim of one lane reads only that lane's due rows, in order; finding the lanes that have
-- due rows is a loose index scan over its leading columns, one descent per lane. Partial, as
-- erasure_reports_due: small however many reports were delivered. Not CONCURRENTLY (migrate runs
-- in one transaction): writes of reports wait while it is built, one read of the table.
CREATE INDEX erasure_reports_lane_due ON erasure_reports (connector, lane, run_after, id)
    WHERE status IN ('pending', 'delivering');

-- No migration lists connectors: a connector is a name, as data. Databases created before 007
-- had this list in 005; it is gone from 005 too, so that both end in one schema.
ALTER TABLE erasure_reports DROP CONSTRAINT IF EXISTS report_connector_known;

COMMENT ON COLUMN erasure_reports.lane IS
    'The receiver the report goes to, where a connector reports to many (Ketch: the callback''s host); '''' for the connector''s one receiver. Each lane is delivered apart.';
