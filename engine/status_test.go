package engine_test

import (
	"context"
	"testing"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// started_at is when work started: null for a run only planned, set once a
// process works on it. A finished run does not move: its rows_per_second
// is 0 however many slices finished in the last minute.
func TestStartedAtAndPaceOfAStillRun(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	store := checkpoint.New(pool, "shardfill", fixture.AppLockKey)
	status := func() *checkpoint.Status {
		t.Helper()
		latest, err := store.LatestRun(ctx)
		if err != nil || latest == nil {
			t.Fatalf("latest run: %v, %v", latest, err)
		}
		st, err := store.Status(ctx, latest)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	run(t, testenv.Engine(t, url, nil, engine.Config{PlanOnly: true}))
	if st := status(); st.StartedAt != nil {
		t.Fatalf("a run only planned (planned at %s) has started_at %s", st.PlannedAt, st.StartedAt)
	}
	run(t, testenv.Engine(t, url, nil, engine.Config{Concurrency: 2}))
	st := status()
	if st.State != checkpoint.StateDone || st.StartedAt == nil || st.StartedAt.Before(st.PlannedAt) {
		t.Fatalf("after the run: state %s, planned at %s, started at %v", st.State, st.PlannedAt, st.StartedAt)
	}
	if st.RowsPerSecond != 0 || st.ETASeconds != nil {
		t.Fatalf("a done run reads %.1f rows/s, eta %v; want 0 and none", st.RowsPerSecond, st.ETASeconds)
	}
}
