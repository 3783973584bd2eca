-- The slices of a backfill: every (workspace, UTC month) that holds counted
-- raw rows, plus every pair that still holds rollup rows without raw rows
-- (those buckets are stale and the slice deletes them). A month with more
-- than $2 raw rows is cut into consecutive whole-day ranges of about $2
-- rows each (a single day is never cut), and the ranges of a month always
-- tile it, so every stale bucket falls in some slice. One pass over the raw
-- rows; days and months are cut on UTC timestamps without time zone so the
-- session TimeZone cannot move a boundary.
-- read_from is the oldest creation time of a task with usage in the slice:
-- the slice statement need not look at older tasks.
-- $1: lower bound of created_at / bucket_hour ('-infinity' for all history).
-- $2: most raw rows per slice before a month is cut.
WITH per_day AS (
    SELECT workspace_id, day, sum(n) AS n, min(read_from) AS read_from
    FROM (
        SELECT a.workspace_id,
               date_trunc('day', u.created_at AT TIME ZONE 'UTC') AS day,
               count(*) AS n,
               min(t.created_at) AS read_from
        FROM task_usage u
        JOIN agent_task_queue t ON t.id = u.task_id
        JOIN agent a ON a.id = t.agent_id
        WHERE u.created_at >= $1
          AND t.runtime_id IS NOT NULL
        GROUP BY 1, 2
        UNION ALL
        SELECT h.workspace_id, date_trunc('day', h.bucket_hour AT TIME ZONE 'UTC'), 0, NULL
        FROM task_usage_hourly h
        WHERE h.bucket_hour >= $1
        GROUP BY 1, 2
    ) raw_and_rollup
    GROUP BY 1, 2
), parts AS (
    -- A day joins part k of its month when the rows before it in the month
    -- number between k*$2 and (k+1)*$2.
    SELECT workspace_id, date_trunc('month', day) AS month, day, n, read_from,
           floor((sum(n) OVER (PARTITION BY workspace_id, date_trunc('month', day)
                               ORDER BY day ROWS UNBOUNDED PRECEDING) - n) / $2::bigint)::bigint AS part
    FROM per_day
), ranges AS (
    SELECT workspace_id, month, part, min(day) AS first_day, sum(n)::bigint AS est_rows,
           min(read_from) AS read_from
    FROM parts
    GROUP BY 1, 2, 3
)
SELECT workspace_id,
       (CASE WHEN part = 0 THEN month ELSE first_day END) AT TIME ZONE 'UTC' AS from_ts,
       coalesce(lead(first_day) OVER w, month + interval '1 month') AT TIME ZONE 'UTC' AS to_ts,
       est_rows,
       read_from
FROM ranges
WINDOW w AS (PARTITION BY workspace_id, month ORDER BY part)
