// Package job is what one slice does to the multica database: the SQL that
// plans the slices of a task_usage_hourly backfill, replaces one slice's
// buckets, checks the database is ready, and stamps the cron watermark.
//
// The engine knows nothing of task_usage; it calls an [Hourly] through the
// small interface it declares, so the scheduling, checkpointing and retry
// logic stays independent of the rollup it drives.
//
// The SQL lives beside the code, one file per statement or fragment:
// plan.sql lists the slices, delete.sql and insert.sql with by_workspace.sql
// or by_time.sql (two access paths) and measures.sql replace a batch's
// buckets, verify.sql compares the rollup with the raw rows. The cron lock
// key ([CronLockKey]) is the job's too: the engine and the checkpoint store
// are given it.
package job
