-- Marks the picked slices claimed by $2 (owner) whose lock connection is
-- backend $3, for a lease of $4 milliseconds. The picked ids are gathered
-- into an array first, so the update is always primary-key lookups: joined
-- to the pick, the planner can misjudge its size and rescan it per slice
-- of the run. A job file's slice has a shard (or none) and a key range
-- instead of a workspace and a window. Each slice carries the run's watermark target, which the job
-- needs to hand the dirty queue over.
UPDATE _SCHEMA_.slice s
SET state = 'running', owner = $2, owner_pid = $3, attempts = s.attempts + 1,
    lease_until = now() + $4 * interval '1 millisecond', started_at = now(), error = NULL
WHERE s.run_id = $1 AND s.id = ANY (ARRAY (SELECT id FROM pick))
RETURNING s.run_id, s.id, coalesce(s.workspace_id::text, s.shard), s.from_ts, s.to_ts, s.lo, s.hi, s.est_rows, s.attempts,
          s.read_from, coalesce(s.ws_rows, 0), coalesce(s.window_rows, 0),
          (SELECT r.watermark_target FROM _SCHEMA_.run r WHERE r.id = s.run_id)
