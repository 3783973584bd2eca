-- Every rollup row of [$1, $2) that differs from the aggregate of the raw
-- rows, in either direction (wrong, missing or extra), counted per
-- (workspace, UTC month). updated_at is bookkeeping and not compared.
WITH expected AS (
    /*aggregate*/
), actual AS (
    SELECT bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           task_count, event_count, cost_usd_ticks,
           uncosted_input_tokens, uncosted_output_tokens,
           uncosted_cache_read_tokens, uncosted_cache_write_tokens
    FROM task_usage_hourly
    WHERE bucket_hour >= $1 AND bucket_hour < $2
), diff AS (
    (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual)
    UNION ALL
    (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected)
)
SELECT workspace_id::text,
       date_trunc('month', bucket_hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month,
       count(*)
FROM diff
GROUP BY 1, 2
ORDER BY 1, 2
