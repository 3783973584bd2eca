-- The batch's rollup rows read through time: the usage rows created in
-- [$2, $3) (the span of the batch's ranges) by the created_at index, each
-- row's task and agent by primary key, kept when its workspace is one of
-- the batch's ($1) and, where the ranges differ from the span, when it
-- falls in one of the batch's (workspace $1[i], [$4[i], $5[i])) ranges (the
-- marker below). Costs what every
-- workspace wrote in the span: cheaper than the workspace path for a short
-- slice of a big workspace, or for many workspaces' slices of one month.
-- The span is read once, into a materialized CTE: left to itself the
-- planner may scan it once per range, or hash the whole task table. The
-- OFFSET 0 keeps the task lookups by primary key.
WITH span AS MATERIALIZED (
    SELECT u.created_at, u.task_id, u.provider, u.model,
           u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd_ticks,
           t.workspace_id, t.runtime_id, t.agent_id, t.issue_id
    FROM task_usage u
    CROSS JOIN LATERAL (
        SELECT a.workspace_id, t.runtime_id, t.agent_id, t.issue_id
        FROM agent_task_queue t
        JOIN agent a ON a.id = t.agent_id
        WHERE t.id = u.task_id
          AND t.runtime_id IS NOT NULL
          AND a.workspace_id = ANY ($1::uuid[])
        OFFSET 0
    ) t
    WHERE u.created_at >= $2
      AND u.created_at < $3
)
SELECT task_usage_hour_bucket(u.created_at) AS bucket_hour,
       u.workspace_id, u.runtime_id, u.agent_id, i.project_id, u.provider, u.model,
       /*measures*/
FROM span u
/*ranges*/
LEFT JOIN issue i ON i.id = u.issue_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
