-- Picks one slice whose owner is gone: its lease ran out, or its lock
-- connection neither holds the cron lock nor waits for it (the marker below
-- becomes that condition, see Store.Claim). Oldest lease first, which also keeps the
-- scan on the running-slice index. $1 run; the claimed marks follow
-- (claim_set.sql, $2..$4).
WITH pick AS (
	SELECT id FROM _SCHEMA_.slice
	WHERE run_id = $1 AND state = 'running'
	  AND (lease_until < now() OR NOT /*owner_holds_cron_lock*/)
	ORDER BY lease_until LIMIT 1
	FOR UPDATE SKIP LOCKED
)
