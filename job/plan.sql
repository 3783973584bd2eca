-- The slices of a backfill: every (workspace, UTC month) that holds counted
-- raw rows, plus every pair that still holds rollup rows without raw rows
-- (those buckets are stale and the slice deletes them). One pass over the
-- raw rows; months are cut on UTC timestamps without time zone so the
-- session TimeZone cannot move a boundary.
-- $1: lower bound of created_at / bucket_hour ('-infinity' for all history).
SELECT workspace_id,
       month AT TIME ZONE 'UTC'                        AS from_ts,
       (month + interval '1 month') AT TIME ZONE 'UTC' AS to_ts,
       sum(n)::bigint                                  AS est_rows
FROM (
    SELECT a.workspace_id,
           date_trunc('month', u.created_at AT TIME ZONE 'UTC') AS month,
           count(*) AS n
    FROM task_usage u
    JOIN agent_task_queue t ON t.id = u.task_id
    JOIN agent a ON a.id = t.agent_id
    WHERE u.created_at >= $1
      AND t.runtime_id IS NOT NULL
    GROUP BY 1, 2
    UNION ALL
    SELECT h.workspace_id,
           date_trunc('month', h.bucket_hour AT TIME ZONE 'UTC'),
           0
    FROM task_usage_hourly h
    WHERE h.bucket_hour >= $1
    GROUP BY 1, 2
) pairs
GROUP BY workspace_id, month
