package engine_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// slowRun makes a run of testenv.Small last a few seconds: long enough for
// the application to step in while it works.
var slowRun = engine.Config{Concurrency: 2, BatchSlices: 1, SleepBetweenSlices: 25 * time.Millisecond}

// progress counts the slices done by every engine of a test and starts
// the cron watch when the first engine has joined the run (it holds the
// lock from then on), stopping it at the last slice (the lock is still
// held while the stamp follows).
type progress struct {
	t       *testing.T
	url     string
	total   atomic.Int64
	done    atomic.Int64
	started sync.Once
	watch   *cronWatch
	reached map[int64]chan struct{} // closed when done reaches the key
	mu      sync.Mutex
}

func newProgress(t *testing.T, url string) *progress {
	return &progress{t: t, url: url, reached: map[int64]chan struct{}{}}
}

// at returns a channel closed once n slices are done.
func (p *progress) at(n int64) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reached[n] == nil {
		p.reached[n] = make(chan struct{})
	}
	return p.reached[n]
}

func (p *progress) onEvent(ev engine.Event) {
	switch ev.Kind {
	case engine.RunStarted:
		p.started.Do(func() {
			p.total.Store(ev.Run.SlicesTotal)
			p.watch = startCronWatch(p.t, p.url)
		})
	case engine.SliceDone:
		n := p.done.Add(1)
		if n == p.total.Load() {
			p.watch.stop()
		}
		p.mu.Lock()
		if ch := p.reached[n]; ch != nil {
			close(ch)
		}
		p.mu.Unlock()
	}
}

// requireCronStayedOut fails the test if the cron job got the lock while
// the run worked.
func (p *progress) requireCronStayedOut() {
	p.t.Helper()
	if p.watch == nil {
		p.t.Fatal("the run never started")
	}
	p.watch.stop()
	ticks, ran, tries, hits := p.watch.result()
	if ticks == 0 || tries == 0 {
		p.t.Fatalf("the cron watch made %d ticks and %d tries: nothing was checked", ticks, tries)
	}
	if ran > 0 || hits > 0 {
		p.t.Fatalf("the cron job got the lock while the run worked: its entry ran %d of %d ticks, the try-lock got it %d of %d times",
			ran, ticks, hits, tries)
	}
	p.t.Logf("cron stayed out: %d ticks of the cron entry, %d try-locks", ticks, tries)
}

// cronWatch calls the cron entry every 100 ms, as pg_cron would if it ran
// that often, and tries the lock as the cron entry does in a tight loop.
// The entry signals a skip only by returning 0, as it also does with
// nothing to do: it ran if it moved last_run_started_at.
type cronWatch struct {
	stopped     atomic.Bool
	wg          sync.WaitGroup
	ticks, ran  atomic.Int64
	tries, hits atomic.Int64
	once        sync.Once
	stopCh      chan struct{}
}

func startCronWatch(t *testing.T, url string) *cronWatch {
	w := &cronWatch{stopCh: make(chan struct{})}
	ctx := context.Background()
	tick, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Error(err)
		return w
	}
	try, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Error(err)
		return w
	}
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		defer tick.Close(ctx)
		for !w.stopped.Load() {
			var before, after *time.Time
			_ = tick.QueryRow(ctx, `SELECT last_run_started_at FROM task_usage_hourly_rollup_state`).Scan(&before)
			if _, err := tick.Exec(ctx, `SELECT rollup_task_usage_hourly()`); err != nil {
				t.Errorf("cron tick: %v", err)
				return
			}
			_ = tick.QueryRow(ctx, `SELECT last_run_started_at FROM task_usage_hourly_rollup_state`).Scan(&after)
			if !w.stopped.Load() {
				w.ticks.Add(1)
				if after != nil && (before == nil || !after.Equal(*before)) {
					w.ran.Add(1)
				}
			}
			select {
			case <-w.stopCh:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		defer try.Close(ctx)
		for !w.stopped.Load() {
			var got bool
			if err := try.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(fixture.AppLockKey)).Scan(&got); err != nil {
				t.Errorf("try-lock: %v", err)
				return
			}
			// A try that started before the stop was made while the
			// run held the lock; one after may find it released.
			if !w.stopped.Load() {
				w.tries.Add(1)
				if got {
					w.hits.Add(1)
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return w
}

func (w *cronWatch) stop() {
	w.once.Do(func() {
		w.stopped.Store(true)
		close(w.stopCh)
	})
}

func (w *cronWatch) result() (ticks, ran, tries, hits int64) {
	w.wg.Wait()
	return w.ticks.Load(), w.ran.Load(), w.tries.Load(), w.hits.Load()
}

// biggestWorkspaces returns the n workspaces with the most counted usage.
func biggestWorkspaces(t *testing.T, pool *pgxpool.Pool, n int) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT a.workspace_id::text FROM task_usage u
		JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		WHERE t.runtime_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT $1`, n)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ws) != n {
		t.Fatalf("workspaces %v: %v", ws, err)
	}
	return ws
}

// deleteWorkspace runs the application's workspace delete as soon as ready
// is closed and reports its error and how long it took.
func deleteWorkspace(t *testing.T, url, ws string, ready <-chan struct{}) <-chan error {
	out := make(chan error, 1)
	conn := testenv.Conn(t, url)
	go func() {
		<-ready
		start := time.Now()
		err := fixture.DeleteWorkspace(context.Background(), conn, ws)
		t.Logf("workspace delete took %s", time.Since(start).Round(time.Millisecond))
		out <- err
	}()
	return out
}

func requireNoRollupOf(t *testing.T, pool *pgxpool.Pool, ws string) {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM task_usage_hourly WHERE workspace_id = $1`, ws).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("workspace %s deleted during the run still has %d rollup rows", ws, n)
	}
}

// The application's workspace delete, waiting for lock 4246 with its 10 s
// lock timeout, succeeds while a run works: the run yields the lock to it
// and carries on. No slice fails, the deleted workspace's buckets are gone
// at the end, the cron job never got in, and the rollup equals the oracle.
func TestWorkspaceDeleteDuringRun(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ws := biggestWorkspaces(t, pool, 1)[0]
	p := newProgress(t, url)
	cfg := slowRun
	cfg.OnEvent = p.onEvent
	deleted := deleteWorkspace(t, url, ws, p.at(5))
	res := run(t, testenv.Engine(t, url, nil, cfg))
	if err := <-deleted; err != nil {
		t.Fatalf("the application's workspace delete failed during the run: %v", err)
	}
	p.requireCronStayedOut()
	if res.Outcome.State != checkpoint.StateDone || res.Outcome.Counts.Failed != 0 {
		t.Fatalf("run ended %s with %d failed slices", res.Outcome.State, res.Outcome.Counts.Failed)
	}
	requireNoRollupOf(t, pool, ws)
	testenv.RequireOracle(t, pool)
}

// Three processes work on one run; workspace deletes during it succeed,
// every process yields and resumes, the cron job never gets in.
func TestThreeProcessesYieldTogether(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	victims := biggestWorkspaces(t, pool, 2)
	p := newProgress(t, url)
	first := deleteWorkspace(t, url, victims[0], p.at(6))
	second := deleteWorkspace(t, url, victims[1], p.at(40))
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		cfg := slowRun
		cfg.OnEvent = p.onEvent
		e := testenv.Engine(t, url, nil, cfg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.Run(context.Background())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("process %d: %v", i, err)
		}
	}
	for _, deleted := range []<-chan error{first, second} {
		if err := <-deleted; err != nil {
			t.Fatalf("the application's workspace delete failed during the run: %v", err)
		}
	}
	p.requireCronStayedOut()
	for _, ws := range victims {
		requireNoRollupOf(t, pool, ws)
	}
	if got := watermark(t, pool); got.Equal(epoch) {
		t.Fatal("no process stamped the watermark")
	}
	testenv.RequireOracle(t, pool)
}

// A serial-style session lock (pg_advisory_lock(4246), as the serial
// backfill command takes it) requested while a run works is granted within
// seconds and pauses the run while held; status names it; the run resumes
// once it is released. (Held 6 s here rather than the minute a serial
// command would, to keep the suite fast.)
func TestSessionLockPausesRun(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	p := newProgress(t, url)
	cfg := slowRun
	cfg.OnEvent = p.onEvent
	e := testenv.Engine(t, url, nil, cfg)
	ended := make(chan error, 1)
	go func() {
		_, err := e.Run(context.Background())
		ended <- err
	}()
	<-p.at(5)

	ctx := context.Background()
	holder := testenv.Conn(t, url)
	// Bounded, so a run that never yields fails the test rather than hangs it.
	if _, err := holder.Exec(ctx, `SET application_name = 'serial-backfill'; SET lock_timeout = '10s'`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(fixture.AppLockKey)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the session lock took %s to be granted", took)
	}
	time.Sleep(300 * time.Millisecond) // a slice that committed as the lock was granted reports
	paused := p.done.Load()
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	latest, err := store.LatestRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Status(ctx, latest)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != checkpoint.StateRunning || st.YieldingTo == nil || st.YieldingTo.PID != int(holder.PgConn().PID()) ||
		st.YieldingTo.ApplicationName != "serial-backfill" || !st.YieldingTo.Granted {
		t.Errorf("status while yielding: state %s, yielding to %+v", st.State, st.YieldingTo)
	}
	time.Sleep(6 * time.Second)
	if n := p.done.Load(); n != paused {
		t.Errorf("%d slices done while the session lock was held", n-paused)
	}
	select {
	case err := <-ended:
		t.Fatalf("the run ended while the session lock was held: %v", err)
	default:
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(fixture.AppLockKey)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("run after the session lock: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the run did not resume after the session lock was released")
	}
	p.requireCronStayedOut()
	testenv.RequireOracle(t, pool)
}
