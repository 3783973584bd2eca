package job_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// plan lists the slices of the whole history with at most maxRows per slice.
func plan(t *testing.T, q job.Querier, maxRows int64) []shard.Slice {
	t.Helper()
	rows, err := q.Query(context.Background(), `SELECT workspace_id::text, from_ts, to_ts, est_rows, read_from FROM (`+
		job.Hourly{}.PlanSQL()+`) s ORDER BY 1, 2`, "-infinity", maxRows)
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

// apply replaces the buckets of one batch of slices, forcing the time path
// or the workspace path through the estimates the job chooses by.
func apply(t *testing.T, pool *pgxpool.Pool, slices []shard.Slice, timePath bool) {
	t.Helper()
	ctx := context.Background()
	b, err := shard.NewBatch(slices)
	if err != nil {
		t.Fatal(err)
	}
	b.WorkspaceRows, b.RangeRows = 1, 0
	if timePath {
		b.WorkspaceRows, b.RangeRows = math.MaxInt64, 1
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var batch pgx.Batch
		var written int64
		job.Hourly{}.Queue(&batch, b, &written)
		return tx.SendBatch(ctx, &batch).Close()
	})
	if err != nil {
		t.Fatalf("%s (time path %v): %v", b, timePath, err)
	}
}

// Both access paths write exactly the oracle's rows: every slice is
// applied once through the workspace path and once through the time path
// (the second replaces the first), then the rollup is compared.
func TestBothAccessPathsMatchOracle(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	slices := plan(t, pool, 200)
	for _, path := range []string{"workspace", "time"} {
		for _, s := range slices {
			apply(t, pool, []shard.Slice{s}, path == "time")
		}
		testenv.RequireOracle(t, pool)
		if _, err := pool.Exec(ctx, `UPDATE task_usage_hourly SET input_tokens = input_tokens + 1`); err != nil {
			t.Fatal(err)
		}
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
	if err := (job.Hourly{}).Preflight(ctx, pool); err != nil {
		t.Fatalf("complete schema refused: %v", err)
	}
	if _, err := pool.Exec(ctx, `DROP TABLE task_usage_hourly_rollup_state; DROP FUNCTION task_usage_hour_bucket(timestamptz) CASCADE`); err != nil {
		t.Fatal(err)
	}
	err := job.Hourly{}.Preflight(ctx, pool)
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
	byMonth, byWorkspace := map[time.Time][]shard.Slice{}, map[string][]shard.Slice{}
	for _, s := range slices {
		m := shard.MonthStart(s.From)
		byMonth[m] = append(byMonth[m], s)
		byWorkspace[s.Workspace] = append(byWorkspace[s.Workspace], s)
	}
	for _, timePath := range []bool{true, false} {
		for _, group := range byMonth {
			apply(t, pool, group, timePath)
		}
		testenv.RequireOracle(t, pool)
		if _, err := pool.Exec(ctx, `UPDATE task_usage_hourly SET event_count = event_count + 1`); err != nil {
			t.Fatal(err)
		}
		for _, group := range byWorkspace {
			apply(t, pool, group, timePath)
		}
		testenv.RequireOracle(t, pool)
	}
}
