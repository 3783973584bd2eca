-- shardfill:job issue-last-activity
-- shardfill:description Seed issue.last_activity_at from updated_at on the rows that have none yet; a value the application writes meanwhile wins.
--
-- The lock is a key of this backfill's own, so two runs of it (or a
-- hand-written one-off doing the same) never work at the same time.
--   shared:  the processes of one run hold it together.
--   check:   every slice transaction checks, before it commits, that its
--            process still holds the key (a process whose lock connection
--            died commits nothing).
--   noyield: nothing in the application takes this key, so there is nobody
--            to step aside for; an exclusive taker can only be a second
--            backfill of the same column, and it should wait until this run
--            ends rather than interleave with it.
-- shardfill:lock hashtextextended('issue_last_activity_backfill', 0) shared check noyield
-- shardfill:tables issue
--
-- Only rows with something to copy are work: a row whose updated_at is NULL
-- would stay NULL however often it is "updated", and a repeated slice that
-- kept counting it as changed would never end.
-- shardfill:split issue.id where last_activity_at IS NULL AND updated_at IS NOT NULL rows 5000

-- shardfill:slice repeat
-- At most 1000 rows per statement (short row locks); the engine runs it
-- again until it changes no row. SKIP LOCKED leaves a row the application
-- is writing right now for a later round, and the outer IS NULL keeps a
-- value written meanwhile: re-running the slice changes nothing more.
-- RETURNING the key lets each pass start after the last id the one before
-- changed, as the serial command's keyset cursor did, rather than walk the
-- slice's changed rows again.
UPDATE issue i
   SET last_activity_at = i.updated_at
  FROM (SELECT id
          FROM issue
         WHERE shardfill.in_range(id)
           AND last_activity_at IS NULL
           AND updated_at IS NOT NULL
         ORDER BY id
         LIMIT 1000
           FOR UPDATE SKIP LOCKED) b
 WHERE i.id = b.id
   AND i.last_activity_at IS NULL
   AND i.updated_at IS NOT NULL
RETURNING i.id;

-- shardfill:remaining
-- Rows still to do, in a slice's key range (or, compiled for the whole
-- job, everywhere).
SELECT count(*)
  FROM issue
 WHERE shardfill.in_range(id)
   AND last_activity_at IS NULL
   AND updated_at IS NOT NULL;

-- shardfill:verify
-- Every row that could have been seeded and was not (zero rows: verified).
SELECT id, updated_at
  FROM issue
 WHERE last_activity_at IS NULL
   AND updated_at IS NOT NULL
 ORDER BY id
 LIMIT 100;

-- shardfill:dry-run
SELECT count(*) FILTER (WHERE updated_at IS NOT NULL) AS rows_to_seed,
       count(*) FILTER (WHERE updated_at IS NULL)     AS rows_left_null,
       min(updated_at)                                AS oldest_value,
       max(updated_at)                                AS newest_value
  FROM issue
 WHERE last_activity_at IS NULL;
