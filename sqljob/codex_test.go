package sqljob_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// codexDB is a history whose openai rows are codex ones, with its rollup
// built, and the cutoff of a repair: the middle of the history.
func codexDB(t *testing.T) (url string, cutoff time.Time) {
	t.Helper()
	gen := fixture.Config{Seed: 5, Workspaces: 20, Months: 4, Rows: 6000, Skew: 1.1}
	url = testenv.DB(t, &gen)
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	n, err := fixture.MakeCodex(ctx, pool)
	if err != nil || n == 0 {
		t.Fatalf("codex rows: %d, %v", n, err)
	}
	if _, err := testenv.Engine(t, url, nil, engine.Config{Concurrency: 2}).Run(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.RequireOracle(t, pool)
	cutoff = gen.WithDefaults().Start().AddDate(0, 2, 0)
	// What the repair must do: the eligible rows, with the value each must
	// end with, and every other row as it is.
	_, err = pool.Exec(ctx, `
		CREATE TABLE codex_want AS
		SELECT id, GREATEST(input_tokens - cache_read_tokens, 0) AS input_tokens
		FROM task_usage WHERE provider = 'codex' AND cache_read_tokens > 0 AND input_tokens > 0
		  AND COALESCE(updated_at, created_at) < $1`, cutoff)
	if err == nil {
		_, err = pool.Exec(ctx, `CREATE TABLE codex_keep AS
			SELECT id, input_tokens, updated_at FROM task_usage WHERE id NOT IN (SELECT id FROM codex_want)`)
	}
	if err != nil {
		t.Fatal(err)
	}
	return url, cutoff
}

// requireRepaired checks the repair's oracle: every eligible row repaired
// once (its updated_at moved past the cutoff), every other row untouched,
// and the rollup equal to the raw rows.
func requireRepaired(t *testing.T, url string) {
	t.Helper()
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	var wrong, touched, eligible int64
	err := pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM codex_want w JOIN task_usage u USING (id)
		        WHERE u.input_tokens <> w.input_tokens OR u.updated_at < now() - interval '1 hour'),
		       (SELECT count(*) FROM codex_keep k JOIN task_usage u USING (id)
		        WHERE u.input_tokens <> k.input_tokens OR u.updated_at IS DISTINCT FROM k.updated_at),
		       (SELECT count(*) FROM codex_want)`).Scan(&wrong, &touched, &eligible)
	if err != nil {
		t.Fatal(err)
	}
	if eligible == 0 || wrong > 0 || touched > 0 {
		t.Fatalf("repair: %d eligible rows, %d not repaired as they must be, %d others touched", eligible, wrong, touched)
	}
	testenv.RequireOracle(t, pool)
}

// The Codex repair rewrites every eligible row once and rebuilds the
// buckets they feed in the same transaction: the rollup equals the raw
// rows after every slice commit sampled during the run, and at the end.
// A second run repairs nothing twice.
func TestCodexUsageCacheExact(t *testing.T) {
	t.Parallel()
	url, cutoff := codexDB(t)
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	f := shipped(t, "codex-usage-cache")
	params := map[string]string{"cutoff": cutoff.Format(time.RFC3339)}

	var mu sync.Mutex
	var sampled, stale int
	cfg := engine.Config{Concurrency: 3, OnEvent: func(ev engine.Event) {
		if ev.Kind != engine.SliceDone {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if sampled++; sampled%4 != 1 {
			return
		}
		if _, total, err := fixture.Diff(ctx, pool, 1); err != nil || total > 0 {
			stale++
			t.Errorf("after %d slices the rollup differs from the raw rows in %d keys (%v)", sampled, total, err)
		}
	}}
	e := testenv.Engine(t, url, open(t, url, f, params), cfg)
	res, err := e.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Run.SlicesTotal < 10 || sampled < 10 {
		t.Fatalf("%d slices, %d done events: the history should give the repair many (workspace, day) slices", res.Run.SlicesTotal, sampled)
	}
	requireRepaired(t, url)

	again := testenv.Engine(t, url, open(t, url, f, params), engine.Config{Concurrency: 2, NewRun: true})
	res, err = again.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Run.SlicesTotal != 0 || res.RowsWritten != 0 {
		t.Fatalf("a second run planned %d slices and changed %d rows; want none", res.Run.SlicesTotal, res.RowsWritten)
	}
	requireRepaired(t, url)
}

// Two different jobs run at the same time when their locks allow it (the
// issue last-activity job beside the rollup), and both end exact; a job
// that writes a table another job is writing (the Codex repair beside the
// rollup) is refused while that one works.
func TestTwoJobsAtOnce(t *testing.T) {
	t.Parallel()
	gen := fixture.Config{Seed: 9, Workspaces: 20, Months: 4, Rows: 8000, Skew: 1.1}
	url := testenv.DB(t, &gen)
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	if err := fixture.SeedIssues(ctx, pool, issueWorkspace, 20_000); err != nil {
		t.Fatal(err)
	}
	kept, err := fixture.KeptActivity(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.MakeCodex(ctx, pool); err != nil {
		t.Fatal(err)
	}

	// The rollup works slowly enough for the others to start beside it.
	started := make(chan struct{})
	var once sync.Once
	rollup := testenv.Engine(t, url, nil, engine.Config{Concurrency: 1, BatchSlices: 1, SleepBetweenSlices: 20 * time.Millisecond,
		OnEvent: func(ev engine.Event) {
			if ev.Kind == engine.SliceDone {
				once.Do(func() { close(started) })
			}
		}})
	issues := testenv.Engine(t, url, open(t, url, shipped(t, "issue-last-activity"), nil), engine.Config{Concurrency: 2})
	codex := testenv.Engine(t, url, open(t, url, shipped(t, "codex-usage-cache"),
		map[string]string{"cutoff": gen.WithDefaults().Start().AddDate(0, 2, 0).Format(time.RFC3339)}), engine.Config{Concurrency: 1})

	rollupDone := make(chan error, 1)
	go func() {
		_, err := rollup.Run(ctx)
		rollupDone <- err
	}()
	<-started
	if _, err := codex.Run(ctx); err == nil || !strings.Contains(err.Error(), "another job is writing a table") {
		t.Fatalf("the Codex repair beside the rollup: %v; want it refused", err)
	}
	res, err := issues.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-rollupDone:
		t.Fatal("the rollup ended before the issue job: the two did not overlap")
	default:
	}
	if res.Outcome.State != "done" {
		t.Fatalf("issue job ended %s", res.Outcome.State)
	}
	if err := <-rollupDone; err != nil {
		t.Fatal(err)
	}
	requireIssues(t, url, kept)
	testenv.RequireOracle(t, pool)
}
