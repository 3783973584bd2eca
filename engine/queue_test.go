package engine_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
)

// oldQueue fills the dirty queue as the application's triggers would have
// before the run, an hour ago: keys of buckets with raw rows (which slices
// cover), and keys of a workspace's buckets no slice covers (no raw rows, no
// rollup rows), one of them before the history (and before any range).
func oldQueue(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	mustExec(t, pool, `INSERT INTO task_usage_hourly_dirty
			(bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model, enqueued_at)
		SELECT DISTINCT date_trunc('hour', u.created_at, 'UTC'), a.workspace_id, t.runtime_id, t.agent_id, i.project_id,
		       u.provider, u.model, now() - interval '1 hour'
		FROM task_usage u JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		LEFT JOIN issue i ON i.id = t.issue_id
		WHERE t.runtime_id IS NOT NULL AND u.id::text < '4'
		ON CONFLICT DO NOTHING`)
	mustExec(t, pool, `INSERT INTO task_usage_hourly_dirty
			(bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model, enqueued_at)
		SELECT b, (SELECT id FROM workspace ORDER BY id LIMIT 1), gen_random_uuid(), gen_random_uuid(), NULL, 'ghost', 'ghost',
		       now() - interval '1 hour'
		FROM unnest(ARRAY['2001-01-01T05:00:00Z', '2001-02-01T05:00:00Z', now() - interval '2 hours']::timestamptz[]) AS b`)
}

func queued(t *testing.T, pool *pgxpool.Pool, where string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM task_usage_hourly_dirty WHERE `+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A run hands over a clean queue: every key queued before its watermark
// target is gone, so the next cron tick runs and has nothing to do. With
// --months-back, the keys older than the range stay.
func TestQueueHandedOverClean(t *testing.T) {
	t.Parallel()
	gen := testenv.Small
	gen.End = time.Now().Add(-time.Hour) // no raw row near the watermark the tick starts from
	for name, cfg := range map[string]engine.Config{
		"all history": {Concurrency: 2},
		"months-back": {Concurrency: 2, MonthsBack: 2, ForcePartial: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := testenv.DB(t, &gen)
			pool := testenv.Pool(t, url)
			oldQueue(t, pool)
			if n := queued(t, pool, `true`); n < 100 {
				t.Fatalf("setup: only %d keys queued", n)
			}
			res := run(t, testenv.Engine(t, url, nil, cfg))
			if cfg.MonthsBack > 0 {
				from := *res.Run.RangeFrom
				if n, old := queued(t, pool, `true`), queued(t, pool, `bucket_hour < $1`, from); n != old || old == 0 {
					t.Fatalf("%d keys left after the run, %d of them before the range (all should be, and some)", n, old)
				}
				mustExec(t, pool, `DELETE FROM task_usage_hourly_dirty`) // the cron job's, from the older history
			} else if n := queued(t, pool, `true`); n != 0 {
				t.Fatalf("%d keys left in the queue after the run", n)
			}
			var rows int64
			if err := pool.QueryRow(context.Background(), `SELECT rollup_task_usage_hourly()`).Scan(&rows); err != nil {
				t.Fatal(err)
			}
			var started *time.Time
			var last *int64
			err := pool.QueryRow(context.Background(), `SELECT last_run_started_at, last_run_rows FROM task_usage_hourly_rollup_state`).
				Scan(&started, &last)
			if err != nil {
				t.Fatal(err)
			}
			if started == nil || last == nil || *last != 0 || rows != 0 {
				t.Fatalf("first cron tick after the run: returned %d, started %v, rows %v; want it to run and touch nothing", rows, started, last)
			}
		})
	}
}

// With the application writing through its triggers while the run works
// (usage inserted, tasks deleted), only keys queued after the watermark
// target remain, and once the cron job has caught up the rollup equals
// the oracle.
func TestQueueWithLiveWriters(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	oldQueue(t, pool)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes, failed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
			var err error
			if rng.IntN(2) == 0 {
				_, err = pool.Exec(ctx, `DELETE FROM agent_task_queue WHERE id = (
					SELECT t.id FROM agent_task_queue t JOIN task_usage u ON u.task_id = t.id
					WHERE t.runtime_id IS NOT NULL ORDER BY t.id OFFSET $1 LIMIT 1)`, rng.IntN(200))
			} else {
				_, err = pool.Exec(ctx, `INSERT INTO task_usage (id, task_id, provider, model, input_tokens, created_at)
					SELECT gen_random_uuid(), t.id, 'live', md5(random()::text), 7, now() - interval '1 month' * random()
					FROM agent_task_queue t WHERE t.runtime_id IS NOT NULL ORDER BY t.id OFFSET $1 LIMIT 1`, rng.IntN(200))
			}
			writes++
			if err != nil {
				failed++
				t.Logf("application write: %v", err)
			}
		}
	}()
	cfg := slowRun
	res := run(t, testenv.Engine(t, url, nil, cfg))
	close(stop)
	wg.Wait()
	if writes < 20 || failed > 0 {
		t.Fatalf("%d application writes during the run, %d failed", writes, failed)
	}
	target := res.Run.WatermarkTarget
	if n := queued(t, pool, `enqueued_at < $1`, target); n != 0 {
		t.Fatalf("%d keys queued before the watermark target are left", n)
	}
	if n := queued(t, pool, `true`); n == 0 {
		t.Fatal("no key queued during the run is left for the cron job")
	}
	// The cron job catches up: its window function from the watermark to
	// now (the cron entry would stop 5 minutes short of it).
	if _, err := pool.Exec(ctx, `SELECT rollup_task_usage_hourly_window($1, now())`, watermark(t, pool)); err != nil {
		t.Fatal(err)
	}
	testenv.RequireOracle(t, pool)
}
