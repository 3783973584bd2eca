package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/shardfill/shardfill/shard"
)

// StatePaused is how status reports a run whose control record is paused
// while some process of it is live; it is never stored in the run row.
const StatePaused RunState = "paused"

// FailedSlice is a slice that ended with a permanent error.
type FailedSlice struct {
	ID        int64      `json:"id"`
	Workspace string     `json:"workspace_id"` // a job file's shard, if any
	From      *time.Time `json:"from,omitempty"`
	To        *time.Time `json:"to,omitempty"`
	Lo        *string    `json:"lo,omitempty"` // a job file's key range
	Hi        *string    `json:"hi,omitempty"`
	Attempts  int        `json:"attempts"`
	Error     string     `json:"error"`
}

// Where names the slice's rows: its workspace and window, or a job file's
// shard and key range.
func (f FailedSlice) Where() string {
	sl := shard.Slice{ID: f.ID, Workspace: f.Workspace, Lo: f.Lo, Hi: f.Hi, KeyRange: f.From == nil || f.To == nil}
	if !sl.KeyRange {
		sl.From, sl.To = *f.From, *f.To
	}
	return sl.String()
}

// FailureGroup is every failed slice of a run with one cause.
type FailureGroup struct {
	Error   string      `json:"error"`  // the cause, without the slice
	Slices  int64       `json:"slices"` // failed slices with this cause
	Example FailedSlice `json:"example"`
}

// Status limits: what one status lists at most.
const (
	MaxFailureGroups = 20
	MaxFailedSlices  = 1000
)

// Status is a run as operators see it; the JSON names are part of the CLI
// contract (status --json).
type Status struct {
	RunID int64  `json:"run_id"`
	Job   string `json:"job"` // the job the run belongs to
	// State is one of the contract's planned|running|paused|done|failed|
	// interrupted; a run replaced by --new-run reads interrupted, with
	// Superseded set. A running run no live process works on reads
	// interrupted.
	State         RunState   `json:"state"`
	Superseded    bool       `json:"superseded"`
	PlannedAt     time.Time  `json:"planned_at"`
	StartedAt     *time.Time `json:"started_at"`
	FinishedAt    *time.Time `json:"finished_at"`
	SlicesTotal   int64      `json:"slices_total"`
	SlicesDone    int64      `json:"slices_done"`
	SlicesFailed  int64      `json:"slices_failed"`
	SlicesPending int64      `json:"slices_pending"`
	SlicesRunning int64      `json:"slices_running"`
	RowsTotal     int64      `json:"rows_total"`
	RowsDone      int64      `json:"rows_done"`
	// RowsPerSecond is measured over the slices finished in the last
	// RateWindowSeconds: the last minute, or less while the live processes
	// have worked for less than a minute. 0 unless the run is running (a
	// done, failed, paused or interrupted run does not move).
	RowsPerSecond     float64 `json:"rows_per_second"`
	RateWindowSeconds float64 `json:"rate_window_seconds"`
	// ETASeconds is the time left at the workers' pace: the rows of the
	// batches finished in the last minute over the time they took, times
	// the working processes' workers (not RowsPerSecond, which counts the
	// time they waited for planning as well); and at least what the pace
	// in force allows (unfinished slices / the
	// working processes' summed effective rates, the health throttle's
	// cuts included). Null unless some live process works on the run and
	// a pace is known, and null while every live process is held (paused,
	// throttled, yielding the cron lock) or the lock is held by the
	// session they yield to: ThrottleReason then says why.
	ETASeconds *float64 `json:"eta_seconds"`
	// ETAEstimated: the run is still being planned and the ETA counts the
	// rows not planned yet, estimated from the history's extent (the rows
	// per month of the months planned so far, over all its months).
	ETAEstimated bool `json:"eta_estimated"`
	// RowsTotalEstimated is that estimate of the run's raw rows in all
	// while it is planned; null once planning is done (RowsTotal is then
	// final), or when the history is planned in one piece.
	RowsTotalEstimated *int64 `json:"rows_total_estimated"`
	// Owners are the live processes holding claims.
	Owners          []string   `json:"owners"`
	WatermarkTarget time.Time  `json:"watermark_target"`
	WatermarkAt     *time.Time `json:"watermark_at"` // the watermark's value once this run stamped it; null until then
	StampedAt       *time.Time `json:"stamped_at"`   // when this run stamped the watermark; null until then
	LastError       *string    `json:"last_error"`
	// Control: the run's desired state (pause, limits) and its version.
	Paused         bool       `json:"paused"`
	PausedBy       *string    `json:"paused_by"`
	PausedAt       *time.Time `json:"paused_at"`
	ControlVersion int64      `json:"control_version"`
	Limits         Limits     `json:"limits"`
	// Processes are the live processes of the run with the limits each
	// runs under and when it last acknowledged the control record.
	Processes []Process `json:"processes"`
	// ThrottleReason says what holds the run back (a pause, a health
	// throttle); null when nothing does.
	ThrottleReason *string `json:"throttle_reason"`
	// Failures groups the failed slices by cause, the most frequent first,
	// at most MaxFailureGroups; FailureGroupsOmitted says how many groups
	// were left out.
	Failures             []FailureGroup `json:"failures"`
	FailureGroupsOmitted int64          `json:"failure_groups_omitted"`
	// FailedSlices lists failed slices one by one, at most MaxFailedSlices;
	// FailedSlicesOmitted says how many were left out.
	FailedSlices        []FailedSlice `json:"failed_slices"`
	FailedSlicesOmitted int64         `json:"failed_slices_omitted"`
	// YieldingTo is the session the run's processes yield the cron lock
	// to (it waits for it or holds it exclusively); null otherwise.
	YieldingTo *LockSession `json:"yielding_to"`
	// ReadOnlyReplica is set when the status was read on a hot standby:
	// it may lag the primary, and the processes working on the run (whose
	// locks live on the primary) cannot be seen, so a running run is shown
	// as stored rather than judged interrupted.
	ReadOnlyReplica bool `json:"read_only_replica"`
	// Planning: the run is still being planned piece by piece, so the
	// totals (slices_total, rows_total) count the pieces planned so far,
	// and the ETA is that of those.
	Planning bool `json:"planning"`
}

// LockSession is a session that takes the cron lock exclusively.
type LockSession struct {
	PID             int    `json:"pid"`
	ApplicationName string `json:"application_name"`
	Granted         bool   `json:"granted"` // holds it (else waits for it)
}

// yieldingTo returns the session that holds or waits for the cron lock
// exclusively, which the processes of a running run yield to; nil if none.
func (s *Store) yieldingTo(ctx context.Context) (*LockSession, error) {
	var who LockSession
	err := s.db.QueryRow(ctx, `
		SELECT l.pid, coalesce(a.application_name, ''), l.granted
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE `+s.lock.Is("l")+` AND l.mode = 'ExclusiveLock'
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY l.granted DESC, l.pid LIMIT 1`).Scan(&who.PID, &who.ApplicationName, &who.Granted)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &who, nil
}

// causeSQL is a failed slice's cause: stored apart since failures are
// grouped; for slices failed by older versions, the error without the
// slice name it starts with.
const causeSQL = `coalesce(cause, regexp_replace(coalesce(error, ''), '^slice [0-9]+ \(workspace [^,]*, [^)]*\): ', ''))`

// Status reads run's progress, reading the run afresh. The rate is measured over the slices
// finished in the last minute (or since the live processes started, when
// that is shorter), so it reflects the current pace of every process
// working on the run.
func (s *Store) Status(ctx context.Context, run *Run) (*Status, error) {
	// The run as it is now: a caller's copy may be from when a process
	// joined, before planning went on (totals, planning) or work started.
	fresh, err := s.GetRun(ctx, run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if fresh != nil {
		run = fresh
	}
	procs, err := s.Processes(ctx, run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	c, recent, err := s.tally(ctx, run.ID, procs)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st := &Status{
		RunID: run.ID, Job: s.job, State: run.State, PlannedAt: run.PlannedAt, StartedAt: run.StartedAt, FinishedAt: run.FinishedAt,
		SlicesTotal: c.Total, SlicesDone: c.Done, SlicesFailed: c.Failed, SlicesPending: c.Pending, SlicesRunning: c.Running,
		RowsTotal: run.RowsTotal, RowsDone: c.RowsDone, WatermarkTarget: run.WatermarkTarget, LastError: run.LastError,
		FailedSlices: []FailedSlice{}, Owners: []string{}, Failures: []FailureGroup{}, Processes: []Process{},
		StampedAt: run.StampedAt,
	}
	st.Planning = !run.PlanningDone && !run.Finished()
	if st.Planning {
		rows, ok, err := s.estimatedRows(ctx, run)
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		if ok {
			st.RowsTotalEstimated = &rows
		}
	}
	if run.StampedAt != nil {
		st.WatermarkAt = &run.WatermarkTarget
	}
	if run.State == StateSuperseded {
		st.State, st.Superseded = StateInterrupted, true
	}
	if err := s.db.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&st.ReadOnlyReplica); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	ctl, err := s.Control(ctx, run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st.Paused, st.PausedBy, st.PausedAt, st.ControlVersion, st.Limits = ctl.Paused, ctl.PausedBy, ctl.PausedAt, ctl.Version, ctl.Limits
	st.Processes = procs
	live := len(st.Processes) > 0
	if run.State == StateInterrupted && live {
		st.State = StateRunning // a process left while others work on
	}
	if run.State == StateRunning && !live && !st.ReadOnlyReplica {
		// A process that was killed could not say so. Every process that
		// works on one of this schema's runs holds the schema's membership
		// lock; if none does, nobody is working and the run is interrupted.
		// (The cron lock alone would count another schema's run, a repair,
		// or any other session that holds it.)
		members, err := s.Members(ctx, 0)
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		if len(members) == 0 {
			st.State = StateInterrupted
		}
		live = len(members) > 0
	}
	if st.State == StateRunning && ctl.Paused {
		st.State = StatePaused
	}
	if st.State == StateRunning {
		if st.YieldingTo, err = s.yieldingTo(ctx); err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
	}
	for _, p := range st.Processes {
		if p.Reason != nil && *p.Reason != "" {
			st.ThrottleReason = p.Reason
			break
		}
	}
	if st.ThrottleReason == nil && st.State == StatePaused {
		reason := "paused"
		if ctl.PausedBy != nil {
			reason += " by " + *ctl.PausedBy
		}
		st.ThrottleReason = &reason
	}

	pace(run, st, c, recent)
	rows, err := s.db.Query(ctx, s.q(`SELECT DISTINCT owner FROM _SCHEMA_.slice s
		WHERE run_id = $1 AND state = 'running' AND `+s.lock.HeldOrAwaitedBy("s.owner_pid")+` ORDER BY 1`), run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st.Owners, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if c.Failed == 0 {
		return st, nil
	}
	if err := s.failures(ctx, run.ID, st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

// pace fills in the rate and the ETA. Both are left out for a run that no
// live process works on, or that is paused: it is not moving.
//
// The rate is what the run achieved over the last minute, wall clock. The
// ETA is not taken from it: a run's first seconds are not its pace (the
// workers wait for planning's next piece, and share the cores with it), and
// an ETA from them, read when a tenth of the rows is done, was two and three
// times the real time left. It is the workers' own pace while they work:
// the rows of the batches finished in the last minute over the time those
// batches took (claim to commit, and the pause after each), times the
// workers the live processes run; and no less than the rates in force allow.
func pace(run *Run, st *Status, c Counts, b batches) {
	window := time.Minute
	since := b.since
	now, recent, working, busy := b.now, b.rows, b.started, b.busy
	if since != nil {
		// The first seconds of a process's work are not a minute: divide by
		// the time it has actually worked (at least a second, so a single
		// early slice does not read as a torrent), counted from its first
		// claim: planning the run's first piece, before it, is not work
		// whose pace the rest of the run will have.
		if working != nil && working.After(*since) {
			since = working
		}
		window = min(window, max(now.Sub(*since), time.Second))
	}
	st.RateWindowSeconds = window.Seconds()
	if st.State != StateRunning {
		// Done, failed, paused or interrupted: nothing moves now, whatever
		// finished in the last minute.
		return
	}
	st.RowsPerSecond = float64(recent) / window.Seconds()
	if c.Unfinished() == 0 && st.RowsTotalEstimated == nil {
		return // nothing left, unless planning goes on: then the rows not planned yet are
	}
	if held(st) {
		return // no number: ThrottleReason says what holds it
	}
	rowsLeft, slicesLeft := float64(max(run.RowsTotal-c.RowsDone, 0)), float64(c.Unfinished())
	if est := st.RowsTotalEstimated; est != nil && run.RowsTotal > 0 {
		// The slices not planned yet are as many per row as those planned.
		st.ETAEstimated = true
		rowsLeft = float64(max(*est-c.RowsDone, 0))
		slicesLeft = max(float64(c.Total)*float64(*est)/float64(run.RowsTotal)-float64(c.Done+c.Failed), slicesLeft)
	}
	workers, rate := inForce(st.Processes)
	workersPace := st.RowsPerSecond
	if workers > 0 && busy > 0 {
		workersPace = float64(recent) / busy * float64(workers)
	}
	var eta float64
	if workersPace > 0 && (window >= etaWarmup || c.RowsDone*100 >= run.RowsTotal) {
		eta = rowsLeft / workersPace
	}
	// A rate in force bounds the pace whatever the rows: every unfinished
	// slice needs a token of some working process's limiter, at the rate
	// the health throttle lets it have.
	if rate > 0 {
		eta = max(eta, slicesLeft/rate)
	}
	if eta > 0 && !math.IsInf(eta, 0) {
		st.ETASeconds = &eta
	}
}

// batches are the run's batches finished in the last minute, for pace.
type batches struct {
	now     time.Time
	since   *time.Time // the earliest start of a live process; nil when none
	rows    int64      // their raw rows
	started *time.Time // the earliest claim among them
	busy    float64    // seconds they took, claim to commit plus the pause after each, summed
}

// tally counts the run's slices by state and sums its recent batches
// (those finished in the last minute, since the earliest of procs
// started) in one pass over the run's slices. A status read repeats it
// while the run works, and on half a million slices it takes the server
// a good part of a second: one pass rather than two, and no parallel
// workers, which would take the cores from the run being watched.
func (s *Store) tally(ctx context.Context, runID int64, procs []Process) (Counts, batches, error) {
	var c Counts
	var b batches
	for _, p := range procs {
		if b.since == nil || p.StartedAt.Before(*b.since) {
			b.since = &p.StartedAt
		}
	}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
			return err
		}
		// One group per state, and per batch (owner and claim time) among
		// the recent ones.
		return tx.QueryRow(ctx, s.q(`
			SELECT now(),
			       coalesce(sum(g.n), 0)::bigint,
			       coalesce(sum(g.n) FILTER (WHERE g.state = 'pending'), 0)::bigint,
			       coalesce(sum(g.n) FILTER (WHERE g.state = 'running'), 0)::bigint,
			       coalesce(sum(g.n) FILTER (WHERE g.state = 'done'), 0)::bigint,
			       coalesce(sum(g.n) FILTER (WHERE g.state = 'failed'), 0)::bigint,
			       coalesce(sum(g.rows) FILTER (WHERE g.state = 'done'), 0)::bigint,
			       coalesce(sum(g.rows) FILTER (WHERE g.recent), 0)::bigint,
			       min(g.started_at) FILTER (WHERE g.recent),
			       coalesce(sum(extract(epoch FROM g.took) + coalesce(p.sleep_between_slices_ms, 0) / 1000.0)
			                FILTER (WHERE g.recent), 0)::float8
			FROM (SELECT state,
			             state = 'done' AND finished_at > now() - interval '1 minute'
			                 AND ($2::timestamptz IS NULL OR finished_at >= $2) AS recent,
			             CASE WHEN state = 'done' THEN owner END AS owner,
			             CASE WHEN state = 'done' THEN started_at END AS started_at,
			             count(*) AS n, sum(est_rows) AS rows, max(finished_at) - min(started_at) AS took
			      FROM _SCHEMA_.slice
			      WHERE run_id = $1
			      GROUP BY 1, 2, 3, 4) g
			LEFT JOIN _SCHEMA_.process p ON g.recent AND p.run_id = $1 AND p.owner = g.owner`), runID, b.since).
			Scan(&b.now, &c.Total, &c.Pending, &c.Running, &c.Done, &c.Failed, &c.RowsDone, &b.rows, &b.started, &b.busy)
	})
	return c, b, err
}

// etaWarmup: a pace measured over less than this, on less than a
// hundredth of the rows, gives no ETA. A run's first claims take its
// smallest slices, and a few tiny slices in the first seconds promised
// years.
const etaWarmup = 10 * time.Second

// held reports whether nothing moves now though the run is running: every
// live process is held back (a throttle's hold, a yield; a pause shows as
// the run's state), or the session they yield to holds the cron lock.
func held(st *Status) bool {
	if st.YieldingTo != nil && st.YieldingTo.Granted {
		return true
	}
	if len(st.Processes) == 0 {
		return false
	}
	for _, p := range st.Processes {
		if p.State == ProcessWorking {
			return false
		}
	}
	return true
}

// inForce sums what the working processes run at, as the health throttle
// lowered their limits: their workers, and their rates (0 when one of them
// is unlimited or none works).
func inForce(procs []Process) (workers int, rate float64) {
	unlimited := false
	for _, p := range procs {
		if p.State != ProcessWorking {
			continue
		}
		c, r := p.Concurrency, p.Rate
		if p.EffectiveConcurrency != nil {
			c = *p.EffectiveConcurrency
		}
		if p.EffectiveRate != nil {
			r = *p.EffectiveRate
		}
		workers += max(c, 0)
		unlimited = unlimited || r <= 0
		rate += r
	}
	if unlimited {
		rate = 0
	}
	return workers, rate
}

// estimatedRows estimates the raw rows of a run still being planned, from
// the history's extent (the months of its raw rows when the run was
// created): the months not planned yet at the rows per month of those
// planned after the first piece (the newest month, often partial), or of
// the first alone while it is the only one. ok is false once planning is
// done, or for a history planned in one piece.
func (s *Store) estimatedRows(ctx context.Context, run *Run) (rows int64, ok bool, err error) {
	var floor, top *time.Time
	var cursor pgtype.Timestamptz
	var later int64
	err = s.db.QueryRow(ctx, s.q(`
		SELECT r.plan_floor, r.plan_top, r.plan_cursor,
		       coalesce((SELECT sum(p.rows) FROM _SCHEMA_.plan_piece p WHERE p.run_id = r.id AND p.piece > 0), 0)::bigint
		FROM _SCHEMA_.run r WHERE r.id = $1 AND NOT r.planning_done`), run.ID).Scan(&floor, &top, &cursor, &later)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if floor == nil || top == nil || !cursor.Valid || cursor.InfinityModifier != pgtype.Finite || !cursor.Time.After(*floor) {
		return 0, false, nil
	}
	planned, left := monthsFrom(cursor.Time, *top)+1, monthsFrom(*floor, cursor.Time)
	perMonth := float64(run.RowsTotal)
	if planned > 1 {
		perMonth = float64(later) / float64(planned-1)
	}
	return run.RowsTotal + int64(perMonth*float64(left)), true, nil
}

// failures groups the failed slices by cause and lists the first of them.
func (s *Store) failures(ctx context.Context, runID int64, st *Status) error {
	rows, err := s.db.Query(ctx, s.q(`
		WITH f AS (
			SELECT id, coalesce(workspace_id::text, shard, '') AS ws, from_ts, to_ts, lo, hi, attempts, coalesce(error, '') AS error, `+causeSQL+` AS cause
			FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'failed'
		)
		SELECT DISTINCT ON (cause) cause, count(*) OVER (PARTITION BY cause), id, ws, from_ts, to_ts, lo, hi, attempts, error
		FROM f ORDER BY cause, id`), runID)
	if err != nil {
		return err
	}
	groups, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (FailureGroup, error) {
		var g FailureGroup
		e := &g.Example
		err := row.Scan(&g.Error, &g.Slices, &e.ID, &e.Workspace, &e.From, &e.To, &e.Lo, &e.Hi, &e.Attempts, &e.Error)
		return g, err
	})
	if err != nil {
		return err
	}
	sort.SliceStable(groups, func(i, j int) bool { return groups[i].Slices > groups[j].Slices })
	if len(groups) > MaxFailureGroups {
		st.FailureGroupsOmitted = int64(len(groups) - MaxFailureGroups)
		groups = groups[:MaxFailureGroups]
	}
	st.Failures = groups
	rows, err = s.db.Query(ctx, s.q(`
		SELECT id, coalesce(workspace_id::text, shard, ''), from_ts, to_ts, lo, hi, attempts, coalesce(error, '')
		FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'failed' ORDER BY id LIMIT $2`), runID, MaxFailedSlices)
	if err != nil {
		return err
	}
	if st.FailedSlices, err = pgx.CollectRows(rows, pgx.RowToStructByPos[FailedSlice]); err != nil {
		return err
	}
	st.FailedSlicesOmitted = max(st.SlicesFailed-int64(len(st.FailedSlices)), 0)
	return nil
}
