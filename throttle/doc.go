// Package throttle paces a backfill on what PostgreSQL says about its own
// health, and fails closed when it cannot tell.
//
// A [Monitor] reads the signals every [Config.PollInterval] from the
// server's own views, each against its threshold (a zero threshold turns
// a signal off); a [Controller] turns the readings ([Reading]) into a [Decision]: the
// effective concurrency and rate of the process, or a hold (no new claims;
// batches in flight finish, leases and locks are kept). The engine's gate
// applies the Decision; the operator's `set` and `pause` rule over it
// ([Controller.SetLimits]; a pause holds whatever the Controller says).
//
// # Signals
//
//   - [ReplicaLag] (--max-replica-lag, [DefaultMaxReplicaLag] 30 s): the
//     worst physical standby in pg_stat_replication, by replay_lag or by a
//     replay position that has stood still across the standby's replies
//     while WAL waits for it (a paused or stuck replay, where replay_lag
//     can go stale or NULL). The stall is timed between the standby's own
//     reply times ([Monitor] remembers each standby by pid, name and
//     address), so it is seen at most one wal_receiver_status_interval
//     (10 s by default) late, and never for WAL that simply has not been
//     acknowledged yet. 30 s is the default: long enough to ride
//     out one slow commit or a short query conflict on the standby
//     (max_standby_streaming_delay is 30 s by default), short enough that
//     reads from the standby stay useful. Lower it for standbys that serve
//     reads needing fresh data; keep it above the standbys'
//     wal_receiver_status_interval.
//   - [SlotWAL] (--max-slot-wal, [DefaultMaxSlotWAL] 10 GB): the WAL a
//     replication slot keeps (pg_wal_lsn_diff(pg_current_wal_lsn(),
//     restart_lsn)), e.g. a change-data-capture consumer that fell behind:
//     the disk fills before anything else complains. A slot with wal_status
//     'unreserved' holds (more WAL would lose it), 'lost' is red. Set it to
//     a fraction of the free space on the WAL volume, and below
//     max_slot_wal_keep_size if that is set.
//   - [ArchiveBacklog] (--max-archive-backlog, [DefaultMaxArchiveBacklog]
//     42 segments, about 672 MB of 16 MB segments): .ready files in
//     pg_wal/archive_status (pg_ls_archive_statusdir()). A healthy
//     archiver keeps a handful; dozens mean archive_command fails or
//     cannot keep up, and point-in-time recovery falls behind. Green when
//     archive_mode is off.
//   - [Vacuum] (--hold-on-vacuum, [VacuumWraparound]): an autovacuum to
//     prevent wraparound of one of [Config.Tables] (the tables the job
//     writes) in pg_stat_progress_vacuum holds until it ends, so it is
//     never starved by our writes; with [VacuumAll] every VACUUM and
//     autovacuum of them does. Ordinary vacuums (a long backfill's own
//     inserts start them) are better finished beside the run. Vacuums of
//     the tables shardfill only reads do not hold.
//     VACUUM FULL (pg_stat_progress_cluster) takes an exclusive lock that
//     stops the writes anyway.
//   - [Blocked] (--max-blocked, [DefaultMaxBlocked] 5 s): a backend that
//     is not shardfill's has waited longer than this on a lock that one of
//     shardfill's backends holds (pg_locks.waitstart, pg_blocking_pids()).
//     shardfill's backends are those whose application_name starts with
//     [Config.ApplicationName], so every process of a run sees the
//     application it blocks, and waits among shardfill's own backends do not
//     count. 5 s is well above a slice transaction's usual length and well
//     below the timeouts applications typically give up at.
//   - [ThrottleQuery] (--throttle-query, off): the operator's SQL, run in a
//     read-only transaction with a statement_timeout of
//     [Config.ThrottleQueryTimeout] ([DefaultThrottleQueryTimeout] 1 s) and
//     rolled back; a non-NULL first column is red, with that text as the
//     reason. No row or NULL is green; an error is unreadable.
//
// # States
//
// A reading is [Green] within its threshold, [Red] above it, [Hold] above
// twice it or after [Config.HoldAfterRed] ([DefaultHoldAfterRed], 1 min) of
// red. A minute is six halvings apart ([DecreaseInterval]): by then the
// pace is at its floor and the database still suffers, so waiting it out
// is kinder. A vacuum on a written table and a signal that cannot be read
// are Hold at once.
//
// # Failing closed
//
// A signal that cannot be read holds, with a reason that says what to
// grant: a role without pg_read_all_stats (GRANT pg_monitor) sees standbys
// in pg_stat_replication but NULL positions, and NULL relid for
// autovacuum's progress; without pg_monitor it may not call
// pg_ls_archive_statusdir(). Where a role sees nothing to hide (no WAL
// sender at all, no vacuum in its database, archiving off) the signal is
// green, which is the truth. [Monitor.Preflight] checks the privileges up
// front: a signal the operator set explicitly that cannot be read is an
// [UnreadableError] (the CLI exits 2); a default one is returned for a
// warning and holds at run time whenever it matters.
//
// # Control
//
// The [Controller] is additive increase, multiplicative decrease, as TCP
// paces a link it cannot see: a red reading halves the concurrency (not
// below 1) and the rate (not below [RateStep], 10 %, of the full rate), at
// most once per [DecreaseInterval] (10 s: the database needs a while to
// show the effect of a cut: a standby to replay, an archiver to catch up);
// a hold stops claims and halves too, so work resumes gently;
// [GreenPolls] (3, 6 s at the default poll interval) green polls in a row
// add one worker and 10 % of the full rate, up to the configured limits.
// From one worker at 10 % back to 8 workers at 100 % takes about a minute
// of green. With an unlimited rate only the concurrency adapts, unless the
// caller reports the measured rate ([Controller.SetMeasuredRate]): then a
// cut limits the rate to half of it and the steps climb back to unlimited.
// The climb is for the Controller's own cuts only: it goes back to the
// pace it cut from, and an operator's raise meanwhile (`set`) applies at
// once up to what the Controller allows, in full once its climb is over.
// [Decision.Changed] marks transitions (pace, hold, or the signals behind
// them) while the Controller cuts, for one log record each rather than one
// per poll; a `set` while nothing is cut is no transition.
//
// # Cost
//
// A poll is at most six small queries on catalog views (the throttle query
// aside); [Monitor.LastPollDuration] measures it for the benchmark.
// pg_blocking_pids() briefly locks the lock manager, so it runs only for
// backends that wait.
package throttle
