package faults_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// slicesDone counts the done slices of the latest run of job.
func slicesDone(t *testing.T, url, job string) int64 {
	t.Helper()
	var n int64
	err := testenv.Pool(t, url).QueryRow(context.Background(), `
		SELECT count(*) FROM shardfill.slice s
		WHERE s.state = 'done' AND s.run_id = (SELECT max(id) FROM shardfill.run WHERE job = $1)`, job).Scan(&n)
	if err != nil {
		return 0 // the schema is not there yet
	}
	return n
}

// Each shipped job file survives kill -9 mid-run: the same command run
// again resumes the run and it ends exact by its oracle.
func TestKill9ResumesJobFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("issue-last-activity", func(t *testing.T) {
		t.Parallel()
		url := testenv.DB(t, nil)
		pool := testenv.Pool(t, url)
		if err := fixture.SeedIssues(ctx, pool, "00000000-0000-0000-0000-00000000c001", 40_000); err != nil {
			t.Fatal(err)
		}
		kept, err := fixture.KeptActivity(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		b := newBins(t, url)
		args := []string{"--job", "issue-last-activity", "--concurrency", "2"}
		victim := b.start(nil, append([]string{"run", "--no-progress", "--sleep-between-slices", "400ms"}, args...)...)
		waitFor(t, time.Minute, "a done slice", func() bool { return slicesDone(t, url, "issue-last-activity") >= 1 })
		victim.kill9(t)
		if slicesDone(t, url, "issue-last-activity") >= 7 {
			t.Fatal("the run ended before the kill")
		}
		b.mustRun(args...)
		bad, err := fixture.IssueDiff(ctx, pool, kept, 5)
		if err != nil || len(bad) > 0 {
			t.Fatalf("after kill -9 and resume: %v %v", bad, err)
		}
	})

	t.Run("codex-usage-cache", func(t *testing.T) {
		t.Parallel()
		gen := fixture.Config{Seed: 13, Workspaces: 20, Months: 4, Rows: 8000, Skew: 1.1}
		url := testenv.DB(t, &gen)
		pool := testenv.Pool(t, url)
		if _, err := fixture.MakeCodex(ctx, pool); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `CREATE TABLE codex_want_log (id uuid PRIMARY KEY, input_tokens bigint)`); err != nil {
			t.Fatal(err)
		}
		b := newBins(t, url)
		b.mustRun() // the rollup, which the repair keeps right
		cutoff := gen.WithDefaults().Start().AddDate(0, 2, 0).Format(time.RFC3339)
		var eligible int64
		err := pool.QueryRow(ctx, `WITH want AS (
			    INSERT INTO codex_want_log (id, input_tokens)
			    SELECT id, GREATEST(input_tokens - cache_read_tokens, 0) FROM task_usage
			    WHERE provider = 'codex' AND cache_read_tokens > 0 AND input_tokens > 0 AND COALESCE(updated_at, created_at) < $1
			    RETURNING 1)
			SELECT count(*) FROM want`, cutoff).Scan(&eligible)
		if err != nil || eligible == 0 {
			t.Fatalf("%d eligible rows (%v)", eligible, err)
		}
		args := []string{"--job", "codex-usage-cache", "--param", "cutoff=" + cutoff, "--concurrency", "2"}
		victim := b.start(nil, append([]string{"run", "--no-progress", "--sleep-between-slices", "300ms"}, args...)...)
		waitFor(t, time.Minute, "a done slice", func() bool { return slicesDone(t, url, "codex-usage-cache") >= 2 })
		victim.kill9(t)
		b.mustRun(args...)
		// Repaired once each: a second subtraction would show.
		var wrong int64
		err = pool.QueryRow(ctx, `SELECT count(*) FROM codex_want_log w JOIN task_usage u USING (id) WHERE u.input_tokens <> w.input_tokens`).Scan(&wrong)
		if err != nil || wrong != 0 {
			t.Fatalf("after kill -9 and resume: %d of %d eligible rows not repaired exactly once (%v)", wrong, eligible, err)
		}
		testenv.RequireOracle(t, pool)
		requireLockFree(t, url)
	})
}
