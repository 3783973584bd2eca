package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
)

// Job is what the engine asks of the rollup it drives; job.Hourly is the
// production implementation.
type Job interface {
	// Version identifies the slice logic; a run is only resumed by the
	// same version.
	Version() string
	// Preflight checks, without writing, that the database is ready; the
	// job may also learn from it what its statements can rely on. It runs
	// before any batch is queued.
	Preflight(ctx context.Context, q job.Querier) error
	// PlanSQL lists the slices (see checkpoint.PlanSpec.SourceSQL).
	PlanSQL() string
	// Queue appends the statements that replace a batch's rollup rows to
	// b, which runs inside the batch's transaction; *written receives the
	// rows written.
	Queue(b *pgx.Batch, w shard.Batch, written *int64)
	// Stamp hands over to the incremental job at the watermark.
	Stamp(ctx context.Context, tx job.Querier, at time.Time) (bool, error)
}

// EventKind says what happened to a slice.
type EventKind int

const (
	SliceDone   EventKind = iota // committed with its done mark
	SliceRetry                   // transient error, will be tried again
	SliceFailed                  // permanent error stored with the slice
	SliceLost                    // claim taken over by another worker
	RunStarted                   // the run was planned or resumed (Run, Counts)
)

// Event reports one slice's progress to the caller (progress bars, metrics).
type Event struct {
	Kind     EventKind
	Slice    shard.Slice
	Rows     int64 // rollup rows written (SliceDone)
	Duration time.Duration
	Err      error
	Run      *checkpoint.Run   // RunStarted
	Counts   checkpoint.Counts // RunStarted: slices by state when this process joined
}

// Engine runs backfills against one database.
type Engine struct {
	db    *pgxpool.Pool
	store *checkpoint.Store
	job   Job
	cfg   Config
}

// New returns an Engine that keeps its checkpoints in schema. cfg may be nil.
func New(db *pgxpool.Pool, schema string, j Job, cfg *Config) (*Engine, error) {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Engine{db: db, store: checkpoint.New(db, schema), job: j, cfg: c}, nil
}

// Store gives access to the checkpoint tables (status, tests).
func (e *Engine) Store() *checkpoint.Store { return e.store }

// Result is what a run did in this process.
type Result struct {
	Run         *checkpoint.Run
	Planned     bool // the run was planned by this call (not resumed)
	NothingToDo bool // the latest run was already done
	Executed    int64
	RowsWritten int64
	Outcome     checkpoint.Outcome
	Start       checkpoint.Counts // slice counts when this process joined
}

// Run plans or resumes the backfill and works until every slice is done, a
// slice fails permanently, or ctx is cancelled (ErrInterrupted).
func (e *Engine) Run(ctx context.Context) (*Result, error) {
	log := e.cfg.Logger
	if err := e.job.Preflight(ctx, e.db); err != nil {
		return nil, err
	}
	rangeFrom, err := e.rangeFrom(ctx)
	if err != nil {
		return nil, err
	}

	lock, err := acquireLock(ctx, e.db, e.cfg.Logger)
	if err != nil {
		return nil, interrupted(ctx, err)
	}
	defer lock.Close()

	if err := e.store.Migrate(ctx); err != nil {
		return nil, interrupted(ctx, err)
	}
	run, planned, err := e.store.Start(ctx, checkpoint.PlanSpec{
		SourceSQL: e.job.PlanSQL(), RangeFrom: rangeFrom, MaxSliceRows: e.cfg.MaxSliceRows,
		LogicVersion: e.job.Version(), NewRun: e.cfg.NewRun,
	})
	if err != nil {
		return nil, interrupted(ctx, err)
	}
	res := &Result{Run: run, Planned: planned}
	if !planned && run.Finished() {
		log.Info("latest run is already done; nothing to do (use --new-run to backfill again)", "run", run.ID)
		res.NothingToDo = true
		return res, nil
	}
	if run.LogicVersion != e.job.Version() {
		return nil, &ConfigError{fmt.Sprintf("run %d was planned by another version of the slice logic (%s, this binary has %s); "+
			"its progress cannot be trusted: start over with --new-run", run.ID, run.LogicVersion, e.job.Version())}
	}
	if res.Start, err = e.store.Counts(ctx, run.ID); err != nil {
		return nil, interrupted(ctx, err)
	}
	if planned {
		log.Info("planned run", "run", run.ID, "slices", run.SlicesTotal, "rows", run.RowsTotal,
			"watermark_target", run.WatermarkTarget.UTC().Format(time.RFC3339))
	} else {
		log.Info("resuming run", "run", run.ID, "done", res.Start.Done, "of", res.Start.Total)
		if !sameBound(run.RangeFrom, rangeFrom) {
			log.Warn("resuming keeps the range the run was planned with; --months-back applies to a new run (--new-run)",
				"run", run.ID, "planned_from", run.RangeFrom, "asked_from", rangeFrom)
		}
	}
	if e.cfg.OnEvent != nil {
		e.cfg.OnEvent(Event{Kind: RunStarted, Run: run, Counts: res.Start})
	}
	if e.cfg.PlanOnly {
		if planned {
			err = e.store.SetState(ctx, run.ID, checkpoint.StatePlanned)
		}
		return res, err
	}

	if err := e.workUntilDone(ctx, lock, run.ID, res); err != nil {
		e.handBack(ctx, run.ID, err)
		return res, interrupted(ctx, err)
	}

	res.Outcome, err = e.store.Finish(ctx, run.ID, func(ctx context.Context, tx pgx.Tx, at time.Time) (bool, error) {
		return e.job.Stamp(ctx, tx, at)
	})
	if err != nil {
		return res, interrupted(ctx, err)
	}
	switch {
	case res.Outcome.State == checkpoint.StateFailed:
		return res, &FailedError{RunID: run.ID, Failed: res.Outcome.Counts.Failed}
	case res.Outcome.Stamped:
		log.Info("run done; watermark stamped", "run", run.ID, "watermark_at", run.WatermarkTarget.UTC().Format(time.RFC3339))
	case res.Outcome.State == checkpoint.StateDone:
		log.Warn("run done but task_usage_hourly_rollup_state has no row id=1: watermark NOT stamped; "+
			"insert the state row and set watermark_at yourself", "run", run.ID, "watermark_target", run.WatermarkTarget)
	}
	return res, nil
}

// workUntilDone runs the pool until no slice is left for this process.
// Anything still claimed by it once every worker is done was stranded (its
// batch was partly taken over mid-way): it is handed back and worked again,
// so the run cannot end unfinished.
func (e *Engine) workUntilDone(ctx context.Context, lock *cronLock, runID int64, res *Result) error {
	for {
		if err := e.work(ctx, lock, runID, res); err != nil {
			return err
		}
		stranded, err := e.store.Release(ctx, runID, e.cfg.Owner)
		if err != nil || stranded == 0 {
			return err
		}
		e.cfg.Logger.Warn("slices left claimed by this process were handed back; working on", "slices", stranded)
	}
}

// handBack releases this process's claims after the work stopped with
// workErr, and records the run as interrupted or failed unless another
// process still works on it. It uses a context of its own: ctx may be the
// cancelled one.
func (e *Engine) handBack(ctx context.Context, runID int64, workErr error) {
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := e.store.Release(cleanup, runID, e.cfg.Owner); err != nil {
		e.cfg.Logger.Warn("could not release claims; they are reclaimed once this process's lock is gone", "err", err)
	}
	state := checkpoint.StateInterrupted
	if ctx.Err() == nil && !errors.Is(workErr, ErrLockLost) {
		state = checkpoint.StateFailed
	}
	if others, err := e.store.OthersActive(cleanup, runID, e.cfg.Owner); err == nil && !others {
		_ = e.store.SetState(cleanup, runID, state)
	}
}

// sameBound reports whether two optional range bounds are equal.
func sameBound(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// interrupted maps any error caused by the cancellation of ctx to
// ErrInterrupted, so the caller can tell a stop from a failure.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: in-flight slices rolled back; run `shardfill run` again to resume", ErrInterrupted)
	}
	return err
}

// rangeFrom turns --months-back into a lower bound, refusing to abandon
// older history unless the operator forced it.
func (e *Engine) rangeFrom(ctx context.Context) (*time.Time, error) {
	if e.cfg.MonthsBack == 0 {
		return nil, nil
	}
	from, err := e.monthsBackStart(ctx)
	if err != nil {
		return nil, err
	}
	var older bool
	if err := e.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM task_usage WHERE created_at < $1)`, from).Scan(&older); err != nil {
		return nil, err
	}
	if older && !e.cfg.ForcePartial {
		return nil, &ConfigError{fmt.Sprintf("refusing --months-back %d: task_usage holds rows before %s that this run would not roll up, "+
			"yet the watermark would still advance past them; add --force-partial to accept that, or drop --months-back",
			e.cfg.MonthsBack, from.Format("2006-01-02"))}
	}
	if older {
		e.cfg.Logger.Warn("--force-partial: history before the range stays out of the rollup", "from", from.Format("2006-01-02"))
	}
	return &from, nil
}

// monthsBackStart is the first instant --months-back covers, by the
// database's clock (the one the watermark is taken from).
func (e *Engine) monthsBackStart(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := e.db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return time.Time{}, err
	}
	return shard.MonthsBackStart(now, e.cfg.MonthsBack), nil
}

// work runs the worker pool until no slice of the run is left for it.
func (e *Engine) work(ctx context.Context, lock *cronLock, runID int64, res *Result) error {
	ctx, cancel := context.WithCancelCause(ctx)
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		lock.watch(ctx, cancel)
	}()
	// The watcher uses the lock connection: it must be gone before the
	// caller closes that connection.
	defer func() {
		cancel(nil)
		<-watching
	}()

	limit := rate.Inf
	if e.cfg.Rate > 0 {
		limit = rate.Limit(e.cfg.Rate)
	}
	w := &workers{
		e:       e,
		lock:    lock,
		runID:   runID,
		limiter: rate.NewLimiter(limit, e.cfg.Burst),
		claim:   checkpoint.Claim{Owner: e.cfg.Owner, PID: lock.pid},
		limits:  checkpoint.BatchLimits{Rows: e.cfg.BatchRows, Slices: e.cfg.batchSlices()},
		done:    make(chan struct{}),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.renew(gctx) })
	var pool sync.WaitGroup
	for range e.cfg.Concurrency {
		pool.Add(1)
		g.Go(func() error {
			defer pool.Done()
			return w.loop(gctx)
		})
	}
	g.Go(func() error {
		// The renewer stops once every worker is done.
		pool.Wait()
		close(w.done)
		return nil
	})
	err := g.Wait()
	res.Executed += w.executed.Load()
	res.RowsWritten += w.rows.Load()
	if cause := context.Cause(ctx); errors.Is(cause, ErrLockLost) {
		return cause
	}
	return err
}

// workers is the shared state of one process's pool.
type workers struct {
	e        *Engine
	lock     *cronLock
	runID    int64
	limiter  *rate.Limiter
	claim    checkpoint.Claim
	limits   checkpoint.BatchLimits
	executed atomic.Int64
	rows     atomic.Int64
	done     chan struct{} // closed when every worker has returned
}

// pollInterval is how often an idle worker looks again while slices are
// still held by workers of other processes (whose leases may run out).
const pollInterval = time.Second

func (w *workers) loop(ctx context.Context) error {
	failures := 0 // consecutive failed claims
	for {
		// --rate counts slices, not batches. The first slice's token is
		// taken before the claim, so a throttled worker holds no claim
		// while the bucket is empty; the batch's other slices take theirs
		// before it starts (with a rate, a batch holds at most --burst
		// slices, so the bucket can always cover it).
		if err := w.take(ctx, 1); err != nil {
			return err
		}
		batch, err := w.claimBatch(ctx)
		if err != nil && retryable(err) && ctx.Err() == nil && failures+1 < w.e.cfg.MaxAttempts {
			failures++
			w.e.cfg.Logger.Warn("claim failed; retrying", "attempt", failures, "err", err)
			if err := sleep(ctx, backoff(w.e.cfg.Backoff, failures)); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		failures = 0
		if batch == nil {
			more, err := w.othersHoldSlices(ctx)
			if err != nil || !more {
				return err
			}
			if err := sleep(ctx, pollInterval); err != nil {
				return err
			}
			continue
		}
		// A cancel while waiting hands the claimed batch back with the rest.
		if err := w.take(ctx, len(batch.Slices)-1); err != nil {
			return err
		}
		err = w.batch(ctx, *batch)
		if err != nil {
			return err
		}
		if err := sleep(ctx, w.e.cfg.SleepBetweenSlices); err != nil {
			return err
		}
	}
}

// take waits for n tokens of the rate limiter. The limiter refuses at once
// a wait that would outlast ctx's deadline; that ends here when the
// deadline does, so the run stops as interrupted, not failed.
func (w *workers) take(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	err := w.limiter.WaitN(ctx, n)
	if _, hasDeadline := ctx.Deadline(); err != nil && ctx.Err() == nil && hasDeadline {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

// claimBatch claims the next batch. The claim statement is never cut short
// by a cancel: a statement abandoned mid-way may still commit on the server
// after this process has handed its claims back, leaving them looking
// taken. A batch claimed just as the run was cancelled is returned with the
// cancellation, and handed back with the rest.
func (w *workers) claimBatch(ctx context.Context) (*shard.Batch, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	batch, err := w.e.store.Claim(cctx, w.runID, w.claim, w.limits, w.e.cfg.Lease)
	if err == nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return batch, err
}

// othersHoldSlices reports whether this idle worker should wait: slices are
// unfinished but claimed by other processes, which may yet abandon them.
// Slices in flight in this process need no waiting for: their workers see
// them through.
func (w *workers) othersHoldSlices(ctx context.Context) (bool, error) {
	return w.e.store.Unclaimed(ctx, w.runID, w.claim.Owner)
}

// batch runs one claimed batch to an end: done, failed, or lost. Only an
// error that stops the whole process (cancel, lost lock, checkpoint
// unreachable) is returned.
func (w *workers) batch(ctx context.Context, b shard.Batch) error {
	cfg := w.e.cfg
	for attempt := 1; ; attempt++ {
		start := time.Now()
		rows, err := w.execute(ctx, b)
		took := time.Since(start)
		switch {
		case err == nil:
			w.executed.Add(int64(len(b.Slices)))
			w.rows.Add(rows)
			for _, sl := range b.Slices {
				w.emit(Event{Kind: SliceDone, Slice: sl, Duration: took, Rows: rows})
				rows = 0 // the batch's rows are reported once
			}
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, checkpoint.ErrLostClaim):
			cfg.Logger.Warn("claim taken over by another worker; dropping it", "batch", b.String())
			if err := w.e.store.ReleaseBatch(ctx, b, cfg.Owner); err != nil {
				return fmt.Errorf("hand back the rest of %s: %w", b, err)
			}
			for _, sl := range b.Slices {
				w.emit(Event{Kind: SliceLost, Slice: sl, Duration: took, Err: err})
			}
			return nil
		case errors.Is(err, checkpoint.ErrNotProtected):
			return fmt.Errorf("%w: %w", ErrLockLost, err)
		case retryable(err) && attempt < cfg.MaxAttempts:
			delay := backoff(cfg.Backoff, attempt)
			cfg.Logger.Warn("transient error; retrying", "batch", b.String(), "attempt", attempt, "in", delay, "err", err)
			for _, sl := range b.Slices {
				w.emit(Event{Kind: SliceRetry, Slice: sl, Duration: took, Err: err})
			}
			if err := sleep(ctx, delay); err != nil {
				return err
			}
		case len(b.Slices) > 1:
			// Find the culprit: run the slices one by one, so only the
			// slice that cannot be done is marked failed.
			cfg.Logger.Warn("batch failed; retrying its slices one by one", "batch", b.String(), "err", err)
			for _, sl := range b.Slices {
				single, _ := shard.NewBatch([]shard.Slice{sl})
				if err := w.batch(ctx, single); err != nil {
					return err
				}
			}
			return nil
		default:
			sl := b.Slices[0]
			err = fmt.Errorf("%s: %w", sl, err)
			cfg.Logger.Error("slice failed", "slice", sl.String(), "attempt", attempt, "err", err)
			w.emit(Event{Kind: SliceFailed, Slice: sl, Duration: took, Err: err})
			if ferr := w.e.store.Fail(ctx, sl, cfg.Owner, err); ferr != nil {
				return fmt.Errorf("record failure of %s: %w", sl, ferr)
			}
			return nil
		}
	}
}

// execute replaces a batch's rollup rows and marks its slices done in one
// transaction, fenced by the claim and the cron lock. The whole transaction
// but its COMMIT travels in one round trip.
func (w *workers) execute(ctx context.Context, sl shard.Batch) (int64, error) {
	var b pgx.Batch
	var rows int64
	b.BeginTx(pgx.TxOptions{})
	names, values := txSettings(w.e.cfg)
	b.Queue(`SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)`, names, values)
	w.e.store.QueueFence(&b, w.claim)
	w.e.job.Queue(&b, sl, &rows)
	w.e.store.QueueComplete(&b, sl, w.claim)

	br := w.e.db.SendBatch(ctx, &b)
	tx := br.Tx()
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // no-op after a commit
	}()
	if err := br.Close(); err != nil {
		return 0, err
	}
	return rows, tx.Commit(ctx)
}

// txSettings are the settings local to a slice transaction. A commit lost
// to synchronous_commit = off only means its slices are redone (their done
// marks are lost with their rows), and the watermark stamp is a durable
// commit that flushes every earlier one. Parallel query is off because the
// pool already keeps the cores busy, JIT because its compile time dwarfs a
// slice's run time. work_mem lets a batch sort and hash in memory.
func txSettings(cfg Config) (names, values []string) {
	names = []string{"synchronous_commit", "max_parallel_workers_per_gather", "jit", "work_mem"}
	values = []string{"off", "0", "off", "64MB"}
	for name, d := range map[string]time.Duration{"statement_timeout": cfg.StatementTimeout, "lock_timeout": cfg.LockTimeout} {
		if d > 0 {
			names = append(names, name)
			values = append(values, fmt.Sprintf("%dms", d.Milliseconds()))
		}
	}
	return names, values
}

// renew keeps this process's claims alive until the workers are done.
func (w *workers) renew(ctx context.Context) error {
	tick := time.NewTicker(w.e.cfg.Lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.done:
			return nil
		case <-tick.C:
		}
		if err := w.e.store.Renew(ctx, w.runID, w.claim.Owner, w.e.cfg.Lease); err != nil && ctx.Err() == nil {
			w.e.cfg.Logger.Warn("lease renewal failed", "err", err)
		}
	}
}

func (w *workers) emit(ev Event) {
	if w.e.cfg.OnEvent != nil {
		w.e.cfg.OnEvent(ev)
	}
}

// backoff is the delay before retry number attempt: exponential with full
// jitter, capped, so workers hitting the same fault spread out.
func backoff(base time.Duration, attempt int) time.Duration {
	d := base << min(attempt-1, 5)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
