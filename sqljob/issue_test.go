package sqljob_test

import (
	"context"
	"testing"
	"time"

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

// open binds a job file to the database at url.
func open(t testing.TB, url string, f *jobfile.File, params map[string]string) *sqljob.Job {
	t.Helper()
	j, err := sqljob.Open(context.Background(), testenv.Pool(t, url), f, params)
	if err != nil {
		t.Fatal(err)
	}
	return j
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
