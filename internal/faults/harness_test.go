package faults_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// tiny is a history small enough that a slow slice trigger still lets a
// whole run finish in seconds, with enough slices (about 40) that a fault
// lands in the middle of a run.
var tiny = fixture.Config{Seed: 3, Workspaces: 10, Months: 4, Rows: 1500, Skew: 1.0}

var epoch = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

// ---- the real binary ------------------------------------------------------

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// shardfillBin builds cmd/shardfill once per test binary. The path is
// stable per user so repeated runs reuse it instead of leaving one binary
// per run behind (TestMain must stay pgtest.Main, so there is no hook to
// remove a per-run directory).
func shardfillBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("shardfill-faults-%d", os.Getuid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "shardfill")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/shardfill")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, b)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is one shardfill process.
type proc struct {
	checked bool // its output was already checked for the password
	args    []string
	cmd     *exec.Cmd
	out     *testenv.Output
	done    chan struct{}
	code    int
}

// bins runs binaries for one test: it keeps every output, asserts at the
// end of the test that none holds the password, and kills (SIGKILL, by pid)
// any process the test left running.
type bins struct {
	t    *testing.T
	env  []string // DATABASE_URL=...
	pw   string
	mu   sync.Mutex
	all  []*proc
	path string
}

func newBins(t *testing.T, url string) *bins {
	t.Helper()
	b := &bins{t: t, pw: pgtest.SharedServer(t).Password(), path: shardfillBin(t)}
	b.setURL(url)
	t.Cleanup(b.finish)
	return b
}

func (b *bins) setURL(url string) {
	b.env = append(os.Environ(), "DATABASE_URL="+url)
}

func (b *bins) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.all {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	for _, p := range b.all {
		if out := p.out.String(); !p.checked && b.pw != "" && strings.Contains(out, b.pw) {
			b.t.Errorf("the password appears in the output of `shardfill %s`:\n%s",
				strings.Join(redactArgs(p.args, b.pw), " "), strings.ReplaceAll(out, b.pw, "<PASSWORD>"))
		}
	}
}

func redactArgs(args []string, pw string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, pw, "<PASSWORD>")
	}
	return out
}

// start launches shardfill with args and the test's DATABASE_URL (plus
// extraEnv).
func (b *bins) start(extraEnv []string, args ...string) *proc {
	b.t.Helper()
	p := &proc{args: args, out: &testenv.Output{}, done: make(chan struct{})}
	p.cmd = exec.Command(b.path, args...)
	p.cmd.Env = append(append([]string(nil), b.env...), extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.all = append(b.all, p)
	b.mu.Unlock()
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	return p
}

// run runs shardfill to its end (at most timeout) and returns its exit code
// and output.
func (b *bins) run(timeout time.Duration, extraEnv []string, args ...string) (int, string) {
	b.t.Helper()
	p := b.start(extraEnv, args...)
	code, ok := p.wait(timeout)
	if !ok {
		b.t.Fatalf("shardfill %s: still running after %s:\n%s", strings.Join(redactArgs(args, b.pw), " "), timeout, b.safe(p.out.String()))
	}
	return code, p.out.String()
}

// mustRun runs `shardfill run` and requires exit 0.
func (b *bins) mustRun(args ...string) string {
	b.t.Helper()
	args = append([]string{"run", "--no-progress"}, args...)
	code, out := b.run(2*time.Minute, nil, args...)
	if code != 0 {
		b.t.Fatalf("shardfill %s: exit %d, want 0:\n%s", strings.Join(args, " "), code, b.safe(out))
	}
	return out
}

// safe strips the password from text before it goes to the test log.
func (b *bins) safe(s string) string { return strings.ReplaceAll(s, b.pw, "<PASSWORD>") }

// wait waits for the process to exit; ok is false on timeout.
func (p *proc) wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.code, true
	case <-time.After(timeout):
		return 0, false
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.exited() {
		t.Fatal(err)
	}
	<-p.done
}

// ---- SQL helpers ----------------------------------------------------------

func mustExec(t *testing.T, q *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := q.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", firstLine(sql), err)
	}
}

func qint(t *testing.T, q *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", firstLine(sql), err)
	}
	return n
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i > 0 {
		return s[:i] + " ..."
	}
	return s
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireLockFree asserts that the cron job could take its lock. A closed
// connection's backend exits a moment after the client hangs up (and after
// a kill -9 the server must first notice the dead socket), so it is given a
// few seconds.
func requireLockFree(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !testenv.TryCronLock(t, url) {
		if time.Now().After(deadline) {
			t.Fatal("the cron lock 4246 is still held after every shardfill process ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultSQL instruments a database: the checkpoint schema is created up front
// so triggers can be put on it.
//
//   - fault_cfg.sleep_s: every INSERT into task_usage_hourly (one per slice
//     range) sleeps that long in a statement trigger: slices become slow,
//     and a worker is "mid-slice" while its backend waits on PgSleep. With
//     fault_cfg.slow_ws set, only inserts of that workspace's rows sleep.
//   - done_log: one row per transition of a slice to 'done', written in the
//     transaction that makes it (so it exists iff that commit happened), with
//     whether the owner's lock connection (or the committing backend itself)
//     held the cron lock 4246 at that moment. The same trigger notifies
//     channel slice_done with "run:slice:rollup rows in its range"; the
//     notification is delivered at commit.
//   - stamp_log: one row per update of task_usage_hourly_rollup_state.
const faultSQL = `
CREATE TABLE fault_cfg (sleep_s float8 NOT NULL, slow_ws uuid);
INSERT INTO fault_cfg VALUES (0, NULL);
CREATE FUNCTION fault_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM fault_cfg c
	           WHERE c.slow_ws IS NULL OR EXISTS (SELECT 1 FROM ins WHERE ins.workspace_id = c.slow_ws)) THEN
		PERFORM pg_sleep((SELECT sleep_s FROM fault_cfg));
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER fault_slow AFTER INSERT ON task_usage_hourly REFERENCING NEW TABLE AS ins
	FOR EACH STATEMENT EXECUTE FUNCTION fault_slow();

CREATE TABLE done_log (
	run_id bigint, slice_id bigint, owner text, owner_pid int, attempts int,
	lock_held bool, backend_pid int, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fault_done() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
	INSERT INTO done_log (run_id, slice_id, owner, owner_pid, attempts, lock_held, backend_pid)
	VALUES (NEW.run_id, NEW.id, NEW.owner, NEW.owner_pid, NEW.attempts,
		EXISTS (SELECT 1 FROM pg_locks l
		        WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = 4246 AND l.objsubid = 1
		          AND l.granted AND l.pid IN (NEW.owner_pid, pg_backend_pid())),
		pg_backend_pid());
	SELECT count(*) INTO n FROM task_usage_hourly h
	WHERE h.workspace_id = NEW.workspace_id AND h.bucket_hour >= NEW.from_ts AND h.bucket_hour < NEW.to_ts;
	PERFORM pg_notify('slice_done', NEW.run_id || ':' || NEW.id || ':' || n);
	RETURN NULL;
END $$;
CREATE TRIGGER fault_done AFTER UPDATE ON shardfill.slice FOR EACH ROW
	WHEN (NEW.state = 'done' AND OLD.state IS DISTINCT FROM 'done') EXECUTE FUNCTION fault_done();

CREATE TABLE stamp_log (watermark_at timestamptz, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fault_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO stamp_log (watermark_at) VALUES (NEW.watermark_at);
	RETURN NULL;
END $$;
CREATE TRIGGER fault_stamp AFTER UPDATE ON task_usage_hourly_rollup_state FOR EACH ROW EXECUTE FUNCTION fault_stamp();
`

// instrument installs faultSQL with the given slice slowness.
func instrument(t *testing.T, pool *pgxpool.Pool, sleep time.Duration) {
	t.Helper()
	ctx := context.Background()
	if err := checkpoint.New(pool, "shardfill", fixture.AppLockKey).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, faultSQL)
	setSleep(t, pool, sleep)
}

func setSleep(t *testing.T, pool *pgxpool.Pool, d time.Duration) {
	t.Helper()
	mustExec(t, pool, `UPDATE fault_cfg SET sleep_s = $1`, d.Seconds())
}

// doneCount is the number of committed done transitions so far.
func doneCount(t *testing.T, pool *pgxpool.Pool) int64 {
	return qint(t, pool, `SELECT count(*) FROM done_log`)
}

// sleepingWorkers counts backends of this database inside the slow trigger:
// workers that are mid-slice.
func sleepingWorkers(t *testing.T, pool *pgxpool.Pool) int64 {
	return qint(t, pool, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()`)
}

// requireEachSliceDoneOnce checks the end state of the latest run: every
// slice done, and exactly one committed done transition per slice.
func requireEachSliceDoneOnce(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	var total, done, logged, distinct int64
	err := pool.QueryRow(ctx, `
		WITH r AS (SELECT max(id) AS id FROM shardfill.run)
		SELECT (SELECT count(*) FROM shardfill.slice s, r WHERE s.run_id = r.id),
		       (SELECT count(*) FROM shardfill.slice s, r WHERE s.run_id = r.id AND s.state = 'done'),
		       (SELECT count(*) FROM done_log d, r WHERE d.run_id = r.id),
		       (SELECT count(DISTINCT slice_id) FROM done_log d, r WHERE d.run_id = r.id)`).
		Scan(&total, &done, &logged, &distinct)
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || done != total || logged != total || distinct != total {
		rows, _ := pool.Query(ctx, `SELECT slice_id, count(*), string_agg(owner, ', ') FROM done_log
			GROUP BY slice_id HAVING count(*) > 1 ORDER BY 1 LIMIT 10`)
		var dup []string
		for rows != nil && rows.Next() {
			var id, n int64
			var owners string
			_ = rows.Scan(&id, &n, &owners)
			dup = append(dup, fmt.Sprintf("slice %d done %d times by %s", id, n, owners))
		}
		t.Fatalf("slices: %d total, %d done; done transitions committed: %d for %d distinct slices (want one per slice) %v",
			total, done, logged, distinct, dup)
	}
}

// requireStampedOnce checks the watermark was moved exactly once, to the
// run's target.
func requireStampedOnce(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var n int64
	var at, target *time.Time
	err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM stamp_log),
		(SELECT max(watermark_at) FROM stamp_log),
		(SELECT watermark_target FROM shardfill.run ORDER BY id DESC LIMIT 1)`).Scan(&n, &at, &target)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || at == nil || target == nil || !at.Equal(*target) {
		t.Fatalf("watermark stamped %d times (last to %v, run target %v); want exactly once, to the target", n, at, target)
	}
}

func requireNotStamped(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if n := qint(t, pool, `SELECT count(*) FROM stamp_log`); n != 0 {
		t.Fatalf("watermark stamped %d times by a run that did not finish", n)
	}
	wm, err := fixture.Watermark(context.Background(), pool)
	if err != nil || wm == nil || !wm.Equal(epoch) {
		t.Fatalf("watermark %v (%v), want untouched", wm, err)
	}
}

// ---- in-process engines -----------------------------------------------------

// hookJob is the rollup with a hook called before each batch's statements
// are queued: it may queue a fault of its own, or stall.
type hookJob struct {
	*sqljob.Batched
	hook func(b *pgx.Batch, w shard.Batch)
}

func (h *hookJob) Queue(b *pgx.Batch, w shard.Batch, written *int64) {
	if h.hook != nil {
		h.hook(b, w)
	}
	h.Batched.Queue(b, w, written)
}

// events records engine events, safe for concurrent use.
type events struct {
	mu  sync.Mutex
	all []engine.Event
}

func (ev *events) add(e engine.Event) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.all = append(ev.all, e)
}

// of returns the events of one kind, optionally for one slice id (0 = all).
func (ev *events) of(kind engine.EventKind, slice int64) []engine.Event {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var out []engine.Event
	for _, e := range ev.all {
		if e.Kind == kind && (slice == 0 || e.Slice.ID == slice) {
			out = append(out, e)
		}
	}
	return out
}

// ---- private servers --------------------------------------------------------

// ownDB creates a database on s with the target schema and cfg's history.
func ownDB(t *testing.T, s *pgserver.Server, name string, cfg fixture.Config) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, err := s.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.Generate(ctx, pool, cfg); err != nil {
		t.Fatal(err)
	}
	return url
}

// requireFinished is how every fault test ends: each slice committed once,
// the watermark stamped once, the rollup equal to the oracle, and the cron
// lock free.
func requireFinished(t *testing.T, pool *pgxpool.Pool, url string) {
	t.Helper()
	requireEachSliceDoneOnce(t, pool)
	requireStampedOnce(t, pool)
	testenv.RequireOracle(t, pool)
	requireLockFree(t, url)
}

// startMidSlice starts a run of one slice per batch on two workers and
// returns once 3 slices are done and a worker is inside a (slowed) slice:
// the moment the fault tests strike.
func (b *bins) startMidSlice(t *testing.T, pool *pgxpool.Pool) *proc {
	t.Helper()
	p := b.start(nil, "run", "--no-progress", "--concurrency", "2", "--batch-slices", "1")
	waitFor(t, time.Minute, "3 slices done and a worker mid-slice", func() bool {
		if p.exited() {
			t.Fatalf("exited (%d) before the fault:\n%s", p.code, b.safe(p.out.String()))
		}
		return doneCount(t, pool) >= 3 && sleepingWorkers(t, pool) > 0
	})
	return p
}
