-- The batch's rollup rows read through time: the usage rows created in
-- [$4, $5) (the span of the batch's ranges) by the created_at index, each
-- row's task by primary key, kept when it falls in one of the batch's
-- (workspace $1[i], [$2[i], $3[i])) ranges. Costs what every workspace
-- wrote in the span: cheaper than the workspace path for a short slice of a
-- big workspace, or for many workspaces' slices of one month. The OFFSET 0
-- keeps the planner from flattening the task lookups into a hash join over
-- the whole task table.
SELECT task_usage_hour_bucket(u.created_at) AS bucket_hour,
       t.workspace_id, t.runtime_id, t.agent_id, t.project_id, u.provider, u.model,
       /*measures*/
FROM task_usage u
CROSS JOIN LATERAL (
    SELECT a.workspace_id, t.runtime_id, t.agent_id, i.project_id
    FROM agent_task_queue t
    JOIN agent a ON a.id = t.agent_id
    LEFT JOIN issue i ON i.id = t.issue_id
    WHERE t.id = u.task_id
      AND t.runtime_id IS NOT NULL
    OFFSET 0
) t
JOIN unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS r(workspace_id, from_ts, to_ts)
  ON r.workspace_id = t.workspace_id AND u.created_at >= r.from_ts AND u.created_at < r.to_ts
WHERE u.created_at >= $4
  AND u.created_at < $5
GROUP BY 1, 2, 3, 4, 5, 6, 7
