-- Replace, step two: insert the aggregate of the batch's raw rows, read
-- through one of the two access paths (by_workspace.sql, by_time.sql).
-- Bounds are hour-aligned, so every bucket lands inside a range step one
-- deleted. The bucket is computed inline as the spec defines it (the hour
-- in UTC, whatever the session's TimeZone) rather than through the
-- database's task_usage_hour_bucket(), which PostgreSQL does not inline:
-- a function call per raw row cost a fifth of the read. verify.sql uses
-- the helper, so the two are checked against each other.
INSERT INTO task_usage_hourly (
    bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    task_count, event_count, cost_usd_ticks,
    uncosted_input_tokens, uncosted_output_tokens,
    uncosted_cache_read_tokens, uncosted_cache_write_tokens
)
