-- The WAL each replication slot keeps from being removed. Everyone may
-- read pg_replication_slots. A slot that reserves nothing (restart_lsn
-- NULL: never used, or its WAL already lost) retains nothing.
SELECT s.slot_name,
       s.slot_type,
       s.active,
       coalesce(s.wal_status, '') AS wal_status,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::int8 AS retained
FROM pg_replication_slots s
ORDER BY retained DESC, s.slot_name
