-- The batch's rollup rows read through time: the usage rows created in
-- [$2, $3) (the span of the batch's ranges) by the created_at index; then
-- the tasks those rows name, fetched by primary key in one sorted sweep and
-- kept when their agent belongs to one of the batch's workspaces ($1; the
-- batch's agents are hashed once rather than looked up per task); then those tasks'
-- issues, the same way; and, where the ranges differ from the span, only
-- the rows inside one of the batch's (workspace $1[i], [$4[i], $5[i]))
-- ranges (the marker below). Costs what every workspace wrote in the span,
-- linear in it: cheaper than the workspace path for a short slice of a big
-- workspace, or for many workspaces' slices of one window.
-- Each step is materialized so its size is known to the next: left to
-- itself the planner may walk every task of every agent of the batch's
-- workspaces, or hash the whole task table, once per window.
WITH batch_agent AS MATERIALIZED (
    SELECT a.id, a.workspace_id FROM agent a WHERE a.workspace_id = ANY ($1::uuid[])
), span AS MATERIALIZED (
    SELECT u.created_at, u.task_id, u.provider, u.model,
           u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd_ticks
    FROM task_usage u
    WHERE u.created_at >= $2
      AND u.created_at < $3
), task AS MATERIALIZED (
    SELECT t.id, a.workspace_id, t.runtime_id, t.agent_id, t.issue_id
    FROM agent_task_queue t
    JOIN batch_agent a ON a.id = t.agent_id
    WHERE t.id = ANY (ARRAY (SELECT DISTINCT task_id FROM span))
      AND t.runtime_id IS NOT NULL
), project AS MATERIALIZED (
    SELECT i.id, i.project_id
    FROM issue i
    WHERE i.id = ANY (ARRAY (SELECT DISTINCT issue_id FROM task WHERE issue_id IS NOT NULL))
)
SELECT date_trunc('hour', u.created_at, 'UTC') AS bucket_hour,
       t.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
       /*measures*/
FROM span u
JOIN task t ON t.id = u.task_id
/*ranges*/
LEFT JOIN project i ON i.id = t.issue_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
