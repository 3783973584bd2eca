-- Picks the pending slice with the largest id, alone: ids are assigned
-- largest-first within each planned piece, so early in a run it is the
-- smallest slice planned so far, which commits soonest. A process's
-- workers take it as their first claim, so the run's first commit does not
-- wait for a whole first batch of the largest slices. $1 run; the claimed
-- marks follow (claim_set.sql, $2..$4).
WITH pick AS (
	SELECT id
	FROM _SCHEMA_.slice
	WHERE run_id = $1 AND state = 'pending' AND (retry_at IS NULL OR retry_at <= now())
	ORDER BY id DESC LIMIT 1
	FOR UPDATE SKIP LOCKED
)
