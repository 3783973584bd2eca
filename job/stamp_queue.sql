-- Hand-over at the stamp: drop every queued dirty key enqueued before the
-- watermark $1 whose bucket lies in the run's range (from $2, '-infinity'
-- for all history). The slices dropped the keys of the buckets they
-- covered (queue.sql); what is left is keys of buckets no slice covers,
-- which held neither raw nor rollup rows when the run was planned, so
-- recomputing them would write nothing, and keys a slice skipped while the
-- application held them (by the same argument as in queue.sql, covered by
-- the slice's read). Keys older than the range stay: the run did not read
-- their buckets. Locked rows are skipped for the reasons queue.sql gives.
DELETE FROM task_usage_hourly_dirty
WHERE ctid = ANY (ARRAY (
    SELECT ctid FROM task_usage_hourly_dirty
    WHERE enqueued_at < $1 AND bucket_hour >= $2
    FOR UPDATE SKIP LOCKED))
