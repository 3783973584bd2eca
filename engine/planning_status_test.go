package engine_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// While a run is planned piece by piece the operator learns how big it is
// and when it ends: status gives a total and an ETA estimated from the
// history's extent, marked as such; and the run as a process saw it when
// it joined (as progress records read it) does not freeze the totals or
// planning: once planning ends, status says so, with the final totals.
func TestPlanningStatusGrowsAndEnds(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &months)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	var (
		release    func()
		joined     *checkpoint.Run // as the process saw it when it joined
		firstPiece atomic.Int64
		done       atomic.Int64
		doneWhile  = make(chan struct{})
		once       sync.Once
	)
	e := testenv.Engine(t, url, nil, engine.Config{Concurrency: 2, PlanPieceRows: inPieces, OnEvent: func(ev engine.Event) {
		switch ev.Kind {
		case engine.RunStarted:
			r := *ev.Run
			joined = &r
			firstPiece.Store(ev.Run.SlicesTotal)
			release = planTurn(t, url)
		case engine.SliceDone:
			if done.Add(1) == firstPiece.Load() {
				once.Do(func() { close(doneWhile) })
			}
		}
	}})
	ended := make(chan error, 1)
	var res *engine.Result
	go func() {
		var err error
		res, err = e.Run(ctx)
		ended <- err
	}()
	select {
	case <-doneWhile:
	case err := <-ended:
		t.Fatalf("run ended before its first piece was done: %v", err)
	}
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	st, err := store.Status(ctx, joined)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Planning || st.RowsTotalEstimated == nil || *st.RowsTotalEstimated <= st.RowsTotal {
		t.Fatalf("with the first piece planned: planning %v, rows total %d, estimated %v; want an estimate above the rows planned",
			st.Planning, st.RowsTotal, ptr(st.RowsTotalEstimated))
	}
	if st.ETASeconds == nil || !st.ETAEstimated {
		t.Fatalf("with planning unfinished: eta %v (estimated %v, %.0f rows/s), want an estimated one", ptr(st.ETASeconds), st.ETAEstimated, st.RowsPerSecond)
	}
	release()
	if err := <-ended; err != nil {
		t.Fatal(err)
	}
	if st, err = store.Status(ctx, joined); err != nil {
		t.Fatal(err)
	}
	if st.Planning || st.RowsTotal != res.Run.RowsTotal || st.RowsTotal <= joined.RowsTotal || st.SlicesTotal != res.Run.SlicesTotal ||
		st.RowsTotalEstimated != nil || st.ETAEstimated {
		t.Fatalf("after the run, read with the run as it was when the process joined: planning %v, rows %d of %d (joined at %d), slices %d of %d, estimate %v",
			st.Planning, st.RowsTotal, res.Run.RowsTotal, joined.RowsTotal, st.SlicesTotal, res.Run.SlicesTotal, ptr(st.RowsTotalEstimated))
	}
}

func ptr[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
