-- Vacuums in this database of the tables shardfill writes ($1, names as
-- to_regclass reads them), plus the ones whose table this role cannot see:
-- without pg_read_all_stats (pg_monitor) relid is NULL for other roles'
-- vacuums, autovacuum's included. wraparound: an autovacuum that runs to
-- prevent transaction ID wraparound (its activity says so, as PostgreSQL
-- words it: "autovacuum: VACUUM … (to prevent wraparound)").
SELECT v.pid,
       coalesce(v.relid::regclass::text, '') AS rel,
       coalesce(v.phase, '') AS phase,
       v.relid IS NULL AS hidden,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS privileged,
       quote_ident(current_user) AS role,
       coalesce(a.backend_type = 'autovacuum worker' AND a.query LIKE '%(to prevent wraparound)', false) AS wraparound
FROM pg_stat_progress_vacuum v
LEFT JOIN pg_stat_activity a ON a.pid = v.pid
WHERE v.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (v.relid IS NULL
       OR v.relid = ANY (ARRAY(SELECT to_regclass(t)::oid FROM unnest($1::text[]) AS t)))
ORDER BY v.pid
