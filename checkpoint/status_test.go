package checkpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
)

// A pause of less than a millisecond is stored rounded up, as the
// timeouts are, in the control record and in the registry: never as none.
func TestSleepStoredRoundedUp(t *testing.T) {
	t.Parallel()
	_, store, pid := claimSetup(t)
	ctx := context.Background()
	var h job.Hourly
	run, _, err := store.Start(ctx, checkpoint.PlanSpec{SourceSQL: h.PlanSQL(), MaxSliceRows: 500, LogicVersion: h.Version(), NewRun: true})
	if err != nil {
		t.Fatal(err)
	}
	d := 500 * time.Microsecond
	ctl, err := store.SetLimits(ctx, run.ID, checkpoint.Limits{SleepBetweenSlices: &d}, "tester")
	if err != nil {
		t.Fatal(err)
	}
	if got := ctl.Limits.SleepBetweenSlices; got == nil || *got != time.Millisecond {
		t.Fatalf("set 500µs: stored %v, want 1ms", got)
	}
	if err := store.Acknowledge(ctx, run.ID, checkpoint.Process{Owner: "p", LockPID: pid, SleepBetweenSlices: d,
		State: checkpoint.ProcessWorking}); err != nil {
		t.Fatal(err)
	}
	procs, err := store.Processes(ctx, run.ID)
	if err != nil || len(procs) != 1 || procs[0].SleepMS != 1 {
		t.Fatalf("registry with a 500µs pause: %+v, %v; want one process at 1 ms", procs, err)
	}
}
