-- Where planning a run in pieces starts and stops: the UTC months of the
-- oldest and newest raw rows from $1 on (NULL, NULL when there are none),
-- read from the two ends of the created_at index, and those rows counted
-- up to $2 + 1 (an index-only scan that stops there): a history of at
-- most $2 rows is planned in one piece. Rows outside the two months
-- (written later, or rollup rows of no raw row) are covered by the first
-- piece, open upwards, and the last, open downwards.
SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       date_trunc('month', max(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       (SELECT count(*) FROM (SELECT FROM task_usage WHERE created_at >= $1 LIMIT $2 + 1) s)
FROM task_usage
WHERE created_at >= $1
