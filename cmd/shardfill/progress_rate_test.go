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
