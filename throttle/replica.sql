-- The physical standbys streaming from this server: where each has
-- replayed to, how much WAL waits for it, and its replay_lag.
-- A role without pg_read_all_stats (pg_monitor) sees the rows but every
-- column except pid NULL, hence the privilege in each row. pg_basebackup's
-- WAL senders (state 'backup') and logical decoding's (they hold a logical
-- slot) are no standbys; the slot signal watches the latter.
SELECT r.pid,
       coalesce(nullif(r.application_name, ''), 'walreceiver') AS name,
       coalesce(host(r.client_addr), 'local') AS addr,
       pg_wal_lsn_diff(r.replay_lsn, '0/0')::int8 AS replay_pos,
       greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn), 0)::int8 AS waiting,
       extract(epoch FROM r.replay_lag)::float8 AS replay_lag,
       r.reply_time,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS privileged,
       quote_ident(current_user) AS role
FROM pg_stat_replication r
WHERE r.state IS DISTINCT FROM 'backup'
  AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                  WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
ORDER BY r.pid
