-- The measures of a rollup row over the usage rows u of one key, exactly
-- as spec/target-schema.md defines them: token sums; cost sums the non-NULL
-- costs (0 when none); uncosted_* sum the tokens of rows without cost (0,
-- never NULL, when there are none); task_count distinct tasks; event_count
-- rows. Both access paths (by_workspace.sql, by_time.sql) and verify.sql select these.
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
