package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// slowJob makes every batch take at least 50 ms on the server, so a run
// lasts long enough for another process to act beside it.
type slowJob struct{ *sqljob.Batched }

func (s *slowJob) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	tx.Queue(`SELECT pg_sleep(0.05)`)
	s.Batched.Queue(tx, batch, written)
}

// startSlowRun starts a slow one-slice-per-batch run on url in the
// background, waits until it has committed a few slices, and returns its
// outcome channel.
func startSlowRun(t *testing.T, url string) <-chan error {
	t.Helper()
	var done atomic.Int64
	working := make(chan struct{})
	var once sync.Once
	e := testenv.Engine(t, url, &slowJob{testenv.Rollup(t, testenv.Pool(t, url))}, engine.Config{Concurrency: 1, BatchSlices: 1, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceDone && done.Add(1) == 3 {
			once.Do(func() { close(working) })
		}
	}})
	end := make(chan error, 1)
	go func() {
		_, err := e.Run(context.Background())
		end <- err
	}()
	select {
	case <-working:
	case err := <-end:
		t.Fatalf("the slow run ended before it was under way: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the slow run did not get under way")
	}
	return end
}

// --new-run beside a process still working on the current run is refused
// unless forced; forced, the old process stops within seconds with a
// clear error, the new run ends done without a failed slice, and the
// rollup equals the oracle.
func TestNewRunSupersedesALiveRunOnlyWithForce(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	old := startSlowRun(t, url)

	_, err := testenv.Engine(t, url, nil, engine.Config{NewRun: true}).Run(context.Background())
	var cfgErr *engine.ConfigError
	if !errors.As(err, &cfgErr) || !strings.Contains(cfgErr.Error(), "Force") {
		t.Fatalf("--new-run beside a live process: %v, want a refusal that names Force", err)
	}

	res, err := testenv.Engine(t, url, nil, engine.Config{NewRun: true, Force: true}).Run(context.Background())
	if err != nil {
		t.Fatalf("forced new run: %v", err)
	}
	if res.Outcome.State != checkpoint.StateDone || res.Outcome.Counts.Failed != 0 {
		t.Fatalf("forced new run ended %s with %d failed slices", res.Outcome.State, res.Outcome.Counts.Failed)
	}
	select {
	case err := <-old:
		if !errors.Is(err, checkpoint.ErrSuperseded) {
			t.Fatalf("the superseded process ended with %v, want ErrSuperseded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the superseded process still works 10 s after the new run ended")
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// A backfill of another checkpoint schema on the same rollup is refused
// while one works; verify --repair is refused beside a live run.
func TestSecondSchemaAndRepairRefusedBesideALiveRun(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	first := startSlowRun(t, url)

	other, err := engine.New(testenv.Pool(t, url), "second_schema", testenv.Rollup(t, testenv.Pool(t, url)), &engine.Config{Logger: testenv.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Run(context.Background())
	var cfgErr *engine.ConfigError
	if !errors.As(err, &cfgErr) || !strings.Contains(cfgErr.Error(), "Schema") {
		t.Fatalf("a run in a second schema beside a live one: %v, want a refusal that names Schema", err)
	}

	_, err = testenv.Engine(t, url, nil, engine.Config{}).Verify(context.Background(), true)
	if !errors.As(err, &cfgErr) {
		t.Fatalf("verify --repair beside a live run: %v, want a refusal", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the first run: %v", err)
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// PostgreSQL truncates names to 63 bytes: two long schema names could
// share one set of checkpoint tables.
func TestLongSchemaNameRefused(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, nil)
	_, err := engine.New(testenv.Pool(t, url), strings.Repeat("s", 64), testenv.Rollup(t, testenv.Pool(t, url)), nil)
	var cfgErr *engine.ConfigError
	if !errors.As(err, &cfgErr) {
		t.Fatalf("a 64-byte schema name: %v, want a refusal", err)
	}
	if _, err := engine.New(testenv.Pool(t, url), strings.Repeat("s", 63), testenv.Rollup(t, testenv.Pool(t, url)), nil); err != nil {
		t.Fatalf("a 63-byte schema name: %v", err)
	}
}

// Several processes finishing one run together: one stamps, and none of
// the others claims the watermark was not stamped.
func TestOnlyTheStamperStampsAndNobodyCriesWolf(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	const processes = 3
	results := make([]*engine.Result, processes)
	var wg sync.WaitGroup
	for i := range processes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := testenv.Engine(t, url, nil, engine.Config{Concurrency: 1, BatchSlices: 1}).Run(context.Background())
			if err != nil {
				t.Errorf("process %d: %v", i, err)
			}
			results[i] = res
		}()
	}
	wg.Wait()
	stampers := 0
	for i, res := range results {
		if res == nil {
			continue
		}
		if res.Outcome.Stamped && res.Outcome.Closed {
			stampers++
		}
		if res.Outcome.State == checkpoint.StateDone && !res.Outcome.Stamped {
			t.Errorf("process %d reports the run done but the watermark not stamped", i)
		}
	}
	if stampers != 1 {
		t.Errorf("%d processes stamped, want exactly 1", stampers)
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// slowPlanJob's planning takes a minute: long enough for a test to lose
// the lock connection in the middle of it.
type slowPlanJob struct{ *sqljob.Batched }

// Pieces plans the rollup's months, each piece's query slowed by a minute.
func (s *slowPlanJob) Pieces(pieceRows int64) checkpoint.Pieces {
	m := s.Batched.Pieces(pieceRows).(checkpoint.MonthPieces)
	plan := m.Plan
	m.Plan = func(from, to pgtype.Timestamptz, sliceRows int64) (string, []any) {
		sql, args := plan(from, to, sliceRows)
		return `SELECT p.* FROM (` + sql + `) p CROSS JOIN (SELECT pg_sleep(60)) s`, args
	}
	return m
}

// The lock connection is watched from the moment the lock is taken, during
// planning too: should it die there, the run stops within seconds with the
// lock lost, rather than plan on (and work) unprotected.
func TestLockWatchedDuringPlanning(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	e := testenv.Engine(t, url, &slowPlanJob{testenv.Rollup(t, pool)}, engine.Config{})
	end := make(chan error, 1)
	go func() {
		_, err := e.Run(context.Background())
		end <- err
	}()
	// The planning statement runs on a pool connection (its text is cut
	// short in pg_stat_activity, so it is found by what it waits for); the
	// lock connection is the one holding the cron lock, idle in its
	// transaction.
	var lockPID int
	deadline := time.Now().Add(30 * time.Second)
	for lockPID == 0 && time.Now().Before(deadline) {
		_ = pool.QueryRow(context.Background(), `SELECT l.pid FROM pg_locks l
			WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = 4246 AND l.objsubid = 1 AND l.granted
			  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND EXISTS (SELECT FROM pg_stat_activity a WHERE a.wait_event = 'PgSleep' AND a.state = 'active' AND a.datname = current_database())`).Scan(&lockPID)
		time.Sleep(50 * time.Millisecond)
	}
	if lockPID == 0 {
		t.Fatal("never saw the run planning while holding the cron lock")
	}
	if _, err := pool.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, lockPID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-end:
		if !errors.Is(err, engine.ErrLockLost) {
			t.Fatalf("run after its lock connection died mid-planning: %v, want ErrLockLost", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the run still plans 15 s after its lock connection died")
	}
	if !testenv.TryCronLock(t, url) {
		t.Error("the cron lock is still held after the run stopped")
	}
}

// --sleep-between-slices pauses each worker after each batch: a process of
// one worker spends at least that pause per batch, however many spare
// workers wait at the gate for a raised concurrency.
func TestSleepBetweenSlicesSlowsEveryWorker(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	const pause = 20 * time.Millisecond
	var batches atomic.Int64
	start := time.Now()
	res := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 1, BatchSlices: 1, SleepBetweenSlices: pause,
		OnEvent: func(ev engine.Event) {
			if ev.Kind == engine.SliceDone {
				batches.Add(1)
			}
		}}))
	if took, least := time.Since(start), time.Duration(batches.Load()-1)*pause; took < least {
		t.Fatalf("%d one-slice batches by one worker took %s, less than their pauses alone (%s)", batches.Load(), took, least)
	}
	if res.Outcome.State != checkpoint.StateDone {
		t.Fatalf("run ended %s", res.Outcome.State)
	}
}
