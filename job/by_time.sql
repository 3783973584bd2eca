-- The same aggregate as aggregate.sql for one workspace ($3), reached from
-- the other side: the usage rows created in [$1, $2) through the created_at
-- index, then each row's task by primary key. Cheaper than the workspace
-- path when the workspace's whole history is much larger than everything
-- written in the range (a short slice of a big workspace). The OFFSET 0
-- keeps the planner from flattening the lookups into a hash join over the
-- whole task table.
SELECT task_usage_hour_bucket(u.created_at) AS bucket_hour,
       t.workspace_id, t.runtime_id, t.agent_id, t.project_id, u.provider, u.model,
       sum(u.input_tokens)::bigint       AS input_tokens,
       sum(u.output_tokens)::bigint      AS output_tokens,
       sum(u.cache_read_tokens)::bigint  AS cache_read_tokens,
       sum(u.cache_write_tokens)::bigint AS cache_write_tokens,
       count(DISTINCT u.task_id)         AS task_count,
       count(*)                          AS event_count,
       coalesce(sum(u.cost_usd_ticks), 0)::bigint AS cost_usd_ticks,
       coalesce(sum(u.input_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint       AS uncosted_input_tokens,
       coalesce(sum(u.output_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint      AS uncosted_output_tokens,
       coalesce(sum(u.cache_read_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint  AS uncosted_cache_read_tokens,
       coalesce(sum(u.cache_write_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint AS uncosted_cache_write_tokens
FROM task_usage u
CROSS JOIN LATERAL (
    SELECT a.workspace_id, t.runtime_id, t.agent_id, i.project_id
    FROM agent_task_queue t
    JOIN agent a ON a.id = t.agent_id
    LEFT JOIN issue i ON i.id = t.issue_id
    WHERE t.id = u.task_id
      AND t.runtime_id IS NOT NULL
      AND a.workspace_id = $3
    OFFSET 0
) t
WHERE u.created_at >= $1
  AND u.created_at < $2
GROUP BY 1, 2, 3, 4, 5, 6, 7
