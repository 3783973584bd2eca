-- The batch's rollup rows read through its workspaces' tasks: agent (by
-- workspace) -> task (by agent, skipping tasks created before $4, the
-- planner's bound: no older task has usage in the batch) -> usage (by task).
-- Costs what the workspaces hold from $4 on, whatever the ranges' width.
-- Ranges: (workspace $1[i], [$2[i], $3[i])), at most one per workspace.
SELECT date_trunc('hour', u.created_at, 'UTC') AS bucket_hour,
       a.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
       /*measures*/
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS r(workspace_id, from_ts, to_ts)
JOIN agent a ON a.workspace_id = r.workspace_id
JOIN agent_task_queue t ON t.agent_id = a.id
JOIN task_usage u ON u.task_id = t.id
LEFT JOIN issue i ON i.id = t.issue_id
WHERE t.runtime_id IS NOT NULL
  AND (t.created_at >= $4 OR t.created_at IS NULL)
  AND u.created_at >= r.from_ts
  AND u.created_at < r.to_ts
GROUP BY 1, 2, 3, 4, 5, 6, 7
