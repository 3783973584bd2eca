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
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/shard"
)

// work runs the worker pool until no slice of the run is left for it.
// MaxConcurrency workers are started; ctl's gate lets as many claim at
// once as the limits in effect allow, and none while the run is paused.
//
// p is this process's planner, which wakes idle workers when it planned a
// piece (nil when the run is fully planned).
func (e *Engine) work(ctx context.Context, lock *cronLock, ctl *controller, p *planner, res *Result) error {
	w := &workers{
		e:        e,
		planner:  p,
		lock:     lock,
		runID:    ctl.runID,
		ctl:      ctl,
		limiter:  ctl.limiter,
		claimant: checkpoint.Claimant{Owner: e.cfg.Owner}, // PID: lock.enter
		done:     make(chan struct{}),
		stop:     make(chan struct{}),
		failures: newFailureLog(e.cfg.Logger),
	}
	defer w.failures.flush()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.renew(gctx) })
	g.Go(func() error { return ctl.run(gctx, w.done) })
	if ctl.health != nil {
		g.Go(func() error { return ctl.health.run(gctx, w.done) })
	}
	var pool sync.WaitGroup
	for range e.cfg.MaxConcurrency {
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
	ctl      *controller // the gate, the limits in effect
	planner  *planner    // nil: the run is fully planned
	limiter  *rate.Limiter
	claimant checkpoint.Claimant
	executed atomic.Int64
	rows     atomic.Int64
	done     chan struct{} // closed when every worker has returned
	stop     chan struct{} // closed when a worker found no work left: workers waiting at the gate return
	stopOnce sync.Once
	failures *failureLog
}

// pollInterval is how often an idle worker looks again while slices are
// still held by workers of other processes (whose leases may run out).
const pollInterval = time.Second

func (w *workers) loop(ctx context.Context) error {
	failures := 0 // consecutive failed claims
	first := true // this worker's first claim takes one small slice
	for {
		// The gate admits a worker to one claim and its batch: at most
		// the concurrency in effect, none while the run is paused.
		leave, err := w.ctl.gate.Enter(ctx, w.stop)
		if errors.Is(err, ErrGateStopped) {
			return nil
		}
		if err != nil {
			return err
		}
		more, err := w.turn(ctx, &failures, &first)
		leave()
		if err != nil || !more {
			if err == nil {
				w.stopOnce.Do(func() { close(w.stop) })
			}
			return err
		}
	}
}

// turn is one pass of a worker through the gate: a claim and its batch,
// or a look for work elsewhere. It reports whether the worker goes on.
//
// A worker's first claim takes one small slice rather than a batch of the
// largest (see checkpoint.BatchLimits.Smallest): on a large history a
// whole first window batch took seconds before the run's first commit.
func (w *workers) turn(ctx context.Context, failures *int, first *bool) (bool, error) {
	// --rate counts slices, not batches. The first slice's token is
	// taken before the claim, so a throttled worker holds no claim
	// while the bucket is empty; the batch's other slices take theirs
	// before it starts (with a rate, a batch holds at most --burst
	// slices, so the bucket can always cover it).
	if err := w.take(ctx, 1); err != nil {
		return false, err
	}
	if w.ctl.gate.Held() {
		return true, nil // paused (or held) while waiting for the token
	}
	limits := w.ctl.batchLimits()
	limits.Smallest = *first
	batch, err := w.claim(ctx, limits)
	if errors.Is(err, errHeldMeanwhile) {
		return true, nil
	}
	if err != nil && retryable(err) && ctx.Err() == nil && *failures+1 < w.e.cfg.MaxAttempts {
		*failures++
		w.e.cfg.Logger.Warn("claim failed; retrying", "attempt", *failures, "err", err)
		return true, sleep(ctx, backoff(w.e.cfg.Backoff, *failures))
	}
	if err != nil {
		return false, err
	}
	*failures = 0
	if batch != nil {
		*first = false
	}
	if batch == nil {
		more, err := w.workElsewhere(ctx)
		if err != nil || !more {
			return false, err
		}
		return true, w.planner.idle(ctx, pollInterval)
	}
	// A cancel while waiting hands the claimed batch back with the rest.
	if err := w.take(ctx, len(batch.Slices)-1); err != nil {
		return false, err
	}
	if err := w.batch(ctx, *batch); err != nil {
		return false, err
	}
	// The pause after a batch is taken inside the gate: a worker that
	// left it would hand its place to one of the spare workers at once,
	// and the pause would slow nothing down.
	return true, sleep(ctx, w.ctl.sleepBetween())
}

// take waits for n tokens of the rate limiter. The limiter refuses at once
// a wait that would outlast ctx's deadline; that ends here when the
// deadline does, so the run stops as interrupted, not failed.
func (w *workers) take(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	if b := w.limiter.Burst(); w.limiter.Limit() != rate.Inf && n > b {
		n = b // the burst was lowered after the claim: the bucket holds no more
	}
	err := w.limiter.WaitN(ctx, n)
	if _, hasDeadline := ctx.Deadline(); err != nil && ctx.Err() == nil && hasDeadline {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

// claim claims the next batch. The claim statement is never cut short
// by a cancel: a statement abandoned mid-way may still commit on the server
// after this process has handed its claims back, leaving them looking
// taken. A batch claimed just as the run was cancelled is returned with the
// cancellation, and handed back with the rest.
func (w *workers) claim(ctx context.Context, limits checkpoint.BatchLimits) (*shard.Batch, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	c, leave := w.enter() // waits out a yield of the cron lock
	defer leave()
	if w.ctl.gate.Held() {
		return nil, errHeldMeanwhile
	}
	batch, err := w.e.store.Claim(cctx, w.runID, c, limits, w.e.cfg.Lease)
	if err == nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return batch, err
}

// workElsewhere reports whether this idle worker should wait: slices are
// unfinished but claimed by other processes, which may yet abandon them.
// Slices in flight in this process need no waiting for: their workers see
// them through.
func (w *workers) workElsewhere(ctx context.Context) (bool, error) {
	return w.e.store.WorkElsewhere(ctx, w.runID, w.claimant.Owner)
}

// batch runs one claimed batch to an end: done, failed, or lost. Only an
// error that stops the whole process (cancel, lost lock, checkpoint
// unreachable) is returned.
func (w *workers) batch(ctx context.Context, batch shard.Batch) error {
	cfg := w.e.cfg
	for attempt := 1; ; attempt++ {
		start := time.Now()
		rows, left, err := w.execute(ctx, batch)
		took := time.Since(start)
		switch {
		case err == nil && left != nil:
			// A SliceRunner's one slice, handed back for later (rows of it
			// were locked) or failed by the stall guard; what it changed
			// is committed either way.
			w.rows.Add(rows)
			kind := SliceRetry
			if errors.Is(left, checkpoint.ErrStalled) {
				kind = SliceFailed
				w.failures.add(batch.Slices[0], attempt, left)
			}
			w.emit(Event{Kind: kind, Slice: batch.Slices[0], Duration: took, Rows: rows, Err: left})
			return nil
		case err == nil:
			w.executed.Add(int64(len(batch.Slices)))
			w.rows.Add(rows)
			for i, sl := range batch.Slices {
				ev := Event{Kind: SliceDone, Slice: sl, Duration: took, Rows: rows}
				if i == 0 {
					ev.BatchSlices = len(batch.Slices) // the batch is reported once
				}
				w.emit(ev)
				rows = 0 // the batch's rows are reported once
			}
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, checkpoint.ErrLostClaim):
			cfg.Logger.Warn("claim taken over by another worker; dropping it", "batch", batch.String())
			if err := w.e.store.ReleaseBatch(ctx, batch, cfg.Owner); err != nil {
				return fmt.Errorf("hand back the rest of %s: %w", batch, err)
			}
			for _, sl := range batch.Slices {
				w.emit(Event{Kind: SliceLost, Slice: sl, Duration: took, Err: err})
			}
			return nil
		case errors.Is(err, checkpoint.ErrSuperseded):
			return err
		case errors.Is(err, checkpoint.ErrNotProtected):
			return fmt.Errorf("%w: %w", ErrLockLost, err)
		case errors.Is(err, checkpoint.ErrLockContended):
			// A session waits for the cron lock exclusively, and this
			// process yields to it: try again after, without counting
			// the attempt. Lock contention never fails a slice.
			attempt--
			if err := w.lock.contended(ctx); err != nil {
				return err
			}
		case retryable(err) && attempt < cfg.MaxAttempts:
			delay := backoff(cfg.Backoff, attempt)
			cfg.Logger.Warn("transient error; retrying", "batch", batch.String(), "attempt", attempt, "in", delay, "err", err)
			for _, sl := range batch.Slices {
				w.emit(Event{Kind: SliceRetry, Slice: sl, Duration: took, Err: err})
			}
			if err := sleep(ctx, delay); err != nil {
				return err
			}
		case len(batch.Slices) > 1:
			// Find the culprit: run the slices one by one, so only the
			// slice that cannot be done is marked failed.
			cfg.Logger.Warn("batch failed; retrying its slices one by one", "batch", batch.String(), "err", err)
			for _, sl := range batch.Slices {
				single, _ := shard.NewBatch([]shard.Slice{sl})
				if err := w.batch(ctx, single); err != nil {
					return err
				}
			}
			return nil
		default:
			sl := batch.Slices[0]
			w.failures.add(sl, attempt, err) // one ERROR line per cause, then counts
			err = fmt.Errorf("%s: %w", sl, err)
			w.emit(Event{Kind: SliceFailed, Slice: sl, Duration: took, Err: err})
			if ferr := w.e.store.Fail(ctx, sl, cfg.Owner, err); ferr != nil {
				return fmt.Errorf("record failure of %s: %w", sl, ferr)
			}
			return nil
		}
	}
}

// execute replaces a batch's rollup rows and marks its slices done in one
// transaction, fenced by the claim and the cron lock (checkpoint.Fenced
// keeps the order). The whole transaction but its COMMIT travels in one
// round trip.
//
// left is nil unless a SliceRunner's slice was left unfinished: handed
// back for later, or failed by the stall guard (checkpoint.ErrStalled).
func (w *workers) execute(ctx context.Context, batch shard.Batch) (rows int64, left error, err error) {
	c, leave := w.enter() // waits out a yield of the cron lock
	defer leave()
	if r, ok := w.e.job.(SliceRunner); ok {
		return w.run(ctx, r, batch.Slices[0], c)
	}
	stmts := w.e.store.Fenced(batch, c, txSettings(w.e.cfg), func(tx *pgx.Batch) {
		w.e.job.(Queuer).Queue(tx, batch, &rows)
	})
	br := w.e.db.SendBatch(ctx, stmts)
	tx := br.Tx()
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // no-op after a commit
	}()
	if err := br.Close(); err != nil {
		return 0, nil, err
	}
	return rows, nil, tx.Commit(ctx)
}

// run does a SliceRunner's slice (its batches hold one: a job file's
// slices have no window to share) in its fenced transaction.
func (w *workers) run(ctx context.Context, r SliceRunner, sl shard.Slice, c checkpoint.Claimant) (rows int64, left error, err error) {
	var v checkpoint.Verdict
	stalled, err := w.e.store.RunFenced(ctx, sl, c, txSettings(w.e.cfg), func(tx pgx.Tx) (checkpoint.Verdict, error) {
		var err error
		v, rows, err = r.RunSlice(ctx, tx, sl)
		return v, err
	})
	switch {
	case err != nil:
		return 0, nil, err
	case stalled:
		return rows, fmt.Errorf("%s: %w: %s", sl, checkpoint.ErrStalled, v.Why), nil
	case !v.Done:
		return rows, fmt.Errorf("%s: handed back for later: %s", sl, v.Why), nil
	}
	return rows, nil, nil
}

// txSettings are the settings local to a slice transaction. A commit lost
// to synchronous_commit = off only means its slices are redone (their done
// marks are lost with their rows), and the watermark stamp is a durable
// commit that flushes every earlier one. Parallel query is off because the
// pool already keeps the cores busy, JIT because its compile time dwarfs a
// slice's run time. work_mem lets a batch sort and hash in memory. A
// transaction left idle (its process stalled or cut off by a network
// partition between the batch and its COMMIT) would keep its row locks
// until TCP keepalive gives up; the server ends it after a lease instead,
// when its slices are someone else's anyway.
func txSettings(cfg Config) map[string]string {
	settings := map[string]string{
		"synchronous_commit": "off", "max_parallel_workers_per_gather": "0", "jit": "off", "work_mem": "64MB",
		"idle_in_transaction_session_timeout": fmt.Sprintf("%dms", cfg.Lease.Milliseconds()),
	}
	for name, d := range map[string]time.Duration{"statement_timeout": cfg.StatementTimeout, "lock_timeout": cfg.LockTimeout} {
		if d > 0 {
			settings[name] = pgMillis(d) // rounded up: never 0 (no timeout)
		}
	}
	return settings
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
		if err := w.e.store.Renew(ctx, w.runID, w.claimant.Owner, w.e.cfg.Lease); err != nil && ctx.Err() == nil {
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
