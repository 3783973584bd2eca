package sqljob_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/jobs"
	"github.com/shardfill/shardfill/sqljob"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const issueWorkspace = "00000000-0000-0000-0000-00000000a001"

// shipped parses a job shipped in jobs/.
func shipped(t testing.TB, name string) *jobfile.File {
	t.Helper()
	path, src, ok := jobs.Source(name)
	if !ok {
		t.Fatalf("no shipped job %s", name)
	}
	f, err := jobfile.Parse(path, src)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// open binds a job file to the database at url, as the engine runs it.
func open(t testing.TB, url string, f *jobfile.File, params map[string]string) engine.Job {
	t.Helper()
	j, err := sqljob.Open(context.Background(), testenv.Pool(t, url), f, params)
	if err != nil {
		t.Fatal(err)
	}
	return j.Engine().(engine.Job)
}

// issueDB is a database with n issues to seed, and the values the job
// must keep.
func issueDB(t *testing.T, n int) (string, map[string]string) {
	t.Helper()
	url := testenv.DB(t, nil)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	if err := fixture.SeedIssues(ctx, pool, issueWorkspace, n); err != nil {
		t.Fatal(err)
	}
	kept, err := fixture.KeptActivity(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	return url, kept
}

func requireIssues(t *testing.T, url string, kept map[string]string) {
	t.Helper()
	bad, err := fixture.IssueDiff(context.Background(), testenv.Pool(t, url), kept, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("issue last-activity differs from the oracle:\n%v", bad)
	}
}

// The issue last-activity job seeds every row that has an updated_at, and
// keeps every value the application set, at any concurrency.
func TestIssueLastActivityExact(t *testing.T) {
	t.Parallel()
	for _, c := range []int{1, 4} {
		url, kept := issueDB(t, 23_000)
		f := shipped(t, "issue-last-activity")
		e := testenv.Engine(t, url, open(t, url, f, nil), engine.Config{Concurrency: c})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		res, err := e.Run(ctx)
		cancel()
		if err != nil {
			t.Fatalf("c=%d: %v", c, err)
		}
		if res.Outcome.State != "done" {
			t.Fatalf("c=%d: run ended %s", c, res.Outcome.State)
		}
		requireIssues(t, url, kept)
		// 23 000 rows, about 19 700 to seed, in slices of 5 000 rows.
		if res.Run.SlicesTotal != 4 {
			t.Fatalf("c=%d: %d slices; want the key space cut in 4 ranges of about 5 000 rows", c, res.Run.SlicesTotal)
		}
	}
}

// Rows another session holds locked while the run works are skipped
// (SKIP LOCKED), their slices handed back and done once the locks are
// gone; a value the application writes meanwhile is kept. The run ends
// exact.
func TestIssueLastActivityLockedRowsAndWriter(t *testing.T) {
	t.Parallel()
	url, kept := issueDB(t, 30_000)
	ctx := context.Background()
	pool := testenv.Pool(t, url)

	// An application transaction holds 50 rows to seed, spread over the
	// key space, for three seconds.
	app, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Rollback(ctx)
	var locked []string
	rows, err := app.Query(ctx, `SELECT id::text FROM issue WHERE last_activity_at IS NULL AND updated_at IS NOT NULL
		AND id IN (SELECT id FROM issue ORDER BY md5(id::text) LIMIT 300) LIMIT 50 FOR UPDATE`)
	if err == nil {
		locked, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || len(locked) != 50 {
		t.Fatalf("lock rows: %v (%d)", err, len(locked))
	}
	go func() {
		time.Sleep(3 * time.Second)
		_ = app.Rollback(ctx)
	}()
	// And, once the run is planned, the application sets the activity of
	// 30 rows itself: those values must stay.
	var written []string
	write := func() {
		rows, err := pool.Query(ctx, `UPDATE issue SET last_activity_at = timestamptz '2030-01-01'
			WHERE id IN (SELECT id FROM issue WHERE last_activity_at IS NULL AND updated_at IS NOT NULL
			             AND id <> ALL ($1::uuid[]) ORDER BY id DESC LIMIT 30 FOR UPDATE SKIP LOCKED)
			RETURNING id::text, last_activity_at::text`, locked)
		if err != nil {
			t.Error(err)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var id, v string
			_ = rows.Scan(&id, &v)
			written = append(written, id+"="+v)
		}
	}

	var retried int
	var mu sync.Mutex
	cfg := engine.Config{Concurrency: 2, SleepBetweenSlices: 100 * time.Millisecond, OnEvent: func(ev engine.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch ev.Kind {
		case engine.SliceRetry:
			retried++
		case engine.RunStarted:
			write()
		}
	}}
	f := shipped(t, "issue-last-activity")
	e := testenv.Engine(t, url, open(t, url, f, nil), cfg)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := e.Run(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome.State != "done" {
		t.Fatalf("run ended %s", res.Outcome.State)
	}
	if retried == 0 {
		t.Fatal("no slice was handed back although rows of it were locked")
	}
	for _, w := range written {
		id, v, _ := strings.Cut(w, "=")
		kept[id] = v
	}
	if len(written) != 30 {
		t.Fatalf("the application wrote %d rows, want 30", len(written))
	}
	requireIssues(t, url, kept)
}

// A slice whose remaining rows the slice statement never changes (here:
// the two disagree) fails after max-stalls passes without progress, with
// a message that says why, rather than spinning.
func TestRepeatGuardFailsStalledSlice(t *testing.T) {
	t.Parallel()
	url, _ := issueDB(t, 3_000)
	src := `-- shardfill:job stalls
-- shardfill:tables issue
-- shardfill:split issue.id rows 1000
-- shardfill:slice repeat max-stalls 2
UPDATE issue SET last_activity_at = updated_at
 WHERE id IN (SELECT id FROM issue WHERE shardfill.in_range(id) AND last_activity_at IS NULL AND updated_at IS NOT NULL LIMIT 100);
-- shardfill:remaining
SELECT count(*) FROM issue WHERE shardfill.in_range(id) AND last_activity_at IS NULL;
`
	f, err := jobfile.Parse("stalls.sql", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	e := testenv.Engine(t, url, open(t, url, f, nil), engine.Config{Concurrency: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = e.Run(ctx)
	var failed *engine.FailedError
	if !errors.As(err, &failed) {
		t.Fatalf("run: %v; want the stalled slices failed", err)
	}
	var msg string
	if err := testenv.Pool(t, url).QueryRow(ctx, `SELECT error FROM shardfill.slice WHERE state = 'failed' LIMIT 1`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "2 passes in a row made no progress") || !strings.Contains(msg, "rows still to do") {
		t.Fatalf("failure says %q; want why", msg)
	}
}
