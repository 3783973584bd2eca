package checkpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shardfill/shardfill/checkpoint"
)

// A pause of less than a millisecond is stored rounded up, as the
// timeouts are, in the control record and in the registry: never as none.
func TestSleepStoredRoundedUp(t *testing.T) {
	t.Parallel()
	pool, store, pid := claimSetup(t)
	ctx := context.Background()
	run := newRun(t, pool, store)
	d := 500 * time.Microsecond
	ctl, err := store.SetLimits(ctx, run.ID, checkpoint.Limits{SleepBetweenSlices: &d}, "tester")
	if err != nil {
		t.Fatal(err)
	}
	if got := ctl.Limits.SleepBetweenSlices; got == nil || *got != time.Millisecond {
		t.Fatalf("set 500µs: stored %v, want 1ms", got)
	}
	if err := store.Acknowledge(ctx, run.ID, checkpoint.Process{Owner: "p", LockPID: pid, SleepBetweenSlices: d,
		State: checkpoint.ProcessWorking}); err != nil {
		t.Fatal(err)
	}
	procs, err := store.Processes(ctx, run.ID)
	if err != nil || len(procs) != 1 || procs[0].SleepMS != 1 {
		t.Fatalf("registry with a 500µs pause: %+v, %v; want one process at 1 ms", procs, err)
	}
}

// The ETA is the time left at the pace in force, not at the limits
// configured: with the health throttle at 2 slices/s of a configured 20,
// the unfinished slices take at least their number / 2 seconds, however
// fast the last rows went. While every live process is held the ETA
// is no number, and throttle_reason says why.
func TestETAUsesThePaceInForceAndSaysHeld(t *testing.T) {
	t.Parallel()
	pool, store, pid := claimSetup(t)
	ctx := context.Background()
	run := newRun(t, pool, store)
	// Half the slices done since the process started: a torrent of rows
	// per second.
	done := func() {
		t.Helper()
		if _, err := pool.Exec(ctx, `UPDATE shardfill.slice SET state = 'done', started_at = now(), finished_at = now()
			WHERE run_id = $1 AND id <= (SELECT min(id) + count(*) / 2 FROM shardfill.slice WHERE run_id = $1)`, run.ID); err != nil {
			t.Fatal(err)
		}
	}
	ack := func(state checkpoint.ProcessState, reason string) {
		t.Helper()
		conc, eff := 2, 2.0
		if err := store.Acknowledge(ctx, run.ID, checkpoint.Process{Owner: "p", LockPID: pid, Rate: 20, Burst: 1, Concurrency: 4,
			State: state, Reason: &reason, EffectiveConcurrency: &conc, EffectiveRate: &eff}); err != nil {
			t.Fatal(err)
		}
	}
	ack(checkpoint.ProcessWorking, "replica lag 42s on standby x > 30s")
	done()
	st, err := store.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	unfinished := float64(st.SlicesPending + st.SlicesRunning)
	if st.State != checkpoint.StateRunning || len(st.Processes) != 1 || unfinished < 10 || st.RowsPerSecond <= 0 {
		t.Fatalf("status: state %s, %d processes, %v unfinished slices, %.0f rows/s", st.State, len(st.Processes), unfinished, st.RowsPerSecond)
	}
	if st.ETASeconds == nil || *st.ETASeconds < unfinished/2 {
		t.Fatalf("eta %v with %v slices left at 2 slices/s (throttled from 20): want at least %v s", ptr(st.ETASeconds), unfinished, unfinished/2)
	}

	ack(checkpoint.ProcessHeld, "VACUUM of task_usage_hourly in progress")
	if st, err = store.Status(ctx, run); err != nil {
		t.Fatal(err)
	}
	if st.ETASeconds != nil || st.ThrottleReason == nil || *st.ThrottleReason != "VACUUM of task_usage_hourly in progress" {
		t.Fatalf("held: eta %v, throttle reason %v; want no eta and the reason", ptr(st.ETASeconds), ptr(st.ThrottleReason))
	}
}

// The ETA is the workers' pace while they work, not the wall pace: a
// run whose two workers each took 1 s per batch, with 18 s between the two
// batches (waiting for planning's next piece, say), has 2 × (rows / 2 s)
// per second ahead of it, not rows / 20 s.
func TestETAIsTheWorkersPace(t *testing.T) {
	t.Parallel()
	pool, store, run := workingRun(t)
	ctx := context.Background()
	// Two batches of a third of the slices each (by id), one finished 19 s
	// ago, one now, each after a second's work.
	var rows int64
	if err := pool.QueryRow(ctx, `
		WITH n AS (SELECT min(id) AS lo, count(*) / 3 AS third FROM shardfill.slice WHERE run_id = $1),
		     d AS (UPDATE shardfill.slice s
		           SET state = 'done', owner = 'p',
		               started_at = CASE WHEN s.id < n.lo + n.third THEN now() - interval '20 s' ELSE now() - interval '1 s' END,
		               finished_at = CASE WHEN s.id < n.lo + n.third THEN now() - interval '19 s' ELSE now() END
		           FROM n WHERE s.run_id = $1 AND s.id < n.lo + 2 * n.third
		           RETURNING s.est_rows)
		SELECT sum(est_rows) FROM d`, run.ID).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE shardfill.process SET started_at = now() - interval '30 s' WHERE run_id = $1`, run.ID); err != nil {
		t.Fatal(err)
	}
	st, err := store.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	left := float64(run.RowsTotal - rows)
	if st.RowsDone != rows || left <= 0 || st.ETASeconds == nil {
		t.Fatalf("status: %d rows done (want %d) of %d, eta %v", st.RowsDone, rows, run.RowsTotal, ptr(st.ETASeconds))
	}
	// The wall pace: the rows over the 20 s since the first batch began.
	if want := float64(rows) / 20; st.RowsPerSecond < 0.95*want || st.RowsPerSecond > 1.05*want {
		t.Fatalf("rate %.1f rows/s, want %.1f (the rows over 20 s)", st.RowsPerSecond, want)
	}
	want := left / (float64(rows) / 2 * 2)
	if got := *st.ETASeconds; got < 0.9*want || got > 1.1*want {
		t.Fatalf("eta %.1f s, want %.1f s (%v rows left at two workers' %v rows per 2 s of work); the wall pace would say %.1f s",
			got, want, left, rows, left/st.RowsPerSecond)
	}
}

// workingRun plans a fresh run with one process working on it, with two
// workers.
func workingRun(t *testing.T) (*pgxpool.Pool, *checkpoint.Store, *checkpoint.Run) {
	t.Helper()
	pool, store, pid := claimSetup(t)
	run := newRun(t, pool, store)
	if err := store.Acknowledge(context.Background(), run.ID, checkpoint.Process{Owner: "p", LockPID: pid, Burst: 1, Concurrency: 2,
		State: checkpoint.ProcessWorking}); err != nil {
		t.Fatal(err)
	}
	return pool, store, run
}

func ptr[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// In a run's first seconds, with a few small slices done of many rows, the
// pace is no pace yet: status gives no ETA rather than one of years.
func TestNoETAFromTheFirstTinySlices(t *testing.T) {
	t.Parallel()
	pool, store, run := workingRun(t)
	ctx := context.Background()
	var rows int64
	if err := pool.QueryRow(ctx, `
		WITH d AS (UPDATE shardfill.slice SET state = 'done', started_at = clock_timestamp(), finished_at = clock_timestamp()
		           WHERE run_id = $1 AND id = (SELECT max(id) FROM shardfill.slice WHERE run_id = $1) RETURNING est_rows)
		SELECT est_rows FROM d`, run.ID).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows*100 >= run.RowsTotal {
		t.Fatalf("the smallest slice holds %d of %d rows; the test needs one under a hundredth", rows, run.RowsTotal)
	}
	st, err := store.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if st.RowsPerSecond <= 0 || st.ETASeconds != nil {
		t.Fatalf("%.1f rows/s after one small slice: eta %v, want none yet", st.RowsPerSecond, ptr(st.ETASeconds))
	}
}
