-- The longest wait of a backend that is not shardfill's on a lock that one
-- of shardfill's backends holds (application_name starting with $1).
-- pg_locks, pg_blocking_pids() and pg_stat_activity.application_name are
-- visible to every role. pg_blocking_pids() briefly locks the lock
-- manager, so it runs only for the backends that wait.
SELECT w.pid,
       extract(epoch FROM clock_timestamp() - w.waitstart)::float8 AS waited,
       coalesce(nullif(wa.application_name, ''), 'no application_name') AS waiter,
       b.pid AS holder,
       ba.application_name AS holder_name
FROM (SELECT pid, min(waitstart) AS waitstart
      FROM pg_locks
      WHERE NOT granted AND waitstart IS NOT NULL
      GROUP BY pid) w
JOIN pg_stat_activity wa ON wa.pid = w.pid
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS b(pid)
JOIN pg_stat_activity ba ON ba.pid = b.pid
WHERE left(ba.application_name, length($1)) = $1
  AND left(coalesce(wa.application_name, ''), length($1)) IS DISTINCT FROM $1
ORDER BY waited DESC
LIMIT 1
