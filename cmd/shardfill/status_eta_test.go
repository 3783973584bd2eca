package main

import (
	"strings"
	"testing"

	"github.com/shardfill/shardfill/checkpoint"
)

// The text status's ETA: a duration, marked when estimated while planning
// goes on; while held, no number but what holds the run.
func TestStatusETAText(t *testing.T) {
	t.Parallel()
	secs, reason := 125.0, "VACUUM of task_usage_hourly in progress"
	for _, c := range []struct {
		st   checkpoint.Status
		want string
	}{
		{checkpoint.Status{State: checkpoint.StateRunning, ETASeconds: &secs, RowsPerSecond: 10}, "2m5s"},
		{checkpoint.Status{State: checkpoint.StateRunning, ETASeconds: &secs, ETAEstimated: true}, "~2m5s (estimated"},
		{checkpoint.Status{State: checkpoint.StateRunning, ThrottleReason: &reason, SlicesPending: 3, RowsPerSecond: 10}, "none while held: " + reason},
		{checkpoint.Status{State: checkpoint.StateRunning, RowsPerSecond: 10, SlicesPending: 3}, "-"},
	} {
		if got, ok := etaText(&c.st); !ok || !strings.HasPrefix(got, c.want) {
			t.Errorf("eta of %+v: %q (%v), want %q", c.st, got, ok, c.want)
		}
	}
	if got, ok := etaText(&checkpoint.Status{State: checkpoint.StateDone}); ok {
		t.Errorf("eta of a done run: %q, want none", got)
	}
}
