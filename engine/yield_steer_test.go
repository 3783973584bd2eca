package engine_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/throttle"
)

// waitFor polls cond every 50 ms until it holds, failing the test after
// within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
	}
}

// While a process yields the cron lock to the application's transaction
// it stays visible and steerable: status lists it, naming as its lock
// backend the one whose request is queued behind the application (the
// old one is gone); it keeps acknowledging the control record; the
// health throttle's hold, a pause and a set given meanwhile are
// acknowledged at once, not when the application lets go; its reason
// says it yields. Released, the run ends
// exact.
func TestYieldingProcessStaysSteerable(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	p := newProgress(t, url)
	cfg := slowRun
	cfg.OnEvent = p.onEvent
	// The health throttle, on the operator's own signal: a row here.
	if _, err := pool.Exec(ctx, `CREATE TABLE maintenance (reason text)`); err != nil {
		t.Fatal(err)
	}
	cfg.Health = throttle.Config{ThrottleQuery: `SELECT (SELECT reason FROM maintenance LIMIT 1)`, PollInterval: 200 * time.Millisecond}
	e := testenv.Engine(t, url, nil, cfg)
	ended := make(chan error, 1)
	go func() {
		_, err := e.Run(ctx)
		ended <- err
	}()
	<-p.at(5)

	// The application: a transaction that holds the lock exclusively
	// until the test commits it.
	app := testenv.Conn(t, url)
	if _, err := app.Exec(ctx, `SET application_name = 'app-delete'; SET lock_timeout = '10s'`); err != nil {
		t.Fatal(err)
	}
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(fixture.AppLockKey)); err != nil {
		t.Fatal(err)
	}
	held := true
	defer func() {
		if held {
			_ = tx.Rollback(ctx)
		}
	}()

	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	latest, err := store.LatestRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	status := func() *checkpoint.Status {
		t.Helper()
		st, err := store.Status(ctx, latest)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	queued := func(pid int) bool {
		var waiting bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND pid = $2 AND NOT granted)`,
			int64(fixture.AppLockKey), pid).Scan(&waiting)
		return err == nil && waiting
	}
	var st *checkpoint.Status
	waitFor(t, 2*engine.ControlInterval, "the yielding process listed, naming its queued lock backend", func() bool {
		st = status()
		return len(st.Processes) == 1 && queued(st.Processes[0].LockPID)
	})
	if st.YieldingTo == nil || st.YieldingTo.ApplicationName != "app-delete" || !st.YieldingTo.Granted {
		t.Fatalf("status while the application holds the lock: yielding to %+v", st.YieldingTo)
	}
	first := st.Processes[0].SeenAt
	waitFor(t, 2*engine.ControlInterval, "the yielding process acknowledging again", func() bool {
		st = status()
		return len(st.Processes) == 1 && st.Processes[0].SeenAt.After(first)
	})
	if r := st.Processes[0].Reason; r == nil || !strings.Contains(*r, "yielding the cron lock") {
		t.Errorf("the yielding process's reason: %v, want it to say it yields", r)
	}

	// The health throttle's news is acknowledged while yielding too.
	if _, err := pool.Exec(ctx, `INSERT INTO maintenance VALUES ('maintenance window')`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*engine.ControlInterval, "the health throttle's hold acknowledged while yielding", func() bool {
		st = status()
		return len(st.Processes) == 1 && st.Processes[0].Reason != nil && strings.Contains(*st.Processes[0].Reason, "maintenance window")
	})
	if _, err := pool.Exec(ctx, `DELETE FROM maintenance`); err != nil {
		t.Fatal(err)
	}

	// Steered while yielding: acknowledged at once.
	if _, err := store.SetPaused(ctx, latest.ID, true, "tester"); err != nil {
		t.Fatal(err)
	}
	rate := 50.0
	ctl, err := store.SetLimits(ctx, latest.ID, checkpoint.Limits{Rate: &rate}, "tester")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() && st != nil && len(st.Processes) > 0 {
			t.Logf("last seen: %+v", st.Processes[0])
		}
	}()
	waitFor(t, 2*engine.ControlInterval, "pause and set acknowledged while yielding", func() bool {
		st = status()
		// Pausing: workers wait out the yield inside the gate.
		return len(st.Processes) == 1 && st.Processes[0].ControlVersion == ctl.Version &&
			(st.Processes[0].State == checkpoint.ProcessPausing || st.Processes[0].State == checkpoint.ProcessPaused) &&
			st.Processes[0].Rate == rate
	})
	// Nothing is claimed once the yield ends: only the batches in flight
	// when the pause came (waiting out the yield in their fences) finish.
	var inFlight []int64
	rows, err := pool.Query(ctx, `SELECT id FROM shardfill.slice WHERE run_id = $1 AND state IN ('running', 'done')`, latest.ID)
	if err != nil {
		t.Fatal(err)
	}
	if inFlight, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	held = false
	waitFor(t, 3*engine.ControlInterval, "the process paused once the yield ended", func() bool {
		st = status()
		return len(st.Processes) == 1 && st.Processes[0].State == checkpoint.ProcessPaused && st.SlicesRunning == 0
	})
	var after int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM shardfill.slice WHERE run_id = $1 AND state IN ('running', 'done') AND id <> ALL ($2)`,
		latest.ID, inFlight).Scan(&after); err != nil || after != 0 {
		t.Fatalf("%d slices claimed after the yield though the run was paused during it (%v)", after, err)
	}
	if _, err := store.SetPaused(ctx, latest.ID, false, "tester"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("run after the yield: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the run did not end after the application let go")
	}
	p.requireCronStayedOut()
	testenv.RequireOracle(t, pool)
}
