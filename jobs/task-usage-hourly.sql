-- shardfill:job task-usage-hourly
-- shardfill:description Roll the raw usage rows up into task_usage_hourly, a workspace and time window per slice, and hand the rollup over to the pg_cron job at the watermark.
--
-- The default job: `shardfill run` without --job runs this file. Every
-- rollup row is what the production schema defines: the bucket is
-- created_at's hour in UTC; a usage row counts when its task has a
-- runtime; the project is the task's issue's; cost sums the known costs
-- (0 when none); uncosted_* sum the tokens of rows without a cost (0,
-- never NULL); task_count counts distinct tasks, event_count rows.
--
-- The cron entry rollup_task_usage_hourly() try-locks 4246 and does
-- nothing while a backfill holds it. shared: the run's processes hold it
-- together. check: each batch's transaction takes it shared too, so no
-- batch commits unless the cron job is kept out. yield: the application
-- takes 4246 exclusively for short work of its own (the workspace delete,
-- with a lock_timeout); the run steps aside for it without a gap.
-- shardfill:lock 4246 shared check yield
-- shardfill:tables task_usage_hourly, task_usage_hourly_dirty, task_usage_hourly_rollup_state

-- shardfill:check
-- Everything the backfill and the cron job that takes over depend on,
-- listed at once so a half-migrated database is fixed in one go: tables,
-- the columns the statements read or write, and the functions of the
-- incremental pipeline.
WITH needed(n, rel, cols) AS (VALUES
    (1, 'agent', ARRAY['id', 'workspace_id']),
    (2, 'issue', ARRAY['id', 'project_id']),
    (3, 'agent_task_queue', ARRAY['id', 'agent_id', 'issue_id', 'runtime_id', 'created_at']),
    (4, 'task_usage', ARRAY['task_id', 'provider', 'model', 'input_tokens', 'output_tokens',
                           'cache_read_tokens', 'cache_write_tokens', 'cost_usd_ticks', 'created_at', 'updated_at']),
    (5, 'task_usage_hourly', ARRAY['bucket_hour', 'workspace_id', 'runtime_id', 'agent_id', 'project_id',
                                  'provider', 'model', 'input_tokens', 'output_tokens', 'cache_read_tokens',
                                  'cache_write_tokens', 'task_count', 'event_count', 'cost_usd_ticks',
                                  'uncosted_input_tokens', 'uncosted_output_tokens',
                                  'uncosted_cache_read_tokens', 'uncosted_cache_write_tokens', 'updated_at']),
    (6, 'task_usage_hourly_rollup_state', ARRAY['id', 'watermark_at']),
    (7, 'task_usage_hourly_dirty', ARRAY[]::text[])
), functions(n, fn) AS (VALUES
    (8, 'task_usage_hour_bucket'),
    (9, 'rollup_task_usage_hourly_window'),
    (10, 'rollup_task_usage_hourly')
), missing(n, k, what) AS (
    SELECT n.n, 0::bigint, 'table ' || n.rel FROM needed n WHERE to_regclass(n.rel) IS NULL
    UNION ALL
    SELECT n.n, c.k, 'column ' || n.rel || '.' || c.col
      FROM needed n CROSS JOIN unnest(n.cols) WITH ORDINALITY AS c(col, k)
     WHERE to_regclass(n.rel) IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = to_regclass(n.rel) AND a.attname = c.col
                          AND a.attnum > 0 AND NOT a.attisdropped)
    UNION ALL
    SELECT f.n, 0, 'function ' || f.fn || '()' FROM functions f
     WHERE NOT EXISTS (SELECT FROM pg_proc p WHERE p.proname = f.fn AND pg_function_is_visible(p.oid))
)
SELECT what FROM missing ORDER BY n, k;

-- shardfill:fact keyed
-- Does a valid, unconditional unique index of task_usage have a key made
-- only of task_id, provider and model (all or some), none of which may
-- repeat as NULL? A rollup key holds one provider and one model, so its
-- usage rows then belong to different tasks, and counting them is counting
-- the distinct tasks: PostgreSQL 15 then no longer sorts each key's rows
-- (about a third of the aggregate). The multica schema's
-- UNIQUE (task_id, provider, model) is such a key. Asked once per command;
-- verify always counts distinct tasks, so a key dropped during a run, with
-- duplicates written after, shows there.
SELECT EXISTS (
    SELECT FROM pg_index x
    WHERE x.indrelid = to_regclass('task_usage')
      AND x.indisunique AND x.indisvalid
      AND x.indpred IS NULL AND x.indexprs IS NULL
      AND NOT EXISTS (
          SELECT FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
          WHERE k.n <= x.indnkeyatts
            AND (a.attname NOT IN ('task_id', 'provider', 'model')
                 OR NOT (a.attnotnull OR x.indnullsnotdistinct))));

-- shardfill:bounds
-- Where planning in pieces starts and stops: the UTC months of the oldest
-- and newest raw rows from @from on (NULL, NULL when there are none), read
-- from the two ends of the created_at index; those rows counted up to
-- @piece_rows + 1 (an index-only scan that stops there: a history of at
-- most @piece_rows rows is planned in one piece); and the server's
-- estimate of the table's rows (pg_class.reltuples, kept by ANALYZE),
-- which sizes the pieces. Rows outside the two months (written later, or
-- rollup rows of no raw row) are covered by the first piece, open
-- upwards, and the last, open downwards.
-- The fifth column is the UTC day from which the newest sixteenth of
-- @piece_rows rows lie (NULL when there are fewer): the first piece holds
-- only those, so on a history of any size the workers start within
-- moments, and the rest of their month is the second piece.
SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS first_month,
       date_trunc('month', max(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS last_month,
       (SELECT count(*) FROM (SELECT FROM task_usage WHERE created_at >= @from LIMIT @piece_rows + 1) s) AS rows,
       (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'task_usage'::regclass) AS estimate,
       (SELECT date_trunc('day', n.created_at, 'UTC')
          FROM task_usage n
         WHERE n.created_at >= @from
         ORDER BY n.created_at DESC
        OFFSET @piece_rows / 16 LIMIT 1) AS newest_from
FROM task_usage
WHERE created_at >= @from;

-- shardfill:plan months
-- The slices: one per workspace and time window, for every window in which
-- the workspace holds counted raw rows, or still holds rollup rows without
-- raw rows (those buckets are stale and the slice deletes them). Windows
-- are common to all workspaces: a UTC month, or, when the month holds more
-- than @slice_rows raw rows in all, consecutive whole-day parts of it of
-- about @slice_rows rows each (a single day is never cut). The windows of
-- a month tile it, so every stale bucket falls in some slice, and slices of
-- one window can share one sweep through time. One pass over the raw rows;
-- days and months are cut on UTC timestamps without time zone so the
-- session TimeZone cannot move a boundary.
-- read_from is the oldest creation time of a task with usage in the slice:
-- the by-shard form need not look at older tasks.
-- The engine runs it piece by piece over [@from, @to): whole UTC months,
-- but for the newest month, whose newest days (from the bounds' fifth
-- column) are a piece of their own. The windows of a piece tile it
-- exactly: its first starts at @from, its last ends at @to, so the pieces
-- together tile the whole range. Rollup rows are bounded
-- by the unique key's index, which leads with bucket_hour.
-- per_day may hold a (workspace, day) twice, once with its raw rows and
-- once for its rollup rows; every step after it sums or takes the least,
-- so merging the two there would only cost a second aggregation of every
-- group.
WITH per_day AS (
    SELECT a.workspace_id,
           date_trunc('day', u.created_at AT TIME ZONE 'UTC') AS day,
           count(*) AS n,
           min(t.created_at) AS read_from
    FROM task_usage u
    JOIN agent_task_queue t ON t.id = u.task_id
    JOIN agent a ON a.id = t.agent_id
    WHERE u.created_at >= @from
      AND u.created_at < @to
      AND t.runtime_id IS NOT NULL
    GROUP BY 1, 2
    UNION ALL
    SELECT h.workspace_id, date_trunc('day', h.bucket_hour AT TIME ZONE 'UTC'), 0, NULL
    FROM task_usage_hourly h
    WHERE h.bucket_hour >= @from
      AND h.bucket_hour < @to
    GROUP BY 1, 2
), days AS (
    -- A day joins part k of its month when the rows before it in the month
    -- (all workspaces) number between k and k + 1 times the window size.
    SELECT day, date_trunc('month', day) AS month,
           floor((sum(n) OVER (PARTITION BY date_trunc('month', day)
                               ORDER BY day ROWS UNBOUNDED PRECEDING) - n) / @slice_rows)::bigint AS part
    FROM (SELECT day, sum(n) AS n FROM per_day GROUP BY day) all_workspaces
), windows AS (
    SELECT month, part,
           CASE WHEN part = 0 THEN greatest(month, @from AT TIME ZONE 'UTC') ELSE min(day) END AS window_from,
           coalesce(lead(min(day)) OVER (PARTITION BY month ORDER BY part),
                    least(month + interval '1 month', @to AT TIME ZONE 'UTC')) AS window_to
    FROM days
    GROUP BY month, part
)
SELECT p.workspace_id                   AS shard,
       w.window_from AT TIME ZONE 'UTC' AS lo,
       w.window_to AT TIME ZONE 'UTC'   AS hi,
       sum(p.n)::bigint                 AS est_rows,
       min(p.read_from)                 AS read_from
FROM per_day p
JOIN days d ON d.day = p.day
JOIN windows w ON w.month = d.month AND w.part = d.part
GROUP BY p.workspace_id, w.window_from, w.window_to;

-- shardfill:batch
-- Every batch replaces the buckets of its slices (workspace @shards[i],
-- time [@los[i], @his[i])): this deletes them, and the form the batch's
-- cost picks (below) inserts the aggregate of their raw rows. Two
-- statements, so the unique key never sees old and new rows at once;
-- bounds are whole hours, so every bucket lands in a range cleared here.
DELETE FROM task_usage_hourly h
USING unnest(@shards, @los, @his) AS r(workspace_id, from_ts, to_ts)
WHERE h.workspace_id = r.workspace_id
  AND h.bucket_hour >= r.from_ts
  AND h.bucket_hour < r.to_ts;

-- Hand-over: drop the queued dirty keys of the batch's buckets that the
-- insert's read already covers, so the cron job does not recompute them
-- after the stamp. Covered are the keys enqueued before @watermark, the
-- run's watermark target (planning time - 5 minutes; NULL outside a run,
-- when nothing is dropped): the change that queued such a key committed
-- before the run was planned (the cron job's own assumption about
-- transactions in flight), so the batch read it. A key queued or re-queued
-- later has a later enqueued_at and stays for the cron job.
-- Rows locked by someone else are skipped, never waited for. Only the
-- application's triggers touch the queue while a batch runs (the cron job
-- and the workspace delete need lock 4246, which this transaction holds in
-- shared mode), and a trigger that holds a key re-queues it with a later
-- enqueued_at: it stays anyway. Waiting instead could deadlock: a trigger
-- enqueueing several keys may hold one this statement wants while it waits
-- for one this statement already deleted.
DELETE FROM task_usage_hourly_dirty
WHERE ctid = ANY (ARRAY (
    SELECT d.ctid
    FROM task_usage_hourly_dirty d
    JOIN unnest(@shards, @los, @his) AS r(workspace_id, from_ts, to_ts)
      ON d.workspace_id = r.workspace_id AND d.bucket_hour >= r.from_ts AND d.bucket_hour < r.to_ts
    WHERE d.enqueued_at < @watermark
    FOR UPDATE OF d SKIP LOCKED));

-- shardfill:batch by-shard
-- The forms insert the aggregate of the batch's raw rows, each read its
-- own way; the engine picks one per batch by the planner's row counts.
-- The bucket is computed inline (the hour in UTC, whatever
-- the session's TimeZone) rather than through task_usage_hour_bucket(),
-- which PostgreSQL does not inline: a call per raw row cost a fifth of the
-- read. verify uses the function, so the two are checked against each
-- other. Rows are inserted in the order of the rollup's workspace-led
-- indexes (workspace_id, agent_id, bucket_hour DESC): consecutive rows
-- land on the same index pages, a sixth cheaper than hash order.
--
-- This form reads through the batch's workspaces' tasks: agent (by
-- workspace) -> task (by agent, skipping tasks created before @read_from,
-- the planner's bound: no older task has usage in the batch) -> usage (by
-- task). It costs what the workspaces hold from @read_from on, whatever
-- the ranges' width: the engine takes it for small workspaces' months.
-- The joins are written in the order they run, each an index lookup keyed
-- by the one before; planning them in that order rather than searching
-- all orders takes a third off the planning, about a quarter of what a
-- one-slice batch costs the server.
SET LOCAL join_collapse_limit = 1;

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
       shardfill.if(keyed, count(*), count(DISTINCT u.task_id)) AS task_count,
       count(*)                          AS event_count,
       coalesce(sum(u.cost_usd_ticks), 0)::bigint AS cost_usd_ticks,
       coalesce(sum(u.input_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint       AS uncosted_input_tokens,
       coalesce(sum(u.output_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint      AS uncosted_output_tokens,
       coalesce(sum(u.cache_read_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint  AS uncosted_cache_read_tokens,
       coalesce(sum(u.cache_write_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint AS uncosted_cache_write_tokens
FROM unnest(@shards, @los, @his) AS r(workspace_id, from_ts, to_ts)
JOIN agent a ON a.workspace_id = r.workspace_id
JOIN agent_task_queue t ON t.agent_id = a.id
JOIN task_usage u ON u.task_id = t.id
LEFT JOIN issue i ON i.id = t.issue_id
WHERE t.runtime_id IS NOT NULL
  AND (t.created_at >= @read_from OR t.created_at IS NULL)
  AND u.created_at >= r.from_ts
  AND u.created_at < r.to_ts
GROUP BY 1, 2, 3, 4, 5, 6, 7
ORDER BY 2, 4, 1 DESC;

-- shardfill:batch by-range
-- The insert read through time: the usage rows created in
-- [@lo, @hi) (the span of the batch's ranges) by the created_at index;
-- then the tasks those rows name, fetched by primary key in one sorted
-- sweep and kept when their agent belongs to one of the batch's workspaces
-- (the batch's agents are hashed once rather than looked up per task);
-- then those tasks' issues, the same way; and only the rows inside one of
-- the batch's ranges. Costs what every workspace wrote in the span, linear
-- in it: the engine takes it for a short slice of a big workspace, or for
-- many workspaces' slices of one window.
-- Each step is materialized so its size is known to the next: left to
-- itself the planner may walk every task of every agent of the batch's
-- workspaces, or hash the whole task table, once per window.
INSERT INTO task_usage_hourly (
    bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    task_count, event_count, cost_usd_ticks,
    uncosted_input_tokens, uncosted_output_tokens,
    uncosted_cache_read_tokens, uncosted_cache_write_tokens
)
WITH batch_agent AS MATERIALIZED (
    SELECT a.id, a.workspace_id FROM agent a WHERE a.workspace_id = ANY (@shards)
), span AS MATERIALIZED (
    SELECT u.created_at, u.task_id, u.provider, u.model,
           u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd_ticks
    FROM task_usage u
    WHERE u.created_at >= @lo
      AND u.created_at < @hi
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
       sum(u.input_tokens)::bigint       AS input_tokens,
       sum(u.output_tokens)::bigint      AS output_tokens,
       sum(u.cache_read_tokens)::bigint  AS cache_read_tokens,
       sum(u.cache_write_tokens)::bigint AS cache_write_tokens,
       shardfill.if(keyed, count(*), count(DISTINCT u.task_id)) AS task_count,
       count(*)                          AS event_count,
       coalesce(sum(u.cost_usd_ticks), 0)::bigint AS cost_usd_ticks,
       coalesce(sum(u.input_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint       AS uncosted_input_tokens,
       coalesce(sum(u.output_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint      AS uncosted_output_tokens,
       coalesce(sum(u.cache_read_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint  AS uncosted_cache_read_tokens,
       coalesce(sum(u.cache_write_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint AS uncosted_cache_write_tokens
FROM span u
JOIN task t ON t.id = u.task_id
JOIN unnest(@shards, @los, @his) AS r(workspace_id, from_ts, to_ts)
  ON r.workspace_id = t.workspace_id AND u.created_at >= r.from_ts AND u.created_at < r.to_ts
LEFT JOIN project i ON i.id = t.issue_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
ORDER BY 2, 4, 1 DESC;

-- shardfill:batch by-window
-- by-range for a batch whose slices all cover the span [@lo, @hi), one per
-- workspace (as claims usually make them): without the join to the
-- ranges, which saves a sort of the whole span.
INSERT INTO task_usage_hourly (
    bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    task_count, event_count, cost_usd_ticks,
    uncosted_input_tokens, uncosted_output_tokens,
    uncosted_cache_read_tokens, uncosted_cache_write_tokens
)
WITH batch_agent AS MATERIALIZED (
    SELECT a.id, a.workspace_id FROM agent a WHERE a.workspace_id = ANY (@shards)
), span AS MATERIALIZED (
    SELECT u.created_at, u.task_id, u.provider, u.model,
           u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.cost_usd_ticks
    FROM task_usage u
    WHERE u.created_at >= @lo
      AND u.created_at < @hi
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
       sum(u.input_tokens)::bigint       AS input_tokens,
       sum(u.output_tokens)::bigint      AS output_tokens,
       sum(u.cache_read_tokens)::bigint  AS cache_read_tokens,
       sum(u.cache_write_tokens)::bigint AS cache_write_tokens,
       shardfill.if(keyed, count(*), count(DISTINCT u.task_id)) AS task_count,
       count(*)                          AS event_count,
       coalesce(sum(u.cost_usd_ticks), 0)::bigint AS cost_usd_ticks,
       coalesce(sum(u.input_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint       AS uncosted_input_tokens,
       coalesce(sum(u.output_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint      AS uncosted_output_tokens,
       coalesce(sum(u.cache_read_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint  AS uncosted_cache_read_tokens,
       coalesce(sum(u.cache_write_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint AS uncosted_cache_write_tokens
FROM span u
JOIN task t ON t.id = u.task_id
LEFT JOIN project i ON i.id = t.issue_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
ORDER BY 2, 4, 1 DESC;

-- shardfill:finish
-- Hand the rollup over to the cron job: every change before @watermark is
-- in it. When the state row is missing this changes no row; the engine
-- then skips the rest and warns (as the serial command did).
UPDATE task_usage_hourly_rollup_state SET watermark_at = @watermark WHERE id = 1;

-- Drop every queued dirty key enqueued before the watermark whose bucket
-- lies in the run's range (from @from, '-infinity' for all history). The
-- batches dropped the keys of the buckets they covered; what is left is
-- keys of buckets no slice covers, which held neither raw nor rollup rows
-- when the run was planned, so recomputing them would write nothing, and
-- keys a batch skipped while the application held them (covered by the
-- batch's read all the same). Keys older than the range stay: the run did
-- not read their buckets. Locked rows are skipped, as in the batches.
DELETE FROM task_usage_hourly_dirty
WHERE ctid = ANY (ARRAY (
    SELECT ctid FROM task_usage_hourly_dirty
    WHERE enqueued_at < @watermark AND bucket_hour >= @from
    FOR UPDATE SKIP LOCKED));

-- shardfill:verify
-- Every rollup row of the month [@from, @to) that differs from the
-- aggregate of the raw rows, in either direction (wrong, missing or
-- extra), counted per workspace: shard, month, rows. updated_at is
-- bookkeeping and not compared. The expected side reads every workspace
-- at once, through the database's task_usage_hour_bucket(); it must agree
-- with what every form of a batch writes.
WITH expected AS (
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
    FROM agent a
    JOIN agent_task_queue t ON t.agent_id = a.id
    JOIN task_usage u ON u.task_id = t.id
    LEFT JOIN issue i ON i.id = t.issue_id
    WHERE t.runtime_id IS NOT NULL
      AND u.created_at >= @from
      AND u.created_at < @to
    GROUP BY 1, 2, 3, 4, 5, 6, 7
), actual AS (
    SELECT bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
           input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
           task_count, event_count, cost_usd_ticks,
           uncosted_input_tokens, uncosted_output_tokens,
           uncosted_cache_read_tokens, uncosted_cache_write_tokens
    FROM task_usage_hourly
    WHERE bucket_hour >= @from AND bucket_hour < @to
), diff AS (
    (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual)
    UNION ALL
    (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected)
)
SELECT workspace_id::text AS shard,
       date_trunc('month', bucket_hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month,
       count(*) AS rows
FROM diff
GROUP BY 1, 2
ORDER BY 1, 2;

-- shardfill:extent
-- The time the raw rows and the rollup cover, which verify walks month by
-- month: the earliest and the latest of the usage rows' creation and the
-- buckets (NULL when both tables are empty).
SELECT least((SELECT min(created_at) FROM task_usage), (SELECT min(bucket_hour) FROM task_usage_hourly)),
       greatest((SELECT max(created_at) FROM task_usage), (SELECT max(bucket_hour) FROM task_usage_hourly));
