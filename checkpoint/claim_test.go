package checkpoint_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Workers that all claim at the same moment (a pool starting, or several
// processes started together) each get whole windows: no window is split
// between two batches, which would make both read all of it.
func TestSimultaneousClaimsDoNotSplitWindows(t *testing.T) {
	t.Parallel()
	pool, store, pid := claimSetup(t)
	// The race is a matter of timing: several fresh runs give it several
	// chances to show.
	for range 4 {
		run, windows, batches := claimAllAtOnce(t, pool, store, pid, checkpoint.BatchLimits{Rows: 1 << 40, Slices: 1 << 20})
		seen := map[[2]time.Time]int{}
		slices := 0
		for _, b := range batches {
			lo, hi := b.Bounds()
			seen[[2]time.Time{lo.UTC(), hi.UTC()}]++
			slices += len(b.Slices)
		}
		for w, n := range seen {
			if n > 1 {
				t.Errorf("window %s..%s was split into %d batches", w[0].Format(time.DateOnly), w[1].Format(time.DateOnly), n)
			}
		}
		if len(seen) != windows || int64(slices) != run.SlicesTotal {
			t.Fatalf("claimed %d slices in %d windows; the run has %d slices in %d windows", slices, len(seen), run.SlicesTotal, windows)
		}
	}
}

// Claims of one slice each do not take turns (they cannot split a
// window); racing, they still never hand one slice to two workers.
func TestSimultaneousSingleClaimsTakeEachSliceOnce(t *testing.T) {
	t.Parallel()
	pool, store, pid := claimSetup(t)
	for range 4 {
		run, _, batches := claimAllAtOnce(t, pool, store, pid, checkpoint.BatchLimits{Rows: 1 << 40, Slices: 1})
		owners := map[int64]int{}
		for _, b := range batches {
			if len(b.Slices) != 1 {
				t.Fatalf("a claim limited to one slice took %d", len(b.Slices))
			}
			owners[b.Slices[0].ID]++
		}
		for id, n := range owners {
			if n > 1 {
				t.Errorf("slice %d was claimed %d times", id, n)
			}
		}
		if int64(len(owners)) != run.SlicesTotal {
			t.Fatalf("claimed %d distinct slices; the run has %d", len(owners), run.SlicesTotal)
		}
	}
}

// claimSetup gives the claim tests a small history, a checkpoint store and
// the pid of a connection holding the cron lock: the workers' claims name
// it, as the engine's do, or their slices would look abandoned at once.
func claimSetup(t *testing.T) (*pgxpool.Pool, *checkpoint.Store, int) {
	t.Helper()
	ctx := context.Background()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url+"&pool_max_conns=16")
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	lockConn := testenv.Conn(t, url)
	if _, err := lockConn.Exec(ctx, `SELECT pg_advisory_lock_shared(4246)`); err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return pool, store, int(lockConn.PgConn().PID())
}

// newRun plans a fresh run of the rollup with small windows.
func newRun(t *testing.T, pool *pgxpool.Pool, store *checkpoint.Store) *checkpoint.Run {
	t.Helper()
	j := testenv.Rollup(t, pool)
	run, _, err := store.Start(context.Background(), checkpoint.PlanSpec{Pieces: j.Pieces(0), MaxSliceRows: 500, LogicVersion: j.Version(), NewRun: true})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// claimAllAtOnce plans a new run and has 16 workers claim all of it within
// limits, starting together. It returns the run, its number of windows and
// every batch claimed.
func claimAllAtOnce(t *testing.T, pool *pgxpool.Pool, store *checkpoint.Store, pid int, limits checkpoint.BatchLimits) (*checkpoint.Run, int, []shard.Batch) {
	t.Helper()
	ctx := context.Background()
	run := newRun(t, pool, store)
	var windows int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT (from_ts, to_ts)) FROM shardfill.slice WHERE run_id = $1`, run.ID).Scan(&windows); err != nil {
		t.Fatal(err)
	}
	if windows < 8 {
		t.Fatalf("the plan has %d windows; the test needs at least 8", windows)
	}

	const workers = 16
	var (
		mu      sync.Mutex
		batches []shard.Batch
		start   = make(chan struct{})
		wg      sync.WaitGroup
		errs    = make(chan error, workers)
	)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				b, err := store.Claim(ctx, run.ID, checkpoint.Claimant{Owner: fmt.Sprintf("w%d", i), PID: pid}, limits, time.Hour)
				if err != nil {
					errs <- err
					return
				}
				if b == nil {
					return
				}
				mu.Lock()
				batches = append(batches, *b)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return run, windows, batches
}

// Migrate completes a checkpoint schema made by an older version (here:
// without the per-workspace and per-window totals), and leaves a complete
// one alone.
func TestMigrateAddsMissingColumns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t, testenv.DB(t, nil))
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE shardfill.slice DROP COLUMN ws_rows, DROP COLUMN window_rows;
		DROP INDEX shardfill.slice_failed_idx`); err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	err := pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = 'shardfill.slice'::regclass
		        AND attname IN ('ws_rows', 'window_rows') AND NOT attisdropped)
		     + (to_regclass('shardfill.slice_failed_idx') IS NOT NULL)::int`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("after Migrate on an old schema: %d of the 2 columns and 1 index present", n)
	}
}

// The watermark stamp is fenced like a slice commit: a claimant whose lock
// connection no longer holds the cron lock cannot stamp, and the run stays
// open for a process that does.
func TestStampIsFencedByTheCronLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, store, pid := claimSetup(t)
	run := newRun(t, pool, store)
	if _, err := pool.Exec(ctx, `UPDATE shardfill.slice SET state = 'done' WHERE run_id = $1`, run.ID); err != nil {
		t.Fatal(err)
	}
	stamps := 0
	stamp := func(context.Context, pgx.Tx, time.Time) (bool, error) { stamps++; return true, nil }

	out, err := store.Finish(ctx, run.ID, checkpoint.Claimant{Owner: "gone", PID: pid + 100000}, stamp)
	if !errors.Is(err, checkpoint.ErrNotProtected) || stamps != 0 {
		t.Fatalf("finish without the cron lock: %v, %d stamps; want ErrNotProtected and none", err, stamps)
	}
	if got, err := store.GetRun(ctx, run.ID); err != nil || got.State == checkpoint.StateDone {
		t.Fatalf("run after a refused stamp: %+v (%v), want it still open", got, err)
	}
	out, err = store.Finish(ctx, run.ID, checkpoint.Claimant{Owner: "live", PID: pid}, stamp)
	if err != nil || !out.Stamped || !out.Closed || stamps != 1 {
		t.Fatalf("finish with the cron lock: %+v, %v, %d stamps; want one stamp", out, err, stamps)
	}
}

// A worker's first claim (Smallest) takes one slice, the smallest of the
// piece planned: not the largest first, nor a batch of its window.
func TestFirstClaimTakesTheSmallestSlice(t *testing.T) {
	t.Parallel()
	pool, store, pid := claimSetup(t)
	ctx := context.Background()
	run := newRun(t, pool, store)
	var smallest, largest int64
	if err := pool.QueryRow(ctx, `SELECT min(est_rows), max(est_rows) FROM shardfill.slice WHERE run_id = $1`, run.ID).Scan(&smallest, &largest); err != nil {
		t.Fatal(err)
	}
	if smallest == largest {
		t.Fatalf("every slice holds %d rows; the test needs slices of several sizes", smallest)
	}
	c := checkpoint.Claimant{Owner: "w", PID: pid}
	b, err := store.Claim(ctx, run.ID, c, checkpoint.BatchLimits{Rows: 1 << 40, Slices: 100, Smallest: true}, time.Hour)
	if err != nil || b == nil {
		t.Fatalf("claim: %v %v", b, err)
	}
	if len(b.Slices) != 1 || b.Slices[0].EstRows != smallest {
		t.Fatalf("the first claim took %d slices (first of %d rows); want the one smallest (%d rows)", len(b.Slices), b.Slices[0].EstRows, smallest)
	}
	b, err = store.Claim(ctx, run.ID, c, checkpoint.BatchLimits{Rows: 1 << 40, Slices: 100}, time.Hour)
	if err != nil || b == nil {
		t.Fatalf("the next claim: %v %v", b, err)
	}
	var most int64
	for _, sl := range b.Slices {
		most = max(most, sl.EstRows)
	}
	if most != largest {
		t.Fatalf("the next claim's largest slice holds %d rows; want the run's largest (%d) first", most, largest)
	}
}
