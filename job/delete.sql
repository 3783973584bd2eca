-- Replace, step one: drop the workspace's buckets in [$2, $3).
DELETE FROM task_usage_hourly
WHERE workspace_id = $1
  AND bucket_hour >= $2
  AND bucket_hour < $3
