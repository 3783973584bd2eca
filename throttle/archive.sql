-- WAL files waiting for the archiver (a .ready file each), and whether the
-- archive_command is failing right now (its last failure is its latest
-- attempt).
SELECT (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS ready,
       coalesce(a.last_failed_time > coalesce(a.last_archived_time, '-infinity'), false) AS failing,
       coalesce(a.last_failed_wal, '') AS last_failed_wal
FROM pg_stat_archiver a
