-- shardfill:job codex-usage-cache
-- shardfill:description Subtract cache reads from the input tokens of codex usage rows written before the fix, and rebuild their hourly rollup buckets.
--
-- Until the fix (deployed at @cutoff) the codex integration reported cache
-- reads inside input_tokens as well. A row is eligible while it still
-- looks like that: a codex row with cache reads and input tokens, last
-- written before the cutoff. The slice sets updated_at = now(), which is
-- after the cutoff, so a corrected row is never eligible again: re-running
-- a slice changes nothing more.
-- shardfill:param cutoff timestamptz required past
-- shardfill:param workspace uuid
--
-- The cron job's lock (rollup_task_usage_hourly() try-locks 4246 and
-- no-ops while we hold it), so the cron tick never rewrites a bucket this
-- job is rebuilding. shared: several processes hold it together. check:
-- every slice transaction checks that its process still holds the key and
-- takes it shared itself, so no slice commits unless the cron job is kept
-- out. yield: the application takes 4246 exclusively for short work of its
-- own (its workspace delete waits with a lock_timeout); the run steps aside
-- for it the way README's "Yielding lock 4246" describes, without a gap.
-- shardfill:lock 4246 shared check yield
-- shardfill:tables task_usage, task_usage_hourly

-- shardfill:plan
-- One slice per (workspace, UTC day) that holds eligible rows. 24 hours,
-- not '1 day': adding a day to a timestamptz follows the session's time
-- zone across daylight-saving changes.
SELECT a.workspace_id                                             AS shard,
       date_trunc('day', u.created_at, 'UTC')                     AS lo,
       date_trunc('day', u.created_at, 'UTC') + interval '24 hours' AS hi,
       count(*)                                                   AS est_rows
  FROM task_usage u
  JOIN agent_task_queue t ON t.id = u.task_id
  JOIN agent a ON a.id = t.agent_id
 WHERE u.provider = 'codex'
   AND u.cache_read_tokens > 0
   AND u.input_tokens > 0
   AND COALESCE(u.updated_at, u.created_at) < @cutoff
   AND (@workspace IS NULL OR a.workspace_id = @workspace)
 GROUP BY 1, 2, 3
 ORDER BY 1, 2;

-- shardfill:slice repeat
-- At most 1000 eligible rows of the slice's workspace and day per
-- statement; rows the application holds are skipped and taken in a later
-- round. The outer conditions repeat the eligibility test on the row
-- actually updated.
UPDATE task_usage u
   SET input_tokens = GREATEST(u.input_tokens - u.cache_read_tokens, 0),
       updated_at = now()
  FROM (SELECT u2.id
          FROM task_usage u2
          JOIN agent_task_queue t ON t.id = u2.task_id
          JOIN agent a ON a.id = t.agent_id
         WHERE a.workspace_id = @shard
           AND shardfill.in_range(u2.created_at)
           AND u2.provider = 'codex'
           AND u2.cache_read_tokens > 0
           AND u2.input_tokens > 0
           AND COALESCE(u2.updated_at, u2.created_at) < @cutoff
         ORDER BY u2.id
         LIMIT 1000
           FOR UPDATE OF u2 SKIP LOCKED) b
 WHERE u.id = b.id
   AND u.provider = 'codex'
   AND u.cache_read_tokens > 0
   AND u.input_tokens > 0
   AND COALESCE(u.updated_at, u.created_at) < @cutoff;

-- shardfill:then
-- Rebuild exactly this workspace's hourly buckets of the day from all of
-- its raw rows (replace, never add), in the slice's transaction. The
-- measures are those of job/measures.sql and spec/target-schema.md: a row
-- counts only when its task has a runtime; the bucket is created_at's
-- hour in UTC; the project is the task's issue's; uncosted_* are 0, never
-- NULL; task_count counts distinct tasks. The day's bounds are whole
-- hours, so every bucket lands in the range the DELETE cleared.
DELETE FROM task_usage_hourly h
 WHERE h.workspace_id = @shard
   AND shardfill.in_range(h.bucket_hour);

INSERT INTO task_usage_hourly (
    bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    task_count, event_count, cost_usd_ticks,
    uncosted_input_tokens, uncosted_output_tokens,
    uncosted_cache_read_tokens, uncosted_cache_write_tokens
)
SELECT date_trunc('hour', u.created_at, 'UTC') AS bucket_hour,
       a.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
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
  FROM agent a
  JOIN agent_task_queue t ON t.agent_id = a.id
  JOIN task_usage u ON u.task_id = t.id
  LEFT JOIN issue i ON i.id = t.issue_id
 WHERE a.workspace_id = @shard
   AND t.runtime_id IS NOT NULL
   AND shardfill.in_range(u.created_at)
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- shardfill:remaining
-- Eligible rows still to do: of the slice's workspace and day, or, compiled
-- for the whole job (@shard NULL, in_range TRUE), of every workspace the
-- run covers.
SELECT count(*)
  FROM task_usage u
  JOIN agent_task_queue t ON t.id = u.task_id
  JOIN agent a ON a.id = t.agent_id
 WHERE (@shard IS NULL OR a.workspace_id = @shard)
   AND (@workspace IS NULL OR a.workspace_id = @workspace)
   AND shardfill.in_range(u.created_at)
   AND u.provider = 'codex'
   AND u.cache_read_tokens > 0
   AND u.input_tokens > 0
   AND COALESCE(u.updated_at, u.created_at) < @cutoff;

-- shardfill:verify
-- Rollup rows of the hours that hold codex rows with cache reads from
-- before the cutoff (a superset of what the job touched: a corrected row
-- is no longer eligible) that differ from the aggregate of the raw rows,
-- both ways: missing or different, and present but not expected. Uses
-- the database's task_usage_hour_bucket(), so the slice's inline bucket
-- is checked against it.
WITH touched AS (
    SELECT DISTINCT a.workspace_id, task_usage_hour_bucket(u.created_at) AS bucket_hour
      FROM task_usage u
      JOIN agent_task_queue t ON t.id = u.task_id
      JOIN agent a ON a.id = t.agent_id
     WHERE u.provider = 'codex'
       AND u.cache_read_tokens > 0
       AND u.created_at < @cutoff
       AND (@workspace IS NULL OR a.workspace_id = @workspace)
), expected AS (
    SELECT task_usage_hour_bucket(u.created_at) AS bucket_hour,
           a.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
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
      JOIN agent_task_queue t ON t.id = u.task_id
      JOIN agent a ON a.id = t.agent_id
      LEFT JOIN issue i ON i.id = t.issue_id
     WHERE t.runtime_id IS NOT NULL
       AND (a.workspace_id, task_usage_hour_bucket(u.created_at)) IN (SELECT workspace_id, bucket_hour FROM touched)
     GROUP BY 1, 2, 3, 4, 5, 6, 7
), actual AS (
    SELECT h.bucket_hour, h.workspace_id, h.runtime_id, h.agent_id, h.project_id, h.provider, h.model,
           h.input_tokens, h.output_tokens, h.cache_read_tokens, h.cache_write_tokens,
           h.task_count, h.event_count, h.cost_usd_ticks,
           h.uncosted_input_tokens, h.uncosted_output_tokens,
           h.uncosted_cache_read_tokens, h.uncosted_cache_write_tokens
      FROM task_usage_hourly h
      JOIN touched k ON k.workspace_id = h.workspace_id AND k.bucket_hour = h.bucket_hour
)
SELECT *
  FROM (SELECT 'missing or different' AS mismatch, m.*
          FROM (SELECT * FROM expected EXCEPT SELECT * FROM actual) m
        UNION ALL
        SELECT 'not expected' AS mismatch, x.*
          FROM (SELECT * FROM actual EXCEPT SELECT * FROM expected) x) d
 ORDER BY bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model, mismatch
 LIMIT 100;

-- shardfill:dry-run
-- What a run would change, per (workspace, UTC day).
SELECT a.workspace_id,
       date_trunc('day', u.created_at, 'UTC')      AS day,
       count(*)                                    AS rows,
       sum(LEAST(u.cache_read_tokens, u.input_tokens)) AS input_tokens_subtracted
  FROM task_usage u
  JOIN agent_task_queue t ON t.id = u.task_id
  JOIN agent a ON a.id = t.agent_id
 WHERE u.provider = 'codex'
   AND u.cache_read_tokens > 0
   AND u.input_tokens > 0
   AND COALESCE(u.updated_at, u.created_at) < @cutoff
   AND (@workspace IS NULL OR a.workspace_id = @workspace)
 GROUP BY 1, 2
 ORDER BY 1, 2;
