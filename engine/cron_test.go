package engine_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// gatedJob holds every batch gateHold on the server until the gate
// opens, so a run lasts as long as the test needs it to.
type gatedJob struct {
	*sqljob.Batched
	open atomic.Bool
}

const gateHold = 2 * time.Second

func (g *gatedJob) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	if !g.open.Load() {
		tx.Queue(`SELECT pg_sleep($1)`, gateHold.Seconds())
	}
	g.Batched.Queue(tx, batch, written)
}

// TestRealCronHandOver is SLOW (one to two minutes: it waits for pg_cron's
// minute ticks; skipped with -short). The real pg_cron runs the cron entry
// rollup_task_usage_hourly() every minute while a run works and writers
// add usage rows: the ticks during the run no-op (the state row's
// last_run_started_at and watermark do not move), and within two ticks
// after the stamp the rollup equals the oracle, the rows written during
// the run included.
//
// The writers date their rows five minutes back (created_at and
// updated_at), which is when the cron entry, which leaves the last five
// minutes to transactions still in flight, takes them; they are still
// after the run's watermark (planning's now() - 5 minutes).
func TestRealCronHandOver(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: waits for pg_cron's minute ticks")
	}
	t.Parallel()
	const db = "cron_app"
	srv := pgtest.PrivateServerWith(t, pgserver.Options{CronDatabase: db})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	url := srv.URL(db)
	pool := testenv.Pool(t, url)
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.Generate(ctx, pool, testenv.Small); err != nil {
		t.Fatal(err)
	}
	var jobID int64
	if _, err := pool.Exec(ctx, `CREATE EXTENSION pg_cron`); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT cron.schedule('rollup', '* * * * *', 'SELECT rollup_task_usage_hourly()')`).Scan(&jobID); err != nil {
		t.Fatal(err)
	}
	type state struct {
		lastStarted *time.Time
		watermark   time.Time
	}
	readState := func() state {
		t.Helper()
		var s state
		if err := pool.QueryRow(ctx, `SELECT last_run_started_at, watermark_at FROM task_usage_hourly_rollup_state`).
			Scan(&s.lastStarted, &s.watermark); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// ticksSince waits for a tick that started after since and ended, and
	// returns when it started.
	tickAfter := func(since time.Time, stop <-chan error) time.Time {
		t.Helper()
		for {
			var started time.Time
			var status, msg string
			err := pool.QueryRow(ctx, `SELECT start_time, status, coalesce(return_message, '') FROM cron.job_run_details
				WHERE jobid = $1 AND start_time > $2 AND status IN ('succeeded', 'failed') ORDER BY start_time LIMIT 1`, jobID, since).
				Scan(&started, &status, &msg)
			if err == nil {
				if status != "succeeded" {
					t.Fatalf("cron tick at %s %s: %s", started, status, msg)
				}
				t.Logf("cron tick started %s (after %s): %s %s", started.UTC().Format(time.StampMilli), since.UTC().Format(time.StampMilli), status, msg)
				return started
			}
			if err != pgx.ErrNoRows {
				t.Fatal(err)
			}
			select {
			case err := <-stop:
				t.Fatalf("the run ended (%v) before a cron tick came during it", err)
			case <-ctx.Done():
				t.Fatalf("no cron tick after %s", since)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}

	gate := &gatedJob{Batched: testenv.Rollup(t, testenv.Pool(t, url))}
	running := make(chan int64, 1)
	e := testenv.Engine(t, url, gate, engine.Config{Concurrency: 1, BatchSlices: 1, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.RunStarted {
			running <- ev.Run.SlicesTotal
		}
	}})
	type outcome struct {
		res *engine.Result
		err error
	}
	end := make(chan outcome, 1)
	go func() {
		res, err := e.Run(ctx)
		end <- outcome{res, err}
	}()
	select {
	case slices := <-running:
		// Held at gateHold a slice, the run must outlast the next minute
		// boundary and the tick after it whenever it starts.
		if runway := time.Duration(slices) * gateHold; runway < 80*time.Second {
			t.Fatalf("%d slices last %s: too short to see a cron tick during the run", slices, runway)
		}
		t.Logf("run of %d slices started", slices)
	case o := <-end:
		t.Fatalf("the run ended before it started: %v", o.err)
	}
	// From here on the run holds the cron lock.
	var lockedAt time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&lockedAt); err != nil {
		t.Fatal(err)
	}
	before := readState()

	// Writers: usage rows of existing tasks (with a runtime, so they
	// count), in a provider of their own so the unique key never refuses.
	var written atomic.Int64
	stopWriting := make(chan struct{})
	var writers sync.WaitGroup
	writers.Add(1)
	go func() {
		defer writers.Done()
		for i := 0; ; i++ {
			select {
			case <-stopWriting:
				return
			case <-time.After(50 * time.Millisecond):
			}
			tag, err := pool.Exec(ctx, `
				INSERT INTO task_usage (id, task_id, provider, model, input_tokens, output_tokens, cost_usd_ticks, created_at, updated_at)
				SELECT gen_random_uuid(), id, 'live', 'live-' || $1::int, 100 + $1::int, 7,
				       CASE WHEN $1::int % 3 = 0 THEN NULL ELSE 40 END,
				       now() - interval '5 minutes', now() - interval '5 minutes'
				FROM agent_task_queue WHERE runtime_id IS NOT NULL ORDER BY id OFFSET $1::int % 40 LIMIT 1`, i)
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			written.Add(tag.RowsAffected())
		}
	}()
	stopWriters := sync.OnceFunc(func() {
		close(stopWriting)
		writers.Wait()
	})
	defer stopWriters()

	// A tick during the run: it ran, and it no-opped.
	stopEarly := make(chan error, 1)
	go func() {
		// Only to tell a run that ends too early from a tick that never
		// comes; the outcome goes back to end.
		o := <-end
		stopEarly <- o.err
		end <- o
	}()
	during := tickAfter(lockedAt, stopEarly)
	if after := readState(); !sameTime(after.lastStarted, before.lastStarted) || !after.watermark.Equal(before.watermark) {
		t.Fatalf("the cron tick at %s worked during the run: last_run_started_at %v -> %v, watermark %s -> %s",
			during, before.lastStarted, after.lastStarted, before.watermark, after.watermark)
	}
	t.Logf("cron tick at %s no-opped during the run", during.UTC().Format(time.TimeOnly))

	gate.open.Store(true)
	o := <-end
	stopWriters()
	if o.err != nil {
		t.Fatalf("run: %v", o.err)
	}
	if !o.res.Outcome.Stamped || !o.res.Outcome.Closed {
		t.Fatalf("run outcome %+v: not stamped by this process", o.res.Outcome)
	}
	if written.Load() == 0 {
		t.Fatal("the writers wrote nothing during the run")
	}
	var stampedAt time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&stampedAt); err != nil {
		t.Fatal(err)
	}
	stamped := readState()
	_, missing, err := fixture.Diff(ctx, pool, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d usage rows written during the run; %d rollup rows differ from the oracle at the stamp", written.Load(), missing)

	// Within two ticks after the stamp the rollup is exact.
	since := stampedAt
	for tick := 1; ; tick++ {
		since = tickAfter(since, nil)
		_, total, err := fixture.Diff(ctx, pool, 0)
		if err != nil {
			t.Fatal(err)
		}
		if total == 0 {
			after := readState()
			if after.lastStarted == nil || !after.lastStarted.After(stampedAt) || !after.watermark.After(stamped.watermark) {
				t.Fatalf("the rollup is exact but the cron job did not take over: %+v", after)
			}
			t.Logf("rollup equals the oracle after cron tick %d at %s", tick, since.UTC().Format(time.TimeOnly))
			break
		}
		if tick == 2 {
			testenv.RequireOracle(t, pool)
		}
	}
	if !stamped.watermark.Equal(o.res.Run.WatermarkTarget) {
		t.Fatalf("watermark %s after the run, want the run's target %s", stamped.watermark, o.res.Run.WatermarkTarget)
	}
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
