-- Every rollup row of [$1, $2) that differs from the aggregate of the raw
-- rows, in either direction (wrong, missing or extra), counted per
-- (workspace, UTC month). updated_at is bookkeeping and not compared. The
-- expected side reads every workspace at once; it must agree with what
-- either access path of a slice writes.
WITH expected AS (
    SELECT task_usage_hour_bucket(u.created_at) AS bucket_hour,
           a.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
           /*measures*/
    FROM agent a
    JOIN agent_task_queue t ON t.agent_id = a.id
    JOIN task_usage u ON u.task_id = t.id
    LEFT JOIN issue i ON i.id = t.issue_id
    WHERE t.runtime_id IS NOT NULL
      AND u.created_at >= $1
      AND u.created_at < $2
    GROUP BY 1, 2, 3, 4, 5, 6, 7
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
