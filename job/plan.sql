-- The slices of a backfill: one per workspace and time window, for every
-- window in which the workspace holds counted raw rows, or still holds
-- rollup rows without raw rows (those buckets are stale and the slice
-- deletes them). Windows are common to all workspaces: a UTC month, or, when
-- the month holds more than $2 raw rows in all, consecutive whole-day parts
-- of it of about $2 rows each (a single day is never cut). The windows of a
-- month tile it, so every stale bucket falls in some slice, and slices of
-- one window can share one sweep through time. One pass over the raw rows;
-- days and months are cut on UTC timestamps without time zone so the
-- session TimeZone cannot move a boundary.
-- read_from is the oldest creation time of a task with usage in the slice:
-- the slice statement need not look at older tasks.
-- $1: lower bound of created_at / bucket_hour ('-infinity' for all history).
-- $2: most raw rows per window before a month is cut.
-- $3: upper bound, exclusive ('infinity' for all history). A run is planned
-- in pieces of whole UTC months (see checkpoint.Store.PlanNext): a month's
-- windows depend on that month's days only, so planning [$1, $3) piece by
-- piece yields the slices of planning it whole. Rollup rows are bounded by
-- the unique key's index, which leads with bucket_hour.
-- per_day may hold a (workspace, day) twice, once with its raw rows and once
-- for its rollup rows; every step after it sums or takes the least, so
-- merging the two there would only cost a second aggregation of every group.
WITH per_day AS (
    SELECT a.workspace_id,
           date_trunc('day', u.created_at AT TIME ZONE 'UTC') AS day,
           count(*) AS n,
           min(t.created_at) AS read_from
    FROM task_usage u
    JOIN agent_task_queue t ON t.id = u.task_id
    JOIN agent a ON a.id = t.agent_id
    WHERE u.created_at >= $1
      AND u.created_at < $3
      AND t.runtime_id IS NOT NULL
    GROUP BY 1, 2
    UNION ALL
    SELECT h.workspace_id, date_trunc('day', h.bucket_hour AT TIME ZONE 'UTC'), 0, NULL
    FROM task_usage_hourly h
    WHERE h.bucket_hour >= $1
      AND h.bucket_hour < $3
    GROUP BY 1, 2
), days AS (
    -- A day joins part k of its month when the rows before it in the month
    -- (all workspaces) number between k*$2 and (k+1)*$2.
    SELECT day, date_trunc('month', day) AS month,
           floor((sum(n) OVER (PARTITION BY date_trunc('month', day)
                               ORDER BY day ROWS UNBOUNDED PRECEDING) - n) / $2::bigint)::bigint AS part
    FROM (SELECT day, sum(n) AS n FROM per_day GROUP BY day) all_workspaces
), windows AS (
    SELECT month, part,
           CASE WHEN part = 0 THEN month ELSE min(day) END AS window_from,
           coalesce(lead(min(day)) OVER (PARTITION BY month ORDER BY part), month + interval '1 month') AS window_to
    FROM days
    GROUP BY month, part
)
SELECT p.workspace_id,
       w.window_from AT TIME ZONE 'UTC' AS from_ts,
       w.window_to AT TIME ZONE 'UTC'   AS to_ts,
       sum(p.n)::bigint                 AS est_rows,
       min(p.read_from)                 AS read_from
FROM per_day p
JOIN days d ON d.day = p.day
JOIN windows w ON w.month = d.month AND w.part = d.part
GROUP BY p.workspace_id, w.window_from, w.window_to
