-- The rollup rows of the raw rows created in [$1, $2), exactly as
-- spec/target-schema.md defines them: only tasks with a runtime count; the
-- bucket is the UTC hour (task_usage_hour_bucket ignores the session
-- TimeZone); costs sum the non-NULL ones; uncosted_* sum the tokens of rows
-- without cost, 0 when there are none. The slice statement narrows this to
-- one workspace where the marker below stands.
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
  /*workspace*/
GROUP BY 1, 2, 3, 4, 5, 6, 7
