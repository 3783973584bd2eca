-- Where planning a run in pieces starts and stops: the UTC months of the
-- oldest and newest raw rows from $1 on (NULL, NULL when there are none),
-- read from the two ends of the created_at index, and those rows counted
-- up to $2 + 1 (an index-only scan that stops there): a history of at
-- most $2 rows is planned in one piece; and the server's estimate of the
-- table's rows (pg_class.reltuples, kept by ANALYZE), which sizes the
-- pieces. Rows outside the two months
-- (written later, or rollup rows of no raw row) are covered by the first
-- piece, open upwards, and the last, open downwards.
SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       date_trunc('month', max(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       (SELECT count(*) FROM (SELECT FROM task_usage WHERE created_at >= $1 LIMIT $2 + 1) s),
       (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'task_usage'::regclass)
FROM task_usage
WHERE created_at >= $1
