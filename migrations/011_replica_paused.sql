-- Each replica says in its heartbeat whether it has paused on Knot's rejection of its
-- credentials, so that the console and `status` can tell, rather than only each replica's
-- erasure_worker_paused gauge.
--
-- Expand only: the previous release neither writes nor reads the column, and its heartbeats
-- leave it NULL, which reads as "not known" (an older replica does not say).
ALTER TABLE erasure_workers ADD COLUMN paused boolean;
