package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/shard"
)

// A process's own pace is quoted once it has done a slice and worked a
// second, though the warm-up is longer: a short resumed pass used to say
// process_rows_per_second=0 while it worked. Before any slice it is left
// out, not 0.
func TestProcessPaceQuotedInAShortPass(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: omitNil})), false, time.Second, nil)
	p.event(engine.Event{Kind: engine.RunStarted, Run: &checkpoint.Run{ID: 1, RowsTotal: 1000, PlanningDone: true}, Counts: checkpoint.Counts{Total: 10, Done: 5, RowsDone: 500}})
	p.record()
	if strings.Contains(buf.String(), "process_rows_per_second") {
		t.Fatalf("a pace quoted before any slice: %s", buf.String())
	}
	p.mu.Lock()
	p.began = time.Now().Add(-1500 * time.Millisecond) // a second and a half into the pass
	p.mu.Unlock()
	p.event(engine.Event{Kind: engine.SliceDone, Slice: shard.Slice{EstRows: 300}})
	buf.Reset()
	p.record()
	if !strings.Contains(buf.String(), "process_rows_per_second=") || strings.Contains(buf.String(), "process_rows_per_second=0 ") {
		t.Fatalf("no pace while the process works: %s", buf.String())
	}
}

// The run-wide figures are read every second while a read is cheap, and
// spaced to twenty times what a read takes once the run's slices make it
// dear, but never beyond the progress interval, whose records need them.
func TestStatusReadsSpacedByTheirCost(t *testing.T) {
	for _, c := range []struct{ took, interval, want time.Duration }{
		{10 * time.Millisecond, 10 * time.Second, time.Second},
		{200 * time.Millisecond, 10 * time.Second, 4 * time.Second},
		{2 * time.Second, 10 * time.Second, 10 * time.Second},
		{10 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond},
	} {
		if got := readEvery(c.took, c.interval); got != c.want {
			t.Errorf("a read of %v with records every %v: next after %v, want %v", c.took, c.interval, got, c.want)
		}
	}
}
