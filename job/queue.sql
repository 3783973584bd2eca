-- Hand-over: drop the queued dirty keys of the batch's buckets that the
-- insert's read already covers, so the cron job does not recompute them
-- again after the stamp. Covered are the keys enqueued before $4, the run's
-- watermark target (planning time - 5 minutes): the change that queued
-- such a key committed before the run was planned (the cron job's own
-- assumption about transactions in flight), so the slice read it. A key
-- queued or re-queued later has a later enqueued_at and stays for the cron
-- job. Ranges: (workspace $1[i], [$2[i], $3[i])), as in delete.sql.
--
-- Rows locked by someone else are skipped, never waited for. Only the
-- application's triggers touch the queue while a slice runs (the cron job
-- and the workspace delete need lock 4246, which this transaction holds in
-- shared mode), and a trigger that holds a key re-queues it with a later
-- enqueued_at: it stays anyway (if that transaction rolls back, the key
-- stays for the cron job, which is merely redundant). Waiting instead could
-- deadlock: a trigger enqueueing several keys may hold one this statement
-- wants while it waits for one this statement already deleted. So this
-- transaction never waits for the application on the queue, and the
-- application never waits for it on the rollup rows, which it does not
-- touch outside lock 4246.
DELETE FROM task_usage_hourly_dirty
WHERE ctid = ANY (ARRAY (
    SELECT d.ctid
    FROM task_usage_hourly_dirty d
    JOIN unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS r(workspace_id, from_ts, to_ts)
      ON d.workspace_id = r.workspace_id AND d.bucket_hour >= r.from_ts AND d.bucket_hour < r.to_ts
    WHERE d.enqueued_at < $4
    FOR UPDATE OF d SKIP LOCKED))
