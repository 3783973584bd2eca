package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/shardfill/shardfill/engine"
)

// progress renders a run's progress, weighted by raw rows (a slice of a big
// workspace counts for more than a slice of a tiny one): a live bar on a
// terminal, a line every few seconds otherwise.
type progress struct {
	w       io.Writer
	enabled bool
	every   time.Duration // between progress lines when no bar is drawn

	mu           sync.Mutex
	bar          *progressbar.ProgressBar
	runID        int64
	totalSlices  int64
	totalRows    int64
	doneSlices   int64
	doneRows     int64
	failed       int64
	retries      int64
	rowsThisProc int64
	began        time.Time
	planning     bool // totals count the pieces planned so far
}

func newProgress(w io.Writer, enabled bool) *progress {
	return &progress{w: w, enabled: enabled, every: 5 * time.Second}
}

// fraction is the share of the run's rows done so far.
func (p *progress) fraction() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return float64(p.doneRows) / float64(max(p.totalRows, 1))
}

// event is the engine's OnEvent hook; it runs on worker goroutines.
func (p *progress) event(ev engine.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev.Kind {
	case engine.RunStarted:
		p.runID, p.totalSlices, p.totalRows = ev.Run.ID, ev.Counts.Total, ev.Run.RowsTotal
		p.planning = !ev.Run.PlanningDone
		p.doneSlices, p.doneRows, p.began = ev.Counts.Done, ev.Counts.RowsDone, time.Now()
		if p.enabled && isTerminal(p.w) {
			p.bar = progressbar.NewOptions64(max(p.totalRows, 1),
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(fmt.Sprintf("run %d", p.runID)),
				progressbar.OptionSetItsString("rows"),
				progressbar.OptionShowIts(),
				progressbar.OptionShowCount(),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
			_ = p.bar.Set64(p.doneRows)
		}
	case engine.PiecePlanned:
		// Planning goes on beside the work: the totals grow with it.
		p.planning = !ev.Run.PlanningDone
		p.totalSlices, p.totalRows = max(p.totalSlices, ev.Run.SlicesTotal), max(p.totalRows, ev.Run.RowsTotal)
		if p.bar != nil {
			p.bar.ChangeMax64(max(p.totalRows, 1))
		}
	case engine.SliceDone:
		p.doneSlices++
		p.doneRows += ev.Slice.EstRows
		p.rowsThisProc += ev.Slice.EstRows
		if p.bar != nil {
			_ = p.bar.Add64(ev.Slice.EstRows)
		}
	case engine.SliceFailed:
		p.failed++
	case engine.SliceRetry:
		p.retries++
	}
}

// start begins periodic progress lines when no bar is drawn; the returned
// function stops them and clears the bar.
func (p *progress) start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(p.every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				p.line()
			}
		}
	}()
	return func() {
		cancel()
		<-done
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.bar != nil {
			_ = p.bar.Exit()
			fmt.Fprintln(p.w)
		}
	}
}

// line writes one progress line unless a bar is being drawn.
func (p *progress) line() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil || p.totalSlices == 0 || !p.enabled {
		return
	}
	rate := float64(p.rowsThisProc) / time.Since(p.began).Seconds()
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(p.totalRows-p.doneRows)/rate) * time.Second).Round(time.Second).String()
	}
	planned := ""
	if p.planning {
		planned = " (planned so far)"
	}
	fmt.Fprintf(p.w, "progress run %d: %d/%d slices%s, %d/%d rows (%.0f%%), %.0f rows/s, %d failed, %d retries, eta %s\n",
		p.runID, p.doneSlices, p.totalSlices, planned, p.doneRows, p.totalRows,
		100*float64(p.doneRows)/float64(max(p.totalRows, 1)), rate, p.failed, p.retries, eta)
}

func isTerminal(w io.Writer) bool {
	if r, ok := w.(*redactor); ok {
		w = r.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
