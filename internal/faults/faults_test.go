// Package faults_test injects the faults a backfill on a live database must
// survive (processes killed, connections terminated, the server stopped,
// stalled workers, transient and permanent SQL errors) and checks the
// invariants of design.md after each: the rollup equals the oracle, each
// slice is committed once, the watermark is stamped once, the cron lock is
// never leaked, and the password is never printed.
package faults_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// doneSnapshot maps each done slice of the latest run to its finished_at.
func doneSnapshot(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, finished_at FROM shardfill.slice
		WHERE run_id = (SELECT max(id) FROM shardfill.run) AND state = 'done'`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]time.Time{}
	for rows.Next() {
		var id int64
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			t.Fatal(err)
		}
		out[id] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// requireNotRedone fails if a slice done in before was finished again.
func requireNotRedone(t *testing.T, pool *pgxpool.Pool, before map[int64]time.Time) {
	t.Helper()
	after := doneSnapshot(t, pool)
	for id, at := range before {
		if got, ok := after[id]; !ok || !got.Equal(at) {
			t.Errorf("slice %d was done (finished_at %s) before the fault, but now: done=%v finished_at %s: it was redone",
				id, at.Format(time.RFC3339Nano), ok, got.Format(time.RFC3339Nano))
		}
	}
}

// sliceRows digests the rollup rows of one slice's range, updated_at
// included, so any rewrite shows.
func sliceRows(t *testing.T, pool *pgxpool.Pool, id int64) (int64, string) {
	t.Helper()
	var n int64
	var sum string
	err := pool.QueryRow(context.Background(), `
		SELECT count(*), coalesce(md5(string_agg(h::text, '|' ORDER BY h::text)), '')
		FROM task_usage_hourly h JOIN shardfill.slice s
		  ON s.run_id = (SELECT max(id) FROM shardfill.run) AND s.id = $1
		 AND h.workspace_id = s.workspace_id AND h.bucket_hour >= s.from_ts AND h.bucket_hour < s.to_ts`, id).Scan(&n, &sum)
	if err != nil {
		t.Fatal(err)
	}
	return n, sum
}

// 1a. kill -9 of a process while its workers are inside slices; a new
// process resumes: slices done before are not redone, the in-flight ones
// are taken over at once (their owner's lock connection is gone), and the
// rollup equals the oracle.
func TestKill9MidSliceThenResume(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	instrument(t, pool, 300*time.Millisecond)
	b := newBins(t, url)

	p := b.startMidSlice(t, pool)
	p.kill9(t)

	before := doneSnapshot(t, pool)
	inFlight := qint(t, pool, `SELECT count(*) FROM shardfill.slice WHERE state = 'running'`)
	if inFlight == 0 {
		t.Fatal("no slice was in flight when the process was killed")
	}
	requireLockFree(t, url)

	setSleep(t, pool, 0)
	start := time.Now()
	b.mustRun()
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("resume took %s: the dead process's claims were waited out instead of taken over", took)
	}
	requireNotRedone(t, pool, before)
	requireFinished(t, pool, url)
}

// 1b. kill -9 right after a slice's commit (on the notification its commit
// delivers): the resumed run does not redo it — its done row and its rollup
// rows keep their finished_at and updated_at.
func TestKill9JustAfterCommitThenResume(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	instrument(t, pool, 100*time.Millisecond)
	listen := testenv.Conn(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := listen.Exec(ctx, `LISTEN slice_done`); err != nil {
		t.Fatal(err)
	}
	b := newBins(t, url)

	p := b.start(nil, "run", "--no-progress", "--concurrency", "2", "--batch-slices", "1")
	var sliceID int64
	for sliceID == 0 {
		n, err := listen.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("no commit notification (%v); process exited=%v:\n%s", err, p.exited(), b.safe(p.out.String()))
		}
		var run, id, rows int64
		if _, err := fmt.Sscanf(n.Payload, "%d:%d:%d", &run, &id, &rows); err != nil {
			t.Fatalf("payload %q: %v", n.Payload, err)
		}
		if rows > 0 { // a slice whose rewrite would show in its rows
			p.kill9(t)
			sliceID = id
		}
	}

	var state string
	var finished time.Time
	if err := pool.QueryRow(context.Background(), `SELECT state, finished_at FROM shardfill.slice
		WHERE run_id = (SELECT max(id) FROM shardfill.run) AND id = $1`, sliceID).Scan(&state, &finished); err != nil {
		t.Fatal(err)
	}
	if state != "done" {
		t.Fatalf("slice %d notified as committed but its state is %q", sliceID, state)
	}
	n, sum := sliceRows(t, pool, sliceID)
	before := doneSnapshot(t, pool)
	if qint(t, pool, `SELECT count(*) FROM shardfill.slice WHERE state <> 'done'`) == 0 {
		t.Fatal("the run was already complete at the kill: nothing left to resume")
	}
	requireLockFree(t, url)

	setSleep(t, pool, 0)
	b.mustRun()
	if n2, sum2 := sliceRows(t, pool, sliceID); n2 != n || sum2 != sum {
		t.Errorf("slice %d committed before the kill was redone: its %d rollup rows changed (now %d)", sliceID, n, n2)
	}
	requireNotRedone(t, pool, before)
	if _, ok := before[sliceID]; !ok || !before[sliceID].Equal(finished) {
		t.Errorf("slice %d missing from the snapshot", sliceID)
	}
	requireFinished(t, pool, url)
}

// terminator terminates, every interval, up to n (0 = no limit) worker
// backends of the database that are inside the slow trigger — never a lock
// connection (the owner_pid of a claim) — until stop is called; it returns
// how many it ended.
func terminator(pool *pgxpool.Pool, interval time.Duration, n int64) (stop func() int64) {
	ctx, cancel := context.WithCancel(context.Background())
	var killed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n == 0 || killed.Load() < n {
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval):
			}
			var k int64
			err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
				SELECT pid FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event = 'PgSleep'
				  AND pid NOT IN (SELECT owner_pid FROM shardfill.slice WHERE owner_pid IS NOT NULL)
				LIMIT 1) w`).Scan(&k)
			if err == nil {
				killed.Add(k)
			}
		}
	}()
	return func() int64 {
		cancel()
		<-done
		return killed.Load()
	}
}

// 2. pg_terminate_backend of worker connections while they are inside a
// slice: the slice is retried on another connection and done; retries are
// bounded by MaxAttempts — a slice whose every attempt is killed fails
// after exactly MaxAttempts tries instead of looping — and a run after the
// fault ends finishes.
func TestTerminateWorkerConnections(t *testing.T) {
	t.Parallel()
	const maxAttempts = 4

	t.Run("sporadic", func(t *testing.T) {
		t.Parallel()
		url := testenv.DB(t, &tiny)
		pool := testenv.Pool(t, url)
		instrument(t, pool, 300*time.Millisecond)
		var ev events
		e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 3, BatchSlices: 1, MaxAttempts: maxAttempts,
			Backoff: 20 * time.Millisecond, OnEvent: ev.add})
		// maxAttempts-1 kills: even all on one slice leave it a last try.
		stop := terminator(pool, 250*time.Millisecond, maxAttempts-1)
		res, err := e.Run(context.Background())
		killed := stop()
		if err != nil {
			t.Fatalf("run: %v (after %d terminated connections)", err, killed)
		}
		if killed == 0 {
			t.Fatal("no worker connection was terminated: the fault was never injected")
		}
		retries := ev.of(engine.SliceRetry, 0)
		if int64(len(retries)) != killed {
			t.Errorf("%d connections terminated mid-slice but %d retries", killed, len(retries))
		}
		for _, r := range retries {
			t.Logf("retry of %s: %v", r.Slice, r.Err)
		}
		if f := ev.of(engine.SliceFailed, 0); len(f) > 0 {
			t.Fatalf("%d slices failed, e.g. %v", len(f), f[0].Err)
		}
		if got := int64(len(ev.of(engine.SliceDone, 0))); got != res.Run.SlicesTotal || !res.Outcome.Stamped {
			t.Fatalf("%d of %d slices done, stamped %v", got, res.Run.SlicesTotal, res.Outcome.Stamped)
		}
		if n := qint(t, pool, `SELECT max(attempts) FROM shardfill.slice`); n > maxAttempts {
			t.Errorf("a slice was claimed %d times, MaxAttempts is %d", n, maxAttempts)
		}
		requireFinished(t, pool, url)
	})

	t.Run("every attempt", func(t *testing.T) {
		t.Parallel()
		url := testenv.DB(t, &tiny)
		pool := testenv.Pool(t, url)
		instrument(t, pool, 300*time.Millisecond)
		var ws string
		if err := pool.QueryRow(context.Background(), `SELECT a.workspace_id::text FROM task_usage u
			JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
			WHERE t.runtime_id IS NOT NULL GROUP BY 1 ORDER BY count(*), 1 LIMIT 1`).Scan(&ws); err != nil {
			t.Fatal(err)
		}
		mustExec(t, pool, `UPDATE fault_cfg SET slow_ws = $1`, ws) // only its slices are slow, and killed
		var ev events
		e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 3, BatchSlices: 1, MaxAttempts: maxAttempts,
			Backoff: 20 * time.Millisecond, OnEvent: ev.add})
		stop := terminator(pool, 30*time.Millisecond, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res, err := e.Run(ctx)
		killed := stop()
		var failed *engine.FailedError
		if !errors.As(err, &failed) {
			t.Fatalf("a slice killed on every attempt: want *engine.FailedError, got %v (%d kills)", err, killed)
		}
		fails := ev.of(engine.SliceFailed, 0)
		if len(fails) == 0 || int64(len(fails)) != failed.Failed {
			t.Fatalf("%d SliceFailed events, FailedError says %d", len(fails), failed.Failed)
		}
		for _, f := range fails {
			if f.Slice.Workspace != ws {
				t.Errorf("slice %s of a workspace that was never killed failed: %v", f.Slice, f.Err)
			}
			if n := len(ev.of(engine.SliceRetry, f.Slice.ID)); n != maxAttempts-1 {
				t.Errorf("%s: %d retries before failing, want MaxAttempts-1 = %d", f.Slice, n, maxAttempts-1)
			}
			if !strings.Contains(fmt.Sprint(f.Err), "57P01") {
				t.Errorf("%s failed with %v, want the termination (57P01)", f.Slice, f.Err)
			}
		}
		if n := qint(t, pool, `SELECT max(attempts) FROM shardfill.slice`); n > maxAttempts {
			t.Errorf("a slice was claimed %d times, MaxAttempts is %d", n, maxAttempts)
		}
		requireNotStamped(t, pool)
		requireLockFree(t, url)

		// The fault is gone: the next run retries the failed slices.
		setSleep(t, pool, 0)
		again, err := testenv.Engine(t, url, nil, engine.Config{}).Run(context.Background())
		if err != nil || again.Run.ID != res.Run.ID || again.Executed != failed.Failed || !again.Outcome.Stamped {
			t.Fatalf("re-run: %v", err)
		}
		requireFinished(t, pool, url)
	})
}

// 3. pg_terminate_backend of the connection that holds the cron lock: the
// process stops (non-zero) soon after, no slice is ever committed while its
// owner no longer holds the lock (the cron job could run alongside), the
// lock is not left held, and a re-run finishes.
func TestTerminateLockConnection(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	instrument(t, pool, 300*time.Millisecond)
	b := newBins(t, url)

	p := b.start(nil, "run", "--no-progress", "--concurrency", "3", "--batch-slices", "1")
	waitFor(t, time.Minute, "2 slices done and workers mid-slice", func() bool {
		if p.exited() {
			t.Fatalf("exited (%d) before the fault:\n%s", p.code, b.safe(p.out.String()))
		}
		return doneCount(t, pool) >= 2 && sleepingWorkers(t, pool) >= 2
	})
	// The lock connection is the owner_pid of the process's claims; it must
	// hold the lock in session mode (workers may hold it too, per
	// transaction).
	lockPID := qint(t, pool, `SELECT DISTINCT owner_pid FROM shardfill.slice WHERE state = 'running'`)
	if qint(t, pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = 4246
		AND objsubid = 1 AND granted AND pid = $1`, lockPID) != 1 {
		t.Fatalf("the claims' owner_pid %d does not hold the cron lock", lockPID)
	}
	var lostAt time.Time
	if err := pool.QueryRow(context.Background(), `SELECT clock_timestamp() FROM pg_terminate_backend($1)`, lockPID).Scan(&lostAt); err != nil {
		t.Fatal(err)
	}
	code, ok := p.wait(30 * time.Second)
	if !ok {
		t.Fatalf("still running 30s after its lock connection was terminated:\n%s", b.safe(p.out.String()))
	}
	t.Logf("exit %d after the lock connection was terminated", code)
	if code != 0 && code != 1 {
		t.Errorf("exit %d, want 1 (or 0 had it re-acquired the lock)", code)
	}
	if code == 1 && !strings.Contains(p.out.String(), "4246") {
		t.Errorf("exit 1 without naming the lost cron lock:\n%s", b.safe(p.out.String()))
	}

	// No commit without the lock.
	rows, err := pool.Query(context.Background(), `SELECT slice_id, owner_pid, extract(epoch FROM at - $1) * 1000
		FROM done_log WHERE NOT lock_held ORDER BY at`, lostAt)
	if err != nil {
		t.Fatal(err)
	}
	var unprotected []string
	for rows.Next() {
		var id, pid int64
		var ms float64
		if err := rows.Scan(&id, &pid, &ms); err != nil {
			t.Fatal(err)
		}
		unprotected = append(unprotected, fmt.Sprintf("slice %d (owner lock pid %d) %+.0fms after the lock was lost", id, pid, ms))
	}
	if len(unprotected) > 0 {
		t.Errorf("%d slices committed while their owner no longer held the cron lock 4246:\n  %s",
			len(unprotected), strings.Join(unprotected, "\n  "))
	}
	requireLockFree(t, url)

	setSleep(t, pool, 0)
	b.mustRun()
	requireFinished(t, pool, url)
}

// 5. Invariant 6: a worker that stalled past its lease while another
// process took over and completed its slice cannot commit that slice.
func TestStalledWorkerCannotCommitAfterTakeover(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	instrument(t, pool, 0)

	stalled := make(chan shard.Slice, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	var first atomic.Bool
	jobA := &hookJob{Batched: testenv.Rollup(t, pool), hook: func(_ *pgx.Batch, w shard.Batch) {
		if first.CompareAndSwap(false, true) {
			stalled <- w.Slices[0]
			<-release // the stall: a GC pause, a frozen VM, a slow network
		}
	}}
	var evA, evB events
	// A's lease is long so its renewer cannot interfere: the test expires
	// the lease itself.
	a := testenv.Engine(t, url, jobA, engine.Config{Concurrency: 1, BatchSlices: 1, Lease: time.Hour, Owner: "A", OnEvent: evA.add})
	resA := make(chan error, 1)
	go func() {
		_, err := a.Run(context.Background())
		resA <- err
	}()
	var sl shard.Slice
	select {
	case sl = <-stalled:
	case err := <-resA:
		t.Fatalf("A ended before stalling: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("A never claimed a slice")
	}
	var owner, state string
	if err := pool.QueryRow(context.Background(), `SELECT owner, state FROM shardfill.slice WHERE run_id = $1 AND id = $2`,
		sl.RunID, sl.ID).Scan(&owner, &state); err != nil || owner != "A" || state != "running" {
		t.Fatalf("stalled slice: owner %q state %q (%v), want A's running claim", owner, state, err)
	}
	mustExec(t, pool, `UPDATE shardfill.slice SET lease_until = now() - interval '1 second' WHERE run_id = $1 AND id = $2`, sl.RunID, sl.ID)

	bEng := testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, Owner: "B", OnEvent: evB.add})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resB, err := bEng.Run(ctx)
	if err != nil {
		t.Fatalf("B: %v", err)
	}
	if len(evB.of(engine.SliceDone, sl.ID)) != 1 || !resB.Outcome.Stamped {
		t.Fatalf("B did not take over and finish slice %d (stamped %v)", sl.ID, resB.Outcome.Stamped)
	}

	unblock()
	select {
	case err := <-resA:
		if err != nil {
			t.Errorf("A after the takeover: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("A did not end after its stall")
	}
	if got := evA.of(engine.SliceLost, sl.ID); len(got) != 1 {
		t.Errorf("A reported %d SliceLost for the slice it lost, want 1", len(got))
	}
	if got := evA.of(engine.SliceDone, sl.ID); len(got) != 0 {
		t.Errorf("A reported its lost slice %d done", sl.ID)
	}
	var commits int64
	var by string
	if err := pool.QueryRow(context.Background(), `SELECT count(*), string_agg(owner, ',') FROM done_log
		WHERE run_id = $1 AND slice_id = $2`, sl.RunID, sl.ID).Scan(&commits, &by); err != nil {
		t.Fatal(err)
	}
	if commits != 1 || by != "B" {
		t.Errorf("slice %d committed %d times, by %q; want once, by B", sl.ID, commits, by)
	}
	if err := pool.QueryRow(context.Background(), `SELECT owner, state FROM shardfill.slice WHERE run_id = $1 AND id = $2`,
		sl.RunID, sl.ID).Scan(&owner, &state); err != nil || owner != "B" || state != "done" {
		t.Errorf("slice row: owner %q state %q (%v), want B, done", owner, state, err)
	}
	requireFinished(t, pool, url)
}

// 6. Three processes share one run; one is killed with kill -9 midway. The
// others take over its slices and exit 0; each slice is committed exactly
// once (the victim's uncommitted slices leave no trace); the watermark is
// stamped exactly once.
func TestThreeProcessesOneKilled(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &fixture.Config{Seed: 9, Workspaces: 14, Months: 4, Rows: 2500, Skew: 0.8})
	pool := testenv.Pool(t, url)
	instrument(t, pool, 200*time.Millisecond)
	b := newBins(t, url)

	var ps []*proc
	for range 3 {
		ps = append(ps, b.start(nil, "run", "--no-progress", "--concurrency", "2", "--batch-slices", "1", "--lease", "20s"))
	}
	victim := ps[1]
	mine := fmt.Sprintf("%%:%d:%%", victim.cmd.Process.Pid) // owner is host:pid:random
	waitFor(t, time.Minute, "the victim to finish a slice and be inside another", func() bool {
		for _, p := range ps {
			if p.exited() {
				t.Fatalf("a process exited (%d) before the kill:\n%s", p.code, b.safe(p.out.String()))
			}
		}
		return qint(t, pool, `SELECT count(*) FROM done_log WHERE owner LIKE $1`, mine) >= 1 &&
			qint(t, pool, `SELECT count(*) FROM shardfill.slice WHERE state = 'running' AND owner LIKE $1`, mine) >= 1 &&
			sleepingWorkers(t, pool) > 0
	})
	victim.kill9(t)
	before := doneSnapshot(t, pool)
	orphans := qint(t, pool, `SELECT count(*) FROM shardfill.slice WHERE state = 'running' AND owner LIKE $1`, mine)
	setSleep(t, pool, 50*time.Millisecond)

	for i, p := range []*proc{ps[0], ps[2]} {
		code, ok := p.wait(2 * time.Minute)
		if !ok || code != 0 {
			t.Fatalf("survivor %d: exit %d (ended %v), want 0:\n%s", i, code, ok, b.safe(p.out.String()))
		}
	}
	t.Logf("%d slices were in flight in the killed process", orphans)
	requireNotRedone(t, pool, before)
	requireFinished(t, pool, url)
}

// 7a. Transient errors on a slice's first attempt (serialization failure,
// deadlock, statement timeout) are retried and the slice is done. 7b. A
// permanent error (a column missing, for one workspace's rows) fails only
// that workspace's slices: the others are done and stay done, the run is
// failed with no watermark, status lists the failed slices with their
// errors; after the cause is fixed, a later run completes.
func TestInjectedErrors(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	instrument(t, pool, 0)
	ctx := context.Background()

	// The permanent fault: any rollup row of one workspace trips over a
	// column that does not exist.
	var badWS string
	if err := pool.QueryRow(ctx, `SELECT a.workspace_id::text FROM task_usage u
		JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		WHERE t.runtime_id IS NOT NULL GROUP BY 1 ORDER BY count(*), 1 LIMIT 1`).Scan(&badWS); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `CREATE TABLE bad_ws (id uuid PRIMARY KEY)`)
	mustExec(t, pool, `INSERT INTO bad_ws VALUES ($1)`, badWS)
	mustExec(t, pool, `CREATE FUNCTION fault_missing_column() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF EXISTS (SELECT 1 FROM bad_ws WHERE id = NEW.workspace_id) THEN
				PERFORM NEW.no_such_column;
			END IF;
			RETURN NEW;
		END $$`)
	mustExec(t, pool, `CREATE TRIGGER fault_missing_column BEFORE INSERT ON task_usage_hourly
		FOR EACH ROW EXECUTE FUNCTION fault_missing_column()`)

	// The transient faults, one per slice, on its first attempt only.
	codes := []string{"40001", "40P01", "57014"}
	var mu sync.Mutex
	injected := map[int64]string{}
	tries := map[int64]int{}
	j := &hookJob{Batched: testenv.Rollup(t, pool), hook: func(b *pgx.Batch, w shard.Batch) {
		if w.Slices[0].Workspace == badWS { // BatchSlices: 1
			return
		}
		mu.Lock()
		defer mu.Unlock()
		id := w.Slices[0].ID
		tries[id]++
		if tries[id] != 1 || len(injected) == len(codes) {
			return
		}
		code := codes[len(injected)]
		injected[id] = code
		if code == "57014" {
			b.Queue(`SELECT pg_sleep(5)`) // cut by the statement timeout
			return
		}
		b.Queue(fmt.Sprintf(`DO $$BEGIN RAISE EXCEPTION 'injected %s' USING ERRCODE = '%s'; END$$`, code, code))
	}}
	var ev events
	e := testenv.Engine(t, url, j, engine.Config{Concurrency: 2, BatchSlices: 1, MaxAttempts: 3,
		Backoff: 10 * time.Millisecond, StatementTimeout: time.Second, OnEvent: ev.add})
	res, err := e.Run(ctx)
	var failed *engine.FailedError
	if !errors.As(err, &failed) {
		t.Fatalf("want *engine.FailedError, got %v", err)
	}
	if len(injected) != len(codes) {
		t.Fatalf("only %d transient faults injected", len(injected))
	}
	for id, code := range injected {
		retries := ev.of(engine.SliceRetry, id)
		var pgErr *pgconn.PgError
		if len(retries) != 1 || !errors.As(retries[0].Err, &pgErr) || pgErr.Code != code {
			var got []string
			for _, r := range retries {
				got = append(got, fmt.Sprint(r.Err))
			}
			t.Errorf("slice %d with injected %s: retries %v, want exactly one with SQLSTATE %s", id, code, got, code)
		}
		if len(ev.of(engine.SliceDone, id)) != 1 {
			t.Errorf("slice %d with injected %s was not done after its retry", id, code)
		}
	}
	fails := ev.of(engine.SliceFailed, 0)
	if len(fails) == 0 || int64(len(fails)) != failed.Failed {
		t.Fatalf("%d SliceFailed events, FailedError says %d", len(fails), failed.Failed)
	}
	for _, f := range fails {
		if f.Slice.Workspace != badWS {
			t.Errorf("slice %s of a healthy workspace failed: %v", f.Slice, f.Err)
		}
	}
	requireNotStamped(t, pool)
	doneBefore := doneSnapshot(t, pool)
	if int64(len(doneBefore)) != res.Run.SlicesTotal-failed.Failed {
		t.Fatalf("%d slices done after the failed run, want %d - %d", len(doneBefore), res.Run.SlicesTotal, failed.Failed)
	}

	// The binary reports the failure, and fails again while the cause stays.
	b := newBins(t, url)
	status := func() map[string]any {
		t.Helper()
		code, out := b.run(time.Minute, nil, "status", "--json")
		var st map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("status --json: exit %d\n%s", code, b.safe(out))
		}
		return st
	}
	checkFailedStatus := func() {
		t.Helper()
		st := status()
		list, _ := st["failed_slices"].([]any)
		if st["state"] != "failed" || st["watermark_at"] != nil || st["slices_failed"] != float64(failed.Failed) ||
			len(list) != int(failed.Failed) {
			t.Fatalf("status after the failure: state %v, watermark %v, %v failed, %d listed; want failed, null, %d",
				st["state"], st["watermark_at"], st["slices_failed"], len(list), failed.Failed)
		}
		for _, it := range list {
			f, _ := it.(map[string]any)
			if f["workspace_id"] != badWS || !strings.Contains(fmt.Sprint(f["error"]), "no_such_column") {
				t.Errorf("failed slice listed as %v; want workspace %s with the missing-column error", f, badWS)
			}
		}
	}
	checkFailedStatus()
	if code, out := b.run(time.Minute, nil, "run", "--no-progress", "--max-attempts", "2"); code != 1 {
		t.Fatalf("run with the cause still present: exit %d, want 1\n%s", code, b.safe(out))
	}
	checkFailedStatus()
	requireNotStamped(t, pool)
	requireNotRedone(t, pool, doneBefore)
	requireLockFree(t, url)

	// Fix the cause; the next run completes the same run.
	mustExec(t, pool, `DROP TRIGGER fault_missing_column ON task_usage_hourly`)
	b.mustRun()
	st := status()
	if st["state"] != "done" || st["watermark_at"] == nil || st["run_id"] != float64(res.Run.ID) {
		t.Fatalf("status after the fix: %v", st)
	}
	requireNotRedone(t, pool, doneBefore)
	requireFinished(t, pool, url)
}
