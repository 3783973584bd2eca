-- Picks a batch of pending slices: the first in id order (the largest
-- left), then pending slices of other workspaces in the same window,
-- largest first, while their estimated rows stay within the budget.
-- $1 run, $5 row budget, $6 most companions of the first slice; the
-- claimed marks follow (claim_set.sql, $2..$4).
WITH first AS (
	SELECT run_id, id, est_rows, from_ts, to_ts
	FROM _SCHEMA_.slice
	WHERE run_id = $1 AND state = 'pending' AND (retry_at IS NULL OR retry_at <= now())
	ORDER BY id LIMIT 1
	FOR UPDATE SKIP LOCKED
), mates AS (
	SELECT s.id, s.est_rows
	FROM _SCHEMA_.slice s JOIN first f
	  ON s.run_id = f.run_id AND s.from_ts = f.from_ts AND s.to_ts = f.to_ts
	WHERE f.est_rows < $5 AND s.state = 'pending' AND s.id <> f.id
	ORDER BY s.id LIMIT $6
	FOR UPDATE OF s SKIP LOCKED
), pick AS (
	SELECT id FROM first
	UNION ALL
	SELECT m.id
	FROM (SELECT id, sum(est_rows) OVER (ORDER BY id) AS running FROM mates) m, first f
	WHERE f.est_rows + m.running <= $5
)
