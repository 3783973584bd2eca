-- Whether WAL is archived, and whether this role may list the archiver's
-- status directory (pg_monitor, or superuser). has_function_privilege
-- fails with undefined_function where the function does not exist.
SELECT current_setting('archive_mode') AS archive_mode,
       has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE') AS can_list,
       quote_ident(current_user) AS role
