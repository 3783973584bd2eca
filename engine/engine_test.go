package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func run(t *testing.T, e *engine.Engine) *engine.Result {
	t.Helper()
	res, err := e.Run(context.Background())
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return res
}

func watermark(t *testing.T, q job.Querier) time.Time {
	t.Helper()
	at, err := fixture.Watermark(context.Background(), q)
	if err != nil || at == nil {
		t.Fatalf("watermark: %v %v", at, err)
	}
	return *at
}

var epoch = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

// The rollup equals the oracle after a run, whatever the concurrency, on a
// history with every edge case the generator guarantees.
func TestRollupMatchesOracle(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]engine.Config{
		"concurrency=1":            {Concurrency: 1},
		"concurrency=8":            {Concurrency: 8},
		"unbatched":                {Concurrency: 4, BatchSlices: 1},
		"cut-months-small-batches": {Concurrency: 3, MaxSliceRows: 60, BatchRows: 200},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			gen := fixture.Config{Seed: 11, Workspaces: 40, Months: 8, Rows: 12000, Skew: 1.2}
			url := testenv.DB(t, &gen)
			pool := testenv.Pool(t, url)
			res := run(t, testenv.Engine(t, url, nil, cfg))
			if !res.Planned || res.Executed == 0 || res.Executed != res.Run.SlicesTotal {
				t.Fatalf("executed %d of %d slices (planned %v)", res.Executed, res.Run.SlicesTotal, res.Planned)
			}
			if testenv.RollupRows(t, pool) == 0 {
				t.Fatal("empty rollup")
			}
			testenv.RequireOracle(t, pool)
		})
	}
}

// --rate counts slices, not batches: N slices at R slices/s with a bucket
// of B take at least (N-B)/R, and no batch holds more than B slices.
func TestRateLimitsSlices(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	const rate, burst = 200.0, 4
	start := time.Now()
	res := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 4, Rate: rate, Burst: burst}))
	took := time.Since(start)
	n := res.Executed
	if n < 10*burst {
		t.Fatalf("only %d slices: too few to see the rate", n)
	}
	if least := time.Duration(float64(n-burst) / rate * float64(time.Second)); took < least {
		t.Errorf("%d slices at --rate %g --burst %d took %s; the rate allows no less than %s", n, rate, burst, took, least)
	}
	// The slices of one claim share its transaction's now() as started_at.
	var biggest int
	err := pool.QueryRow(context.Background(), `
		SELECT max(n) FROM (SELECT count(*) AS n FROM shardfill.slice GROUP BY started_at) claims`).Scan(&biggest)
	if err != nil {
		t.Fatal(err)
	}
	if biggest > burst {
		t.Errorf("a batch held %d slices; with --rate it may hold --burst (%d) at most", biggest, burst)
	}
	testenv.RequireOracle(t, pool)
}

// A deadline that comes before the rate limiter's next token stops the run
// as interrupted, like any cancellation, not as failed.
func TestDeadlineWhileThrottledInterrupts(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 1, Rate: 0.1, Burst: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.Run(ctx); !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("run ended with %v, want an interruption", err)
	}
	got, err := checkpoint.New(testenv.Pool(t, url), "shardfill", fixture.AppLockKey).LatestRun(context.Background())
	if err != nil || got == nil || got.State != checkpoint.StateInterrupted {
		t.Fatalf("run stored as %+v (%v), want %s", got, err, checkpoint.StateInterrupted)
	}
}

// The session TimeZone must not move a row to another bucket or slice.
func TestTimeZoneChangesNothing(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ALTER DATABASE `+db+` SET timezone = 'Asia/Kolkata'`); err != nil {
		t.Fatal(err)
	}
	e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 4})
	// Prove the engine's sessions really run in the odd zone.
	cfg, _ := pgxpool.ParseConfig(url)
	tzPool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tzPool.Close()
	var tz string
	if err := tzPool.QueryRow(ctx, `SHOW timezone`).Scan(&tz); err != nil || tz != "Asia/Kolkata" {
		t.Fatalf("session timezone %q (%v), want Asia/Kolkata", tz, err)
	}
	run(t, e)
	testenv.RequireOracle(t, pool)
	// And every slice is a whole UTC month.
	var odd int
	err = pool.QueryRow(ctx, `SELECT count(*) FROM shardfill.slice
		WHERE from_ts <> date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`).Scan(&odd)
	if err != nil || odd != 0 {
		t.Fatalf("%d slices not on UTC month starts (%v)", odd, err)
	}
}

// A --new-run over a rollup holding wrong, stale and extra rows ends equal
// to the oracle.
func TestNewRunRepairsWrongStaleAndExtraRows(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	run(t, testenv.Engine(t, url, nil, engine.Config{}))

	mustExec(t, pool, `UPDATE task_usage_hourly SET input_tokens = input_tokens + 7, event_count = 0
		WHERE ctid IN (SELECT ctid FROM task_usage_hourly ORDER BY bucket_hour LIMIT 20)`) // wrong
	// Stale: raw rows of one workspace-month vanish after the rollup was built
	// (directly, bypassing the dirty-queue trigger like a bulk purge would).
	mustExec(t, pool, `ALTER TABLE task_usage DISABLE TRIGGER USER`)
	mustExec(t, pool, `DELETE FROM task_usage u USING agent_task_queue t, agent a
		WHERE u.task_id = t.id AND t.agent_id = a.id
		  AND (a.workspace_id, date_trunc('month', u.created_at AT TIME ZONE 'UTC')) =
		      (SELECT workspace_id, date_trunc('month', bucket_hour AT TIME ZONE 'UTC') FROM task_usage_hourly
		       ORDER BY bucket_hour DESC LIMIT 1)`)
	mustExec(t, pool, `ALTER TABLE task_usage ENABLE TRIGGER USER`)
	// Extra: a bucket for a workspace that never had usage, and one for a
	// provider that never ran in an existing bucket.
	mustExec(t, pool, `INSERT INTO task_usage_hourly (bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
			input_tokens, event_count, task_count)
		SELECT '2020-01-01T05:00:00Z', w.id, gen_random_uuid(), gen_random_uuid(), NULL, 'ghost', 'ghost', 1, 1, 1
		FROM workspace w WHERE NOT EXISTS (SELECT 1 FROM agent a JOIN agent_task_queue t ON t.agent_id = a.id
			JOIN task_usage u ON u.task_id = t.id WHERE a.workspace_id = w.id) LIMIT 1`)
	mustExec(t, pool, `INSERT INTO task_usage_hourly (bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
			input_tokens, event_count, task_count)
		SELECT bucket_hour, workspace_id, runtime_id, agent_id, project_id, 'ghost-' || md5(random()::text), model, 5, 1, 1
		FROM task_usage_hourly ORDER BY bucket_hour LIMIT 3`)
	if _, total, err := fixture.Diff(ctx, pool, 1); err != nil || total < 20 {
		t.Fatalf("setup: expected a damaged rollup, diff total %d (%v)", total, err)
	}

	res := run(t, testenv.Engine(t, url, nil, engine.Config{NewRun: true}))
	if !res.Planned || res.Run.ID < 2 {
		t.Fatalf("expected a new run, got run %d planned=%v", res.Run.ID, res.Planned)
	}
	testenv.RequireOracle(t, pool)
}

// A second run after a finished one executes nothing and touches no row.
func TestSecondRunIsNoop(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	first := run(t, testenv.Engine(t, url, nil, engine.Config{}))
	before := rollupChecksum(t, pool, "")
	mark := watermark(t, pool)

	second := run(t, testenv.Engine(t, url, nil, engine.Config{}))
	if !second.NothingToDo || second.Executed != 0 || second.Run.ID != first.Run.ID {
		t.Fatalf("second run: nothing=%v executed=%d run=%d (first %d)", second.NothingToDo, second.Executed, second.Run.ID, first.Run.ID)
	}
	if after := rollupChecksum(t, pool, ""); after != before {
		t.Fatal("second run changed rollup rows")
	}
	if got := watermark(t, pool); !got.Equal(mark) {
		t.Fatalf("second run moved the watermark %s -> %s", mark, got)
	}
}

// A run cancelled midway and then resumed ends equal to the oracle; slices
// finished before the cancel are not redone; no watermark in between.
func TestCancelThenResume(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &fixture.Config{Seed: 5, Workspaces: 60, Months: 6, Rows: 8000, Skew: 0.8})
	pool := testenv.Pool(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	var done atomic.Int64
	e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 3, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceDone && done.Add(1) == 15 {
			cancel()
		}
	}})
	res, err := e.Run(ctx)
	if !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if got := watermark(t, pool); !got.Equal(epoch) {
		t.Fatalf("watermark stamped by an interrupted run: %s", got)
	}
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	c, err := store.Counts(context.Background(), res.Run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c.Done < 15 || c.Done == c.Total || c.Running != 0 {
		t.Fatalf("after cancel: %+v; want >=15 done, some pending, none running (claims released)", c)
	}
	run1, _ := store.GetRun(context.Background(), res.Run.ID)
	if run1.State != checkpoint.StateInterrupted {
		t.Fatalf("run state %q, want interrupted", run1.State)
	}
	if !testenv.TryCronLock(t, url) {
		t.Fatal("cron lock still held after cancel")
	}
	doneBefore := rollupChecksum(t, pool, "done")

	var redone atomic.Int64
	doneIDs := map[int64]bool{}
	rows, _ := pool.Query(context.Background(), `SELECT id FROM shardfill.slice WHERE state = 'done'`)
	for rows.Next() {
		var id int64
		_ = rows.Scan(&id)
		doneIDs[id] = true
	}
	var mu sync.Mutex
	resumed := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 3, OnEvent: func(ev engine.Event) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Kind == engine.SliceDone && doneIDs[ev.Slice.ID] {
			redone.Add(1)
		}
	}}))
	if resumed.Planned || resumed.Run.ID != res.Run.ID {
		t.Fatalf("resume planned a new run %d", resumed.Run.ID)
	}
	if redone.Load() != 0 || resumed.Executed != c.Total-c.Done {
		t.Fatalf("resume executed %d slices (%d already done before); want exactly the %d unfinished",
			resumed.Executed, redone.Load(), c.Total-c.Done)
	}
	if after := rollupChecksum(t, pool, "done-before"); after != doneBefore {
		t.Fatal("resume rewrote rows of slices finished before the cancel")
	}
	testenv.RequireOracle(t, pool)
	if got := watermark(t, pool); got.Equal(epoch) {
		t.Fatal("watermark not stamped after resume")
	}
}

// The watermark is stamped once, in the transaction that sees every slice
// done, with now() - 5 minutes as of planning.
func TestWatermarkStampedOnceAtPlanTime(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	// Record every change of the watermark with what its transaction saw.
	mustExec(t, pool, `CREATE TABLE stamp_log (watermark_at timestamptz, unfinished bigint, at timestamptz DEFAULT clock_timestamp())`)
	mustExec(t, pool, `CREATE FUNCTION log_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO stamp_log (watermark_at, unfinished)
			SELECT NEW.watermark_at, count(*) FILTER (WHERE state <> 'done') FROM shardfill.slice;
			RETURN NEW;
		END $$`)
	mustExec(t, pool, `CREATE TRIGGER log_stamp AFTER UPDATE ON task_usage_hourly_rollup_state FOR EACH ROW EXECUTE FUNCTION log_stamp()`)

	var seenEarly atomic.Bool
	res := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 4, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceDone && !watermark(t, pool).Equal(epoch) {
			seenEarly.Store(true)
		}
	}}))
	if seenEarly.Load() {
		t.Fatal("watermark moved while slices were still running")
	}
	var n int
	var at time.Time
	var unfinished int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) OVER (), watermark_at, unfinished FROM stamp_log`).Scan(&n, &at, &unfinished); err != nil {
		t.Fatal(err)
	}
	want := res.Run.PlannedAt.Add(-5 * time.Minute)
	if n != 1 || unfinished != 0 || !at.Equal(want) || !at.Equal(res.Run.WatermarkTarget) {
		t.Fatalf("stamps=%d unfinished=%d at=%s; want one stamp, no unfinished slice, at %s", n, unfinished, at, want)
	}
	if got := watermark(t, pool); !got.Equal(want) {
		t.Fatalf("watermark %s, want %s", got, want)
	}
	// A later run of the same plan never stamps again.
	run(t, testenv.Engine(t, url, nil, engine.Config{}))
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM stamp_log`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("stamps after a second run: %d (%v)", n, err)
	}
}

// While a run works the cron job cannot take its lock; after a normal end,
// an error and a cancel it can.
func TestCronLockHeldOnlyWhileWorking(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)

	var checked, heldFree atomic.Int64
	var cronRan atomic.Int64
	probe := func(ev engine.Event) {
		if ev.Kind != engine.SliceDone || checked.Add(1) > 3 {
			return
		}
		if !testenv.HeldCronLock(t, url) {
			heldFree.Add(1)
		}
		var n int64
		if err := pool.QueryRow(context.Background(), `SELECT rollup_task_usage_hourly()`).Scan(&n); err == nil && n != 0 {
			cronRan.Add(1)
		}
	}
	run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, OnEvent: probe}))
	if checked.Load() == 0 || heldFree.Load() != 0 || cronRan.Load() != 0 {
		t.Fatalf("probes %d: lock free %d times, cron ran %d times during the run", checked.Load(), heldFree.Load(), cronRan.Load())
	}
	if !testenv.TryCronLock(t, url) {
		t.Fatal("lock held after a normal end")
	}

	// An error end: one workspace's slices fail permanently.
	var ws string
	if err := pool.QueryRow(context.Background(), `SELECT workspace_id::text FROM task_usage_hourly LIMIT 1`).Scan(&ws); err != nil {
		t.Fatal(err)
	}
	_, err := testenv.Engine(t, url, &testenv.FailingJob{Batched: testenv.Rollup(t, testenv.Pool(t, url)), Workspace: ws}, engine.Config{NewRun: true}).Run(context.Background())
	var failed *engine.FailedError
	if !errors.As(err, &failed) || failed.Failed == 0 {
		t.Fatalf("want FailedError, got %v", err)
	}
	if !testenv.TryCronLock(t, url) {
		t.Fatal("lock held after a failed run")
	}

	// A cancel.
	ctx, cancel := context.WithCancel(context.Background())
	e := testenv.Engine(t, url, nil, engine.Config{NewRun: true, OnEvent: func(ev engine.Event) { cancel() }})
	if _, err := e.Run(ctx); !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if !testenv.TryCronLock(t, url) {
		t.Fatal("lock held after a cancel")
	}
}

// A permanent error fails its slices only: the rest are done, the run is
// failed, no watermark; a run after the cause is fixed completes it.
func TestFailedSlicesThenRetry(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	var ws string
	err := pool.QueryRow(context.Background(), `SELECT a.workspace_id::text FROM task_usage u
		JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		WHERE t.runtime_id IS NOT NULL LIMIT 1`).Scan(&ws)
	if err != nil {
		t.Fatal(err)
	}
	res, err := testenv.Engine(t, url, &testenv.FailingJob{Batched: testenv.Rollup(t, testenv.Pool(t, url)), Workspace: ws}, engine.Config{MaxAttempts: 3}).Run(context.Background())
	var failed *engine.FailedError
	if !errors.As(err, &failed) {
		t.Fatalf("want FailedError, got %v", err)
	}
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	st, err := store.Status(context.Background(), mustRun(t, store, res.Run.ID))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != checkpoint.StateFailed || st.SlicesFailed == 0 || st.SlicesDone+st.SlicesFailed != st.SlicesTotal ||
		len(st.FailedSlices) != int(st.SlicesFailed) || st.WatermarkAt != nil {
		t.Fatalf("status after failure: %+v", st)
	}
	for _, f := range st.FailedSlices {
		if f.Workspace != ws || f.Error == "" || f.Attempts != 1 {
			t.Fatalf("failed slice %+v: want workspace %s, an error, one claim (permanent errors are not retried)", f, ws)
		}
	}
	if got := watermark(t, pool); !got.Equal(epoch) {
		t.Fatal("watermark stamped by a failed run")
	}
	retry := run(t, testenv.Engine(t, url, nil, engine.Config{}))
	if retry.Run.ID != res.Run.ID || retry.Executed != st.SlicesFailed || !retry.Outcome.Stamped {
		t.Fatalf("retry: run %d executed %d (want %d failed slices of run %d), stamped %v",
			retry.Run.ID, retry.Executed, st.SlicesFailed, res.Run.ID, retry.Outcome.Stamped)
	}
	testenv.RequireOracle(t, pool)
}

// An empty task_usage plans no slice and just stamps the watermark.
func TestEmptyHistoryJustStamps(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, nil)
	pool := testenv.Pool(t, url)
	res := run(t, testenv.Engine(t, url, nil, engine.Config{}))
	if res.Run.SlicesTotal != 0 || !res.Outcome.Stamped || watermark(t, pool).Equal(epoch) {
		t.Fatalf("empty history: %d slices, stamped %v", res.Run.SlicesTotal, res.Outcome.Stamped)
	}
}

// A half-migrated database is refused before anything is written, and
// every missing piece is named.
func TestPreflightNamesEverythingMissing(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	mustExec(t, pool, `DROP FUNCTION rollup_task_usage_hourly()`)
	mustExec(t, pool, `DROP FUNCTION rollup_task_usage_hourly_window(timestamptz, timestamptz)`)
	mustExec(t, pool, `DROP TABLE task_usage_hourly_dirty CASCADE`)
	mustExec(t, pool, `ALTER TABLE task_usage_hourly DROP COLUMN uncosted_input_tokens`)
	_, err := testenv.Engine(t, url, nil, engine.Config{}).Run(context.Background())
	var missing *job.MissingError
	if !errors.As(err, &missing) {
		t.Fatalf("want MissingError, got %v", err)
	}
	for _, want := range []string{"function rollup_task_usage_hourly()", "function rollup_task_usage_hourly_window()",
		"table task_usage_hourly_dirty", "column task_usage_hourly.uncosted_input_tokens"} {
		if !slices.Contains(missing.Missing, want) {
			t.Errorf("missing %q not named in %v", want, missing.Missing)
		}
	}
	requireNothingWritten(t, pool)
}

// --months-back without --force-partial is refused when older history
// exists; with it, only the range is backfilled.
func TestMonthsBack(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	_, err := testenv.Engine(t, url, nil, engine.Config{MonthsBack: 2}).Run(context.Background())
	var cfgErr *engine.ConfigError
	if !errors.As(err, &cfgErr) {
		t.Fatalf("want ConfigError, got %v", err)
	}
	requireNothingWritten(t, pool)

	res := run(t, testenv.Engine(t, url, nil, engine.Config{MonthsBack: 2, ForcePartial: true}))
	if res.Run.RangeFrom == nil {
		t.Fatal("run has no range")
	}
	from := *res.Run.RangeFrom
	if !from.Equal(shard.MonthsBackStart(res.Run.PlannedAt, 2)) {
		t.Fatalf("range starts %s", from)
	}
	var older int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM task_usage_hourly WHERE bucket_hour < $1`, from).Scan(&older); err != nil || older != 0 {
		t.Fatalf("%d rollup rows before the range (%v)", older, err)
	}
	if _, total, err := fixture.DiffRange(context.Background(), pool, &from, nil, 5); err != nil || total != 0 || testenv.RollupRows(t, pool) == 0 {
		t.Fatalf("range differs from oracle: %d (%v)", total, err)
	}
}

// Plan reads only: no checkpoint schema, no rollup row, no watermark.
func TestPlanWritesNothing(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	p, err := testenv.Engine(t, url, nil, engine.Config{}).Plan(context.Background(), 5)
	if err != nil {
		t.Fatal(err)
	}
	if p.Slices == 0 || p.Rows == 0 || len(p.Largest) != 5 || p.Largest[0].EstRows < p.Largest[4].EstRows {
		t.Fatalf("plan: %+v", p)
	}
	requireNothingWritten(t, pool)
}

func requireNothingWritten(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var schema bool
	if err := pool.QueryRow(context.Background(), `SELECT to_regnamespace('shardfill') IS NOT NULL`).Scan(&schema); err != nil || schema {
		t.Fatalf("checkpoint schema exists: %v (%v)", schema, err)
	}
	if n := testenv.RollupRows(t, pool); n != 0 {
		t.Fatalf("%d rollup rows written", n)
	}
	if got := watermark(t, pool); !got.Equal(epoch) {
		t.Fatalf("watermark moved to %s", got)
	}
}

func mustRun(t *testing.T, s *checkpoint.Store, id int64) *checkpoint.Run {
	t.Helper()
	r, err := s.GetRun(context.Background(), id)
	if err != nil || r == nil {
		t.Fatalf("run %d: %v", id, err)
	}
	return r
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// rollupChecksum digests rollup rows including updated_at, so any rewrite
// shows. scope "done"/"done-before" limits it to the buckets of slices that
// were done when first called (recorded in a temp table on first use).
func rollupChecksum(t *testing.T, pool *pgxpool.Pool, scope string) string {
	t.Helper()
	ctx := context.Background()
	if scope == "done" {
		mustExec(t, pool, `CREATE TABLE done_before AS SELECT workspace_id, from_ts, to_ts FROM shardfill.slice WHERE state = 'done'`)
	}
	filter := ``
	if scope != "" {
		filter = `WHERE EXISTS (SELECT 1 FROM done_before d WHERE d.workspace_id = h.workspace_id
			AND h.bucket_hour >= d.from_ts AND h.bucket_hour < d.to_ts)`
	}
	var sum string
	var n int64
	err := pool.QueryRow(ctx, `SELECT count(*), coalesce(md5(string_agg(h::text, '|' ORDER BY h::text)), '') FROM task_usage_hourly h `+filter).Scan(&n, &sum)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("checksum over no rows (scope %q)", scope)
	}
	return sum
}

// While another session holds lock 4246 exclusively (a cron tick, or the
// serial backfill command started by mistake) a run writes nothing and
// waits; once the lock is released it proceeds.
func TestWaitsWhileCronLockHeldExclusively(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	holder := testenv.Conn(t, url)
	ctx := context.Background()
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(4246)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	e := testenv.Engine(t, url, nil, engine.Config{})
	go func() {
		_, err := e.Run(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("run ended while the lock was held exclusively: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}
	if n := testenv.RollupRows(t, pool); n != 0 {
		t.Fatalf("%d rollup rows written while the lock was held", n)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock(4246)`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("run did not proceed after the lock was released")
	}
	testenv.RequireOracle(t, pool)
}

// BenchmarkRun backfills a 20 000-row history from scratch per iteration
// (a new run over the previous one's rollup), at the pool sizes operators
// pick from; rows/s is reported next to the time.
func BenchmarkRun(b *testing.B) {
	gen := fixture.Config{Seed: 21, Workspaces: 300, Months: 12, Rows: 20_000, Skew: 1.1}
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			url := testenv.DB(b, &gen)
			pool := testenv.Pool(b, url)
			var rows int64
			if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM task_usage`).Scan(&rows); err != nil {
				b.Fatal(err)
			}
			cfg := engine.Config{Concurrency: conc, NewRun: true, Logger: testenv.Quiet}
			e, err := engine.New(pool, "shardfill", testenv.Rollup(b, pool), &cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if _, err := e.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// stallJob blocks in Queue for the first batch of several slices until
// released, so a test can take part of that batch over meanwhile.
type stallJob struct {
	*sqljob.Batched
	once     *sync.Once
	stalled  chan shard.Batch
	released chan struct{}
}

func (s *stallJob) Queue(b *pgx.Batch, w shard.Batch, written *int64) {
	if len(w.Slices) > 1 {
		first := false
		s.once.Do(func() { first = true })
		if first {
			s.stalled <- w
			<-s.released
		}
	}
	s.Batched.Queue(b, w, written)
}

// A worker whose batch was partly taken over (its lease ran out while it
// stalled) drops the lost slice, hands the rest back, and the run still
// ends done, stamped and equal to the oracle.
func TestPartlyTakenOverBatchIsHandedBack(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	j := &stallJob{Batched: testenv.Rollup(t, pool), once: &sync.Once{}, stalled: make(chan shard.Batch, 1), released: make(chan struct{})}
	var lost atomic.Int64
	e := testenv.Engine(t, url, j, engine.Config{Concurrency: 2, Lease: time.Hour, BatchRows: 400, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceLost {
			lost.Add(1)
		}
	}})
	type outcome struct {
		res *engine.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := e.Run(context.Background())
		done <- outcome{res, err}
	}()
	var batch shard.Batch
	select {
	case batch = <-j.stalled:
	case o := <-done:
		t.Fatalf("run ended without a multi-slice batch: %v", o.err)
	}
	victim := batch.Slices[0].ID
	mustExec(t, pool, fmt.Sprintf(`UPDATE shardfill.slice SET lease_until = now() - interval '1 second' WHERE id = %d AND run_id = %d`, victim, batch.Slices[0].RunID))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var state string
		if err := pool.QueryRow(context.Background(), `SELECT state FROM shardfill.slice WHERE id = $1 AND run_id = $2`, victim, batch.Slices[0].RunID).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if state == "done" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other worker never took the expired slice over")
		}
	}
	close(j.released)
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if !o.res.Outcome.Stamped || lost.Load() == 0 {
		t.Fatalf("stamped %v, lost events %d: want a stamped run after a lost batch", o.res.Outcome.Stamped, lost.Load())
	}
	testenv.RequireOracle(t, pool)
}

// A run left 'running' by a process that was killed (it could not record
// anything) is reported as interrupted: no process of its schema is alive.
func TestStatusReportsKilledRunAsInterrupted(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	res := run(t, testenv.Engine(t, url, nil, engine.Config{}))
	mustExec(t, pool, `UPDATE shardfill.run SET state = 'running'`) // as a kill -9 mid-run leaves it
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	st, err := store.Status(context.Background(), mustRun(t, store, res.Run.ID))
	if err != nil || st.State != checkpoint.StateInterrupted {
		t.Fatalf("status state %q (%v), want interrupted", st.State, err)
	}
	// A session that holds the cron lock but works for no run of this
	// schema (another schema's run, a repair, a leaked pooled lock) does
	// not make it running.
	holder := testenv.Conn(t, url)
	if _, err := holder.Exec(context.Background(), `SELECT pg_advisory_lock_shared(4246)`); err != nil {
		t.Fatal(err)
	}
	if st, err = store.Status(context.Background(), mustRun(t, store, res.Run.ID)); err != nil || st.State != checkpoint.StateInterrupted {
		t.Fatalf("status state %q (%v) with only a foreign holder of the cron lock, want interrupted", st.State, err)
	}
	// Membership locks live in the lock connection's open transaction.
	if _, err := holder.Exec(context.Background(), `BEGIN`); err != nil {
		t.Fatal(err)
	}
	other := checkpoint.New(pool, "other_schema", fixture.AppLockKey)
	if err := other.Join(context.Background(), holder); err != nil {
		t.Fatal(err)
	}
	if st, err = store.Status(context.Background(), mustRun(t, store, res.Run.ID)); err != nil || st.State != checkpoint.StateInterrupted {
		t.Fatalf("status state %q (%v) with a worker of another schema, want interrupted", st.State, err)
	}
	// While a process of this schema works (it holds the membership lock,
	// whether or not it holds a claim right now), it is running.
	if err := store.Join(context.Background(), holder); err != nil {
		t.Fatal(err)
	}
	if st, err = store.Status(context.Background(), mustRun(t, store, res.Run.ID)); err != nil || st.State != checkpoint.StateRunning {
		t.Fatalf("status state %q (%v) with a worker of this schema, want running", st.State, err)
	}
}
