-- The same aggregate as aggregate.sql for one workspace ($3), reached from
-- the other side: the usage rows created in [$1, $2) through the created_at
-- index, then each row's task by primary key. Cheaper than the workspace
-- path when the workspace's whole history is much larger than everything
-- written in the range (a short slice of a big workspace). The OFFSET 0
-- keeps the planner from flattening the lookups into a hash join over the
-- whole task table.
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
      AND a.workspace_id = $3
    OFFSET 0
) t
WHERE u.created_at >= $1
  AND u.created_at < $2
GROUP BY 1, 2, 3, 4, 5, 6, 7
