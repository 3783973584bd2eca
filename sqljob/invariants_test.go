package sqljob_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/jobfile"
)

// finishJob seeds issues in slices and counts its finishes in a table of
// its own; its lock is the issue backfill's key, held as mode says.
func finishJob(t *testing.T, mode string) *jobfile.File {
	t.Helper()
	f, err := jobfile.Parse("finish.sql", []byte(`-- shardfill:job finish-once
-- shardfill:lock hashtextextended('issue_last_activity_backfill', 0) `+mode+`
-- shardfill:tables issue, finishes
-- shardfill:split issue.id where last_activity_at IS NULL AND updated_at IS NOT NULL rows 500
-- shardfill:slice
UPDATE issue SET last_activity_at = updated_at
 WHERE shardfill.in_range(id) AND last_activity_at IS NULL AND updated_at IS NOT NULL;
-- shardfill:finish
INSERT INTO finishes (at, left_to_do)
SELECT clock_timestamp(), count(*) FROM issue WHERE last_activity_at IS NULL AND updated_at IS NOT NULL;
`))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Three processes share one run of a job file: its finish statement runs
// exactly once, after every slice is done (it finds nothing left), and
// while they work the job's lock keeps out whoever takes it exclusively.
func TestFinishRunsOnceAndLockKeepsOut(t *testing.T) {
	t.Parallel()
	url, kept := issueDB(t, 20_000)
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	if _, err := pool.Exec(ctx, `CREATE TABLE finishes (at timestamptz, left_to_do bigint)`); err != nil {
		t.Fatal(err)
	}
	f := finishJob(t, "shared check noyield")
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	var checked sync.Once
	kept0 := make(chan bool, 1)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := engine.Config{Concurrency: 2, SleepBetweenSlices: 20 * time.Millisecond, OnEvent: func(ev engine.Event) {
				if ev.Kind != engine.SliceDone {
					return
				}
				checked.Do(func() {
					// Mid-run: the serial command's exclusive session lock
					// cannot be taken.
					var got bool
					conn := testenv.Conn(t, url)
					_ = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended('issue_last_activity_backfill', 0))`).Scan(&got)
					kept0 <- !got
				})
			}}
			_, err := testenv.Engine(t, url, open(t, url, f, nil), cfg).Run(ctx)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !<-kept0 {
		t.Fatal("an exclusive advisory lock on the job's key was granted while the run worked")
	}
	var n, left int64
	if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(max(left_to_do), -1) FROM finishes`).Scan(&n, &left); err != nil {
		t.Fatal(err)
	}
	if n != 1 || left != 0 {
		t.Fatalf("the finish ran %d times (found %d rows left); want once, after every slice", n, left)
	}
	requireIssues(t, url, kept)
}

// An exclusive lock admits one process at a time: a second process of the
// same run waits for the first to end, then finds the run done.
func TestExclusiveLockOneProcessAtATime(t *testing.T) {
	t.Parallel()
	url, kept := issueDB(t, 6_000)
	ctx := context.Background()
	pool := testenv.Pool(t, url)
	if _, err := pool.Exec(ctx, `CREATE TABLE finishes (at timestamptz, left_to_do bigint)`); err != nil {
		t.Fatal(err)
	}
	f := finishJob(t, "exclusive")
	first := make(chan struct{})
	var once sync.Once
	slow := engine.Config{Concurrency: 1, SleepBetweenSlices: 300 * time.Millisecond, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceDone {
			once.Do(func() { close(first) })
		}
	}}
	done := make(chan error, 1)
	go func() {
		_, err := testenv.Engine(t, url, open(t, url, f, nil), slow).Run(ctx)
		done <- err
	}()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("the first process ended before its first slice: %v", err)
	}
	res, err := testenv.Engine(t, url, open(t, url, f, nil), engine.Config{Concurrency: 2}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the second process ran beside the first although the job's lock is exclusive")
	}
	if !res.NothingToDo && res.Executed != 0 {
		t.Fatalf("the second process executed %d slices after the first had finished the run", res.Executed)
	}
	requireIssues(t, url, kept)
}
