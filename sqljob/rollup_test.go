package sqljob_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// plan lists the rollup's slices of the whole history with at most
// maxRows per slice, as one piece.
func plan(t *testing.T, pool *pgxpool.Pool, maxRows int64) []shard.Slice {
	t.Helper()
	planSQL, args := testenv.Rollup(t, pool).Pieces(0).(checkpoint.MonthPieces).Plan(checkpoint.LowerBound(nil), checkpoint.UpperBound(), maxRows)
	rows, err := pool.Query(context.Background(), `SELECT shard::text, lo, hi, est_rows, read_from FROM (`+
		planSQL+`) s ORDER BY 1, 2`, args...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard.Slice, error) {
		var s shard.Slice
		var readFrom *time.Time
		err := r.Scan(&s.Workspace, &s.From, &s.To, &s.EstRows, &readFrom)
		if readFrom != nil {
			s.ReadFrom = *readFrom
		}
		return s, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// preflighted is a job that has read what the database guarantees, as the
// engine's is before it queues a batch.
func preflighted(t *testing.T, pool *pgxpool.Pool) *sqljob.Batched {
	t.Helper()
	h := testenv.Rollup(t, pool)
	if err := h.Preflight(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return h
}

// batchOf is a batch of slices that takes the time path or the workspace
// path through the estimates the job chooses by.
func batchOf(t *testing.T, slices []shard.Slice, timePath bool) shard.Batch {
	t.Helper()
	b, err := shard.NewBatch(slices)
	if err != nil {
		t.Fatal(err)
	}
	b.WorkspaceRows, b.WindowRows = 1, 0
	if timePath {
		b.WorkspaceRows, b.WindowRows = math.MaxInt64, 1
	}
	return b
}

// apply replaces the buckets of one batch of slices with h's statements,
// forcing the time path or the workspace path.
func apply(t *testing.T, pool *pgxpool.Pool, h *sqljob.Batched, slices []shard.Slice, timePath bool) {
	t.Helper()
	ctx := context.Background()
	b := batchOf(t, slices, timePath)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var batch pgx.Batch
		var written int64
		h.Queue(&batch, b, &written)
		return tx.SendBatch(ctx, &batch).Close()
	})
	if err != nil {
		t.Fatalf("%s (time path %v): %v", b, timePath, err)
	}
}

// Both access paths write exactly the oracle's rows, counting tasks either
// way: every slice is applied through the workspace path and through the
// time path (each replaces the last), then the rollup is compared.
func TestBothAccessPathsMatchOracle(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	slices := plan(t, pool, 200)
	for _, h := range []*sqljob.Batched{testenv.Rollup(t, pool), preflighted(t, pool)} {
		for _, path := range []string{"workspace", "time"} {
			for _, s := range slices {
				apply(t, pool, h, []shard.Slice{s}, path == "time")
			}
			testenv.RequireOracle(t, pool)
			if _, err := pool.Exec(ctx, `UPDATE task_usage_hourly SET input_tokens = input_tokens + 1`); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// countsRows reports whether h's batch statements count tasks as rows
// rather than with DISTINCT, on both access paths.
func countsRows(t *testing.T, h *sqljob.Batched, s shard.Slice) bool {
	t.Helper()
	var rows, distinct int
	for _, timePath := range []bool{false, true} {
		var b pgx.Batch
		var written int64
		h.Queue(&b, batchOf(t, []shard.Slice{s}, timePath), &written)
		for _, q := range b.QueuedQueries {
			if strings.Contains(q.SQL, "count(DISTINCT u.task_id)") {
				distinct++
			} else if strings.Contains(q.SQL, "AS task_count") {
				rows++
			}
		}
	}
	if rows+distinct != 2 || (rows != 0 && distinct != 0) {
		t.Fatalf("want both paths' inserts counting tasks one way: %d by rows, %d distinct", rows, distinct)
	}
	return rows == 2
}

// Tasks are counted as rows only where task_usage's unique key makes that
// exact; without such a key, where a task has two usage rows of one
// provider and model in one hour, the rollup still matches the oracle.
func TestTaskCountFollowsUsageKey(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	planned := plan(t, pool, 200)
	if !countsRows(t, preflighted(t, pool), planned[0]) {
		t.Fatal("the multica unique key (task_id, provider, model) should let tasks be counted as rows")
	}
	if countsRows(t, testenv.Rollup(t, pool), planned[0]) {
		t.Fatal("a job that has not read the catalog must count distinct tasks")
	}
	// A key column that may be NULL repeats (NULLs are distinct to it).
	exec(`ALTER TABLE task_usage ALTER COLUMN model DROP NOT NULL`)
	if countsRows(t, preflighted(t, pool), planned[0]) {
		t.Fatal("a unique key over a nullable column was trusted")
	}
	exec(`ALTER TABLE task_usage ALTER COLUMN model SET NOT NULL`)
	// A unique key that also holds created_at allows a task two rows of one
	// provider and model in one hour; make some.
	exec(`ALTER TABLE task_usage DROP CONSTRAINT uq_task_usage_task_provider_model`)
	exec(`CREATE UNIQUE INDEX task_usage_wider_key ON task_usage (task_id, provider, model, created_at)`)
	h := preflighted(t, pool)
	if countsRows(t, h, planned[0]) {
		t.Fatal("a unique key wider than (task_id, provider, model) was trusted")
	}
	tag, err := pool.Exec(ctx, `
		INSERT INTO task_usage (id, task_id, provider, model, input_tokens, output_tokens, cost_usd_ticks, created_at)
		SELECT gen_random_uuid(), task_id, provider, model, 1, 2, cost_usd_ticks,
		       date_trunc('hour', created_at) + (created_at - date_trunc('hour', created_at)) / 2
		FROM task_usage
		WHERE created_at <> date_trunc('hour', created_at) AND random() < 0.2`)
	if err != nil || tag.RowsAffected() == 0 {
		t.Fatalf("duplicating usage rows: %v (%d rows)", err, tag.RowsAffected())
	}
	for _, timePath := range []bool{false, true} {
		for _, s := range plan(t, pool, 200) {
			apply(t, pool, h, []shard.Slice{s}, timePath)
		}
		testenv.RequireOracle(t, pool)
	}
}

// A rollup already filled changes no slice of the plan: a day with both raw
// and rollup rows is planned once, with its raw rows counted once.
func TestPlanOverFullRollupCountsRawRowsOnce(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	before := plan(t, pool, 200)
	h := preflighted(t, pool)
	for _, s := range before {
		apply(t, pool, h, []shard.Slice{s}, true)
	}
	if testenv.RollupRows(t, pool) == 0 {
		t.Fatal("the rollup stayed empty")
	}
	after := plan(t, pool, 200)
	if !slices.EqualFunc(before, after, func(a, b shard.Slice) bool {
		return a.Workspace == b.Workspace && a.From.Equal(b.From) && a.To.Equal(b.To) &&
			a.EstRows == b.EstRows && a.ReadFrom.Equal(b.ReadFrom)
	}) {
		t.Fatalf("plan changed over the filled rollup: %d slices before, %d after", len(before), len(after))
	}
}

// Cut months become windows common to all workspaces that tile the month
// exactly: no gap, no overlap, on whole UTC days; no window holds much more
// than the limit; cutting loses no row.
func TestPlanCutsBigMonthsIntoTilingWindows(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &fixture.Config{Seed: 3, Workspaces: 8, Months: 4, Rows: 6000, TopShare: 0.5, Skew: 1})
	pool := testenv.Pool(t, url)
	const limit = 400
	whole := plan(t, pool, math.MaxInt32)
	cut := plan(t, pool, limit)
	if len(cut) <= len(whole) {
		t.Fatalf("nothing was cut: %d slices whole, %d cut", len(whole), len(cut))
	}
	count := func(slices []shard.Slice) (n int64) {
		for _, s := range slices {
			n += s.EstRows
		}
		return n
	}
	if count(whole) != count(cut) {
		t.Fatalf("cutting changed the row count: %d whole, %d cut", count(whole), count(cut))
	}
	for _, s := range whole {
		if !s.From.Equal(shard.MonthStart(s.From)) || !s.To.Equal(shard.NextMonth(s.From)) {
			t.Fatalf("uncut slice %s is not a whole month", s)
		}
	}
	windows := map[time.Time]time.Time{} // from -> to, across workspaces
	rows := map[time.Time]int64{}
	for _, s := range cut {
		if s.From.Hour() != 0 || s.To.Hour() != 0 || !s.From.Before(s.To) || s.To.After(shard.NextMonth(s.From)) {
			t.Fatalf("%s: not whole UTC days inside one month", s)
		}
		if to, ok := windows[s.From]; ok && !to.Equal(s.To) {
			t.Fatalf("%s: window starting %s also ends %s for another workspace", s, s.From, to)
		}
		windows[s.From] = s.To
		rows[s.From] += s.EstRows
	}
	// Walk each month's windows: each must start where the last ended.
	for from, to := range windows {
		if !from.Equal(shard.MonthStart(from)) {
			if _, ok := findEnd(windows, from); !ok {
				t.Fatalf("window %s..%s does not continue its month", from, to)
			}
		}
		if !to.Equal(shard.NextMonth(from)) {
			if _, ok := windows[to]; !ok {
				t.Fatalf("window %s..%s leaves the rest of its month uncovered", from, to)
			}
		}
		if rows[from] > 3*limit && to.Sub(from) > 24*time.Hour {
			t.Fatalf("window %s..%s holds %d rows over several days (limit %d)", from, to, rows[from], limit)
		}
	}
}

// findEnd reports whether some window ends at at.
func findEnd(windows map[time.Time]time.Time, at time.Time) (time.Time, bool) {
	for from, to := range windows {
		if to.Equal(at) {
			return from, true
		}
	}
	return time.Time{}, false
}

// Preflight names every missing piece and passes on a complete schema.
func TestPreflight(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, nil)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	if err := testenv.Rollup(t, pool).Preflight(ctx, pool); err != nil {
		t.Fatalf("complete schema refused: %v", err)
	}
	if _, err := pool.Exec(ctx, `DROP TABLE task_usage_hourly_rollup_state; DROP FUNCTION task_usage_hour_bucket(timestamptz) CASCADE`); err != nil {
		t.Fatal(err)
	}
	err := testenv.Rollup(t, pool).Preflight(ctx, pool)
	var missing *job.MissingError
	if !errors.As(err, &missing) || len(missing.Missing) < 2 {
		t.Fatalf("want both missing pieces named, got %v", err)
	}
}

// Batches of many workspaces' slices of one month, and of one workspace's
// many months, write the oracle's rows through either path.
func TestMultiSliceBatchesMatchOracle(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	slices := plan(t, pool, 300)
	h := preflighted(t, pool)
	byMonth, byWorkspace := map[time.Time][]shard.Slice{}, map[string][]shard.Slice{}
	for _, s := range slices {
		m := shard.MonthStart(s.From)
		byMonth[m] = append(byMonth[m], s)
		byWorkspace[s.Workspace] = append(byWorkspace[s.Workspace], s)
	}
	for _, timePath := range []bool{true, false} {
		for _, group := range byMonth {
			apply(t, pool, h, group, timePath)
		}
		testenv.RequireOracle(t, pool)
		if _, err := pool.Exec(ctx, `UPDATE task_usage_hourly SET event_count = event_count + 1`); err != nil {
			t.Fatal(err)
		}
		for _, group := range byWorkspace {
			apply(t, pool, h, group, timePath)
		}
		testenv.RequireOracle(t, pool)
	}
}

// A slice of a run drops the queued dirty keys of its own buckets that were
// enqueued before the run's watermark target, and no other: later keys,
// other workspaces' and other windows' stay for the cron job. Outside a run
// (no target) the queue is left alone.
func TestSliceDropsCoveredQueueKeys(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	h := preflighted(t, pool)
	planned := plan(t, pool, math.MaxInt32)
	var s shard.Slice
	for _, c := range planned {
		if c.EstRows > s.EstRows {
			s = c
		}
	}
	target := time.Now().Add(-5 * time.Minute).UTC().Truncate(time.Microsecond)
	enqueue := func(name, ws string, bucket, at time.Time) {
		t.Helper()
		_, err := pool.Exec(ctx, `INSERT INTO task_usage_hourly_dirty
			(bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model, enqueued_at)
			VALUES ($1, $2, gen_random_uuid(), gen_random_uuid(), NULL, 'p', $3, $4)`, bucket, ws, name, at)
		if err != nil {
			t.Fatal(err)
		}
	}
	other := "00000000-0000-0000-0000-000000000001"
	remaining := func() []string {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT model FROM task_usage_hourly_dirty ORDER BY model`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, timePath := range []bool{false, true} {
		if _, err := pool.Exec(ctx, `DELETE FROM task_usage_hourly_dirty`); err != nil {
			t.Fatal(err)
		}
		enqueue("covered", s.Workspace, s.From, target.Add(-time.Hour))
		enqueue("covered-last-hour", s.Workspace, s.To.Add(-time.Hour), target.Add(-time.Microsecond))
		enqueue("later", s.Workspace, s.From, target)
		enqueue("other-window", s.Workspace, s.To, target.Add(-time.Hour))
		enqueue("other-workspace", other, s.From, target.Add(-time.Hour))

		apply(t, pool, h, []shard.Slice{s}, timePath) // outside a run
		if got := remaining(); len(got) != 5 {
			t.Fatalf("a slice outside a run touched the queue: %v left", got)
		}
		inRun := s
		inRun.WatermarkTarget = target
		apply(t, pool, h, []shard.Slice{inRun}, timePath)
		want := []string{"later", "other-window", "other-workspace"}
		if got := remaining(); !slices.Equal(got, want) {
			t.Errorf("time path %v: queue holds %v after the slice, want %v", timePath, got, want)
		}
	}
}
