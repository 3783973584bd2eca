package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// months is a history long enough for several planning pieces (the
// newest month, then 1, 2, 4 … months).
var months = fixture.Config{Seed: 21, Workspaces: 40, Months: 9, Rows: 9000, Skew: 1.1}

// inPieces plans every history in pieces, however small.
const inPieces = 1

// piece is one row of the checkpoint's plan_piece table.
type piece struct {
	n          int
	from, to   time.Time
	slices     int64
	plannedAt  time.Time
	fromInf    bool
	toInfinite bool
}

func pieces(t *testing.T, pool *pgxpool.Pool, runID int64) []piece {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT piece, from_ts, to_ts, slices, planned_at
		FROM shardfill.plan_piece WHERE run_id = $1 ORDER BY piece`, runID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (piece, error) {
		var p piece
		var from, to pgtype.Timestamptz
		err := r.Scan(&p.n, &from, &to, &p.slices, &p.plannedAt)
		p.from, p.to = from.Time, to.Time
		p.fromInf, p.toInfinite = from.InfinityModifier == pgtype.NegativeInfinity, to.InfinityModifier == pgtype.Infinity
		return p, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// sliceKeys lists a run's slices as "workspace from to est_rows read_from",
// failing on a slice planned twice.
func sliceKeys(t *testing.T, pool *pgxpool.Pool, runID int64) map[string]bool {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT format('%s %s %s %s %s', workspace_id, from_ts, to_ts, est_rows, read_from)
		FROM shardfill.slice WHERE run_id = $1`, runID)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, k := range keys {
		if set[k] {
			t.Fatalf("slice planned twice: %s", k)
		}
		set[k] = true
	}
	return set
}

// onePass lists, as sliceKeys does, the slices of planning the whole
// history in two passes: the newest rows alone, from the day the bounds
// query gives for a run planned in pieces of inPieces rows, and everything
// before them. (A run plans its first piece that way, and the rest of
// that month below it, so their windows are cut apart.)
func onePass(t *testing.T, pool *pgxpool.Pool, maxRows int64) map[string]bool {
	t.Helper()
	ctx := context.Background()
	pieces := testenv.Rollup(t, pool).Pieces(inPieces).(checkpoint.MonthPieces)
	boundsSQL, args := pieces.Bounds(checkpoint.LowerBound(nil), inPieces)
	var top, newest *time.Time
	if err := pool.QueryRow(ctx, `SELECT b.last_month, b.newest_from FROM (`+boundsSQL+`) b`, args...).Scan(&top, &newest); err != nil {
		t.Fatal(err)
	}
	split := checkpoint.UpperBound()
	if newest != nil && top != nil && newest.After(*top) {
		split = pgtype.Timestamptz{Time: *newest, Valid: true}
	}
	set := map[string]bool{}
	for _, r := range [][2]pgtype.Timestamptz{{checkpoint.LowerBound(nil), split}, {split, checkpoint.UpperBound()}} {
		if r[0] == r[1] {
			continue
		}
		planSQL, args := pieces.Plan(r[0], r[1], maxRows)
		rows, err := pool.Query(ctx, `SELECT format('%s %s %s %s %s', shard, lo, hi, est_rows, read_from)
			FROM (`+planSQL+`) p`, args...)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			set[k] = true
		}
	}
	if len(set) == 0 {
		t.Fatal("the plan lists no slice")
	}
	return set
}

func sameSet(a, b map[string]bool) error {
	for k := range a {
		if !b[k] {
			return fmt.Errorf("slice %s missing from the other plan (%d against %d slices)", k, len(a), len(b))
		}
	}
	if len(a) != len(b) {
		return fmt.Errorf("%d against %d slices", len(a), len(b))
	}
	return nil
}

// Stale rollup rows of no raw row, before the history, after it and in
// the middle of it (a month whose raw rows are gone), are the ones only
// the first piece (open upwards), the last (open downwards) and a middle
// piece see.
func addStaleRows(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		DELETE FROM task_usage WHERE created_at >= (SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		                                                FROM task_usage) + interval '3 months'
		                         AND created_at < (SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
		                                           FROM task_usage) + interval '4 months';
		INSERT INTO task_usage_hourly (bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model, event_count)
		SELECT h, a.workspace_id, t.runtime_id, t.agent_id, NULL, 'stale', 'stale', 1
		FROM (SELECT * FROM agent_task_queue WHERE runtime_id IS NOT NULL LIMIT 1) t
		JOIN agent a ON a.id = t.agent_id,
		     unnest(ARRAY['2001-02-03 04:00+00', '2099-05-06 07:00+00',
		                  (SELECT date_trunc('month', min(created_at)) + interval '3 months 2 days' FROM task_usage)]::timestamptz[]) h`)
	if err != nil {
		t.Fatal(err)
	}
}

// A run planned in pieces plans exactly the slices of one pass over the
// whole history, stale rollup rows included, each once, and its rollup
// equals the oracle; the pieces tile all time.
func TestPlanInPiecesEqualsOnePass(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &months)
	pool := testenv.Pool(t, url)
	addStaleRows(t, pool)
	const maxRows = 300 // cut some months into windows
	want := onePass(t, pool, maxRows)
	res := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, PlanPieceRows: inPieces, MaxSliceRows: maxRows}))
	if err := sameSet(sliceKeys(t, pool, res.Run.ID), want); err != nil {
		t.Fatal(err)
	}
	ps := pieces(t, pool, res.Run.ID)
	if len(ps) < 4 {
		t.Fatalf("planned in %d pieces, want at least 4 for %d months", len(ps), months.Months)
	}
	if !ps[0].toInfinite || !ps[len(ps)-1].fromInf {
		t.Fatalf("the pieces do not cover all time: first %+v, last %+v", ps[0], ps[len(ps)-1])
	}
	for i := 1; i < len(ps); i++ {
		if !ps[i].to.Equal(ps[i-1].from) {
			t.Fatalf("piece %d ends %s, piece %d starts %s", i, ps[i].to, i-1, ps[i-1].from)
		}
	}
	// The first piece is the newest rows alone (the newest day, at
	// inPieces rows a piece), the second the rest of their month.
	first, month := ps[0].from.UTC(), ps[1].from.UTC()
	if first.Hour() != 0 || !first.After(month) || month.Day() != 1 || month.Hour() != 0 || first.Sub(month) > 31*24*time.Hour {
		t.Fatalf("first piece from %s, second from %s: want the newest day, then the rest of its month", first, month)
	}
	if !res.Run.PlanningDone || res.Run.SlicesTotal != int64(len(want)) || res.Executed != res.Run.SlicesTotal {
		t.Fatalf("run: planning done %v, %d slices, %d executed, want %d", res.Run.PlanningDone, res.Run.SlicesTotal, res.Executed, len(want))
	}
	testenv.RequireOracle(t, pool)
}

// planTurn holds the schema's planning turn until the returned function is
// called: planning waits, claims and slice commits do not.
func planTurn(t *testing.T, url string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn := testenv.Conn(t, url)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(4246, hashtext('plan:shardfill'))`); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Commit(ctx) }) }
	t.Cleanup(release)
	return release
}

// Workers commit slices of the first piece while the rest is still being
// planned: the test holds the planning turn once the run has started, and
// sees the first piece's slices done with planning unfinished; released,
// the run ends done and equal to the oracle.
func TestWorkStartsBeforePlanningEnds(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &months)
	pool := testenv.Pool(t, url)
	var (
		release     func()
		firstPiece  atomic.Int64
		done        atomic.Int64
		doneWhile   = make(chan struct{})
		releaseOnce sync.Once
	)
	e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, PlanPieceRows: inPieces, OnEvent: func(ev engine.Event) {
		switch ev.Kind {
		case engine.RunStarted:
			if ev.Run.PlanningDone {
				t.Errorf("the run was planned in one piece")
			}
			firstPiece.Store(ev.Run.SlicesTotal)
			release = planTurn(t, url)
		case engine.SliceDone:
			if done.Add(1) == firstPiece.Load() {
				releaseOnce.Do(func() { close(doneWhile) })
			}
		}
	}})
	type outcome struct {
		res *engine.Result
		err error
	}
	ended := make(chan outcome, 1)
	go func() {
		res, err := e.Run(context.Background())
		ended <- outcome{res, err}
	}()
	select {
	case <-doneWhile:
	case o := <-ended:
		t.Fatalf("run ended before its first piece was done: %v", o.err)
	}
	var doneSlices int64
	var planning bool
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM shardfill.slice WHERE state = 'done'),
		(SELECT NOT planning_done FROM shardfill.run)`).Scan(&doneSlices, &planning); err != nil {
		t.Fatal(err)
	}
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	latest, err := store.LatestRun(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Status(context.Background(), latest)
	if err != nil {
		t.Fatal(err)
	}
	if doneSlices == 0 || !planning || !st.Planning || st.SlicesTotal != firstPiece.Load() {
		t.Fatalf("with planning held: %d slices done, planning %v, status planning %v with %d slices (first piece %d)",
			doneSlices, planning, st.Planning, st.SlicesTotal, firstPiece.Load())
	}
	release()
	o := <-ended
	if o.err != nil {
		t.Fatal(o.err)
	}
	if !o.res.Run.PlanningDone || o.res.Run.SlicesTotal <= firstPiece.Load() || o.res.Outcome.State != checkpoint.StateDone || !o.res.Outcome.Stamped {
		t.Fatalf("after planning: %+v, outcome %+v", o.res.Run, o.res.Outcome)
	}
	testenv.RequireOracle(t, pool)
}

// A plan interrupted after its second piece continues with the third when
// the run is resumed: the pieces already stored are not planned again and
// no slice is planned twice; the run then ends equal to the oracle.
func TestInterruptedPlanContinues(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &months)
	pool := testenv.Pool(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var planned atomic.Int64
	e := testenv.Engine(t, url, nil, engine.Config{PlanOnly: true, PlanPieceRows: inPieces, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.PiecePlanned && planned.Add(1) == 1 {
			cancel()
		}
	}})
	res, err := e.Run(ctx)
	if !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	before := pieces(t, pool, res.Run.ID)
	if len(before) != 2 {
		t.Fatalf("%d pieces planned before the cancel, want 2", len(before))
	}
	slicesBefore := sliceKeys(t, pool, res.Run.ID)

	resumed := run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, PlanPieceRows: inPieces}))
	if resumed.Planned || resumed.Run.ID != res.Run.ID {
		t.Fatalf("resume planned a new run %d", resumed.Run.ID)
	}
	after := pieces(t, pool, res.Run.ID)
	if len(after) <= len(before) {
		t.Fatalf("resume planned no further piece: %d pieces", len(after))
	}
	for i, p := range before {
		if !after[i].plannedAt.Equal(p.plannedAt) || after[i].slices != p.slices {
			t.Fatalf("piece %d was planned again: %+v, then %+v", i, p, after[i])
		}
	}
	all := sliceKeys(t, pool, res.Run.ID) // fails on a slice planned twice
	for k := range slicesBefore {
		if !all[k] {
			t.Fatalf("slice %s of an earlier piece is gone", k)
		}
	}
	if err := sameSet(all, onePass(t, pool, engine.DefaultMaxSliceRows)); err != nil {
		t.Fatal(err)
	}
	testenv.RequireOracle(t, pool)
}

// Several processes on one run planned in pieces: any of them plans the
// next piece, each piece once; the rollup equals the oracle on both access
// paths (unbatched single slices take the workspace path where the
// estimated workspace rows are small, whole windows the time path).
func TestPiecesWithSeveralProcesses(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]engine.Config{
		"batched":   {Concurrency: 2, PlanPieceRows: inPieces},
		"unbatched": {Concurrency: 2, PlanPieceRows: inPieces, BatchSlices: 1},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := testenv.DB(t, &months)
			pool := testenv.Pool(t, url)
			var wg sync.WaitGroup
			errs := make(chan error, 3)
			for range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := testenv.Engine(t, url, nil, cfg).Run(context.Background())
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
			store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
			latest, err := store.LatestRun(context.Background())
			if err != nil || latest.ID != 1 || latest.State != checkpoint.StateDone {
				t.Fatalf("latest run %+v, %v: want run 1 done", latest, err)
			}
			if ps := pieces(t, pool, latest.ID); len(ps) < 4 {
				t.Fatalf("%d pieces", len(ps))
			}
			if err := sameSet(sliceKeys(t, pool, latest.ID), onePass(t, pool, engine.DefaultMaxSliceRows)); err != nil {
				t.Fatal(err)
			}
			// Both access paths were priced in: single slices whose window is
			// dearer than their workspace (as estimated), and the others.
			var byWorkspace, byTime int64
			if err := pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE 2 * window_rows >= ws_rows),
				count(*) FILTER (WHERE 2 * window_rows < ws_rows) FROM shardfill.slice`).Scan(&byWorkspace, &byTime); err != nil {
				t.Fatal(err)
			}
			if byWorkspace == 0 || byTime == 0 {
				t.Fatalf("single slices would take the workspace path %d times and the time path %d times; want both", byWorkspace, byTime)
			}
			testenv.RequireOracle(t, pool)
		})
	}
}
