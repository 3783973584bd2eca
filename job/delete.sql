-- Replace, step one: drop the batch's buckets. The batch is a list of
-- (workspace $1[i], [$2[i], $3[i])) ranges; each is one index range scan.
DELETE FROM task_usage_hourly h
USING unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS r(workspace_id, from_ts, to_ts)
WHERE h.workspace_id = r.workspace_id
  AND h.bucket_hour >= r.from_ts
  AND h.bucket_hour < r.to_ts
