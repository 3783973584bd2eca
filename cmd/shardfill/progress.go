package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/metrics"
)

// DefaultProgressInterval is how often run logs a progress record.
const DefaultProgressInterval = 10 * time.Second

// warmup is how long this process works before it quotes a pace of its
// own: the first batches say little about the rest. From a second on it
// quotes one as soon as it has done a slice, so a short pass (a resume
// with little left) does not say 0 while it works; until then the pace is
// left out, not given as 0.
const warmup = 3 * time.Second

// progress reports a run's progress, weighted by raw rows (a slice of a big
// workspace counts for more than a slice of a tiny one): a structured
// progress record every interval through the logger (a JSON object with
// --log-format json), run-wide figures read from the checkpoint tables so
// that every process of the run counts; and a live bar on a terminal
// unless turned off. The pace of this process counts only the rows it did
// itself since it started working: rows done before it joined are not its.
type progress struct {
	w        io.Writer
	lines    *logLines // the log's writer, told about the bar (nil: none)
	log      *slog.Logger
	bar      bool // draw a bar when w is a terminal
	interval time.Duration
	metrics  *metrics.Metrics // nil without --metrics-addr

	mu           sync.Mutex
	pb           *progressbar.ProgressBar
	store        *checkpoint.Store
	run          *checkpoint.Run
	totalSlices  int64
	totalRows    int64
	doneSlices   int64
	doneRows     int64
	failed       int64
	retries      int64
	rowsThisProc int64
	began        time.Time
	applied      *engine.Applied
	healthReason string             // the health throttle's, "" when it holds nothing back
	last         *checkpoint.Status // the latest run-wide read
	planning     bool               // totals count the pieces planned so far
}

func newProgress(w io.Writer, log *slog.Logger, bar bool, interval time.Duration, m *metrics.Metrics) *progress {
	return &progress{w: w, log: log, bar: bar, interval: interval, metrics: m}
}

// fraction is the share of the run's rows done so far (by this process's
// count).
func (p *progress) fraction() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return float64(p.doneRows) / float64(max(p.totalRows, 1))
}

// event is the engine's OnEvent hook; it runs on worker goroutines.
func (p *progress) event(ev engine.Event) {
	if p.metrics != nil {
		p.metrics.Event(ev)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev.Kind {
	case engine.RunStarted:
		p.run, p.totalSlices, p.totalRows = ev.Run, ev.Counts.Total, ev.Run.RowsTotal
		p.planning = !ev.Run.PlanningDone
		p.doneSlices, p.doneRows, p.began = ev.Counts.Done, ev.Counts.RowsDone, time.Now()
		if p.bar && isTerminal(p.w) {
			// The bar's own rate and ETA are off: it would count the rows
			// done before this process joined as its own. The description
			// carries ours.
			p.pb = progressbar.NewOptions64(max(p.totalRows, 1),
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(fmt.Sprintf("run %d", p.run.ID)),
				progressbar.OptionShowCount(),
				progressbar.OptionSetPredictTime(false),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
			_ = p.pb.Set64(p.doneRows)
			if p.lines != nil {
				p.lines.drawing(true)
			}
		}
	case engine.PiecePlanned:
		// Planning goes on beside the work: the totals grow with it.
		p.planning = !ev.Run.PlanningDone
		p.totalSlices, p.totalRows = max(p.totalSlices, ev.Run.SlicesTotal), max(p.totalRows, ev.Run.RowsTotal)
		if p.pb != nil {
			p.pb.ChangeMax64(max(p.totalRows, 1))
		}
	case engine.SliceDone:
		p.doneSlices++
		p.doneRows += ev.Slice.EstRows
		p.rowsThisProc += ev.Slice.EstRows
		if p.pb != nil {
			_ = p.pb.Add64(ev.Slice.EstRows)
		}
	case engine.SliceFailed:
		p.failed++
	case engine.SliceRetry:
		p.retries++
	case engine.ControlApplied:
		p.applied = ev.Applied
	case engine.HealthPolled:
		p.healthReason = ev.Health.Decision.Reason
	}
}

// readEvery is how long to wait before reading the run-wide figures again
// when the last read took took: a second, or 20 times that (a read of half
// a million slices takes the server a good part of a second), so reading
// stays a twentieth of one server core; never longer than the progress
// interval, whose records need them.
func readEvery(took, interval time.Duration) time.Duration {
	return min(max(20*took, time.Second), interval)
}

// start reads the run-wide figures and logs progress records until the
// returned function is called; that stops them and clears the bar. store
// reads the checkpoint tables.
func (p *progress) start(ctx context.Context, store *checkpoint.Store) (stop func()) {
	p.mu.Lock()
	p.store = store
	p.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Read often enough for the metrics and the bar; log every interval.
		// A read counts the run's slices, which costs the server more the
		// more slices the run has: readEvery spaces the reads by what the
		// last one took.
		tick := time.NewTicker(min(p.interval, time.Second))
		defer tick.Stop()
		lastLog := time.Now()
		var lastRead time.Time
		var readTook time.Duration
		read := func() {
			lastRead = time.Now()
			p.observe(ctx)
			readTook = time.Since(lastRead)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := time.Since(lastRead) >= readEvery(readTook, p.interval)
			if time.Since(lastLog) >= p.interval {
				lastLog = time.Now()
				if due {
					read()
				}
				p.record()
			} else if due && (p.metrics != nil || p.pb != nil) {
				read()
			}
			p.describe()
		}
	}()
	return func() {
		cancel()
		<-done
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.pb != nil {
			if p.lines != nil {
				p.lines.drawing(false)
			}
			_ = p.pb.Exit()
			fmt.Fprintln(p.w)
		}
	}
}

// observe reads the run's status from the checkpoint tables.
func (p *progress) observe(ctx context.Context) {
	p.mu.Lock()
	run, store := p.run, p.store
	p.mu.Unlock()
	if run == nil || store == nil {
		return
	}
	st, err := store.Status(ctx, run)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Debug("progress: could not read the run's status", "err", err)
		}
		return
	}
	if p.metrics != nil {
		p.metrics.ObserveStatus(st)
	}
	p.mu.Lock()
	p.last = st
	p.mu.Unlock()
}

// figures are what a progress record and the bar say.
type figures struct {
	runID                            int64
	slicesDone, slicesTotal          int64
	rowsDone, rowsTotal              int64
	rowsPerSecond, procRowsPerSecond float64
	procMeasured                     bool // procRowsPerSecond is a measure, not just "not yet"
	eta                              *float64
	failed, retries                  int64
	paused                           bool
	throttle                         *string
	state                            string
	planning                         bool // the totals count the pieces planned so far
	etaEstimated                     bool // the ETA counts rows not planned yet, estimated
}

func (p *progress) figures() (figures, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run == nil {
		return figures{}, false
	}
	f := figures{runID: p.run.ID, slicesDone: p.doneSlices, slicesTotal: p.totalSlices, rowsDone: p.doneRows,
		rowsTotal: p.totalRows, failed: p.failed, retries: p.retries, state: string(checkpoint.StateRunning), planning: p.planning}
	if worked := time.Since(p.began); worked >= warmup || (worked >= time.Second && p.rowsThisProc > 0) {
		f.procRowsPerSecond = float64(p.rowsThisProc) / worked.Seconds()
		f.procMeasured = true
	}
	f.rowsPerSecond = f.procRowsPerSecond
	if a := p.applied; a != nil {
		f.paused = a.Paused
		if len(a.Holds) > 0 {
			f.throttle = &a.Holds[0].Reason
		}
	}
	if f.throttle == nil && p.healthReason != "" {
		r := p.healthReason
		f.throttle = &r
	}
	if st := p.last; st != nil {
		// Run-wide: every process of the run counts.
		f.slicesDone, f.rowsDone, f.failed, f.state = st.SlicesDone, st.RowsDone, st.SlicesFailed, string(st.State)
		f.slicesTotal, f.rowsTotal, f.planning = st.SlicesTotal, st.RowsTotal, st.Planning
		f.rowsPerSecond, f.eta, f.etaEstimated = st.RowsPerSecond, st.ETASeconds, st.ETAEstimated
		if st.ThrottleReason != nil {
			f.throttle = st.ThrottleReason
		}
	} else if f.rowsPerSecond > 0 && !f.paused {
		eta := float64(max(f.rowsTotal-f.rowsDone, 0)) / f.rowsPerSecond
		f.eta = &eta
	}
	return f, true
}

// record logs one progress record.
func (p *progress) record() {
	f, ok := p.figures()
	if !ok {
		return
	}
	var eta, throttle, procRate any // null (left out of text) when unknown / nothing holds
	if f.eta != nil {
		eta = round1(*f.eta)
	}
	if f.procMeasured {
		procRate = round1(f.procRowsPerSecond)
	}
	if f.throttle != nil {
		throttle = *f.throttle
	}
	p.log.Info("progress", "job", p.jobName(), "run_id", f.runID, "state", f.state,
		"slices_done", f.slicesDone, "slices_total", f.slicesTotal,
		"rows_done", f.rowsDone, "rows_total", f.rowsTotal,
		"rows_per_second", round1(f.rowsPerSecond), "process_rows_per_second", procRate,
		"eta_seconds", eta, "failed", f.failed, "retries", f.retries,
		"paused", f.paused, "throttle_reason", throttle, "planning", f.planning, "eta_estimated", f.etaEstimated)
}

// jobName is the job of the run the progress follows.
func (p *progress) jobName() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.store == nil {
		return ""
	}
	return p.store.Job()
}

// describe puts this process's pace and the run's ETA on the bar.
func (p *progress) describe() {
	f, ok := p.figures()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ok || p.pb == nil {
		return
	}
	d := fmt.Sprintf("run %d", f.runID)
	switch {
	case f.paused:
		d += " · paused"
	case f.throttle != nil:
		d += " · held: " + *f.throttle
	case !f.procMeasured:
		d += " · measuring"
	default:
		d += fmt.Sprintf(" · %.0f rows/s", f.procRowsPerSecond)
	}
	if f.eta != nil && !f.paused {
		approx := ""
		if f.etaEstimated {
			approx = "~"
		}
		d += " · eta " + approx + (time.Duration(*f.eta) * time.Second).Round(time.Second).String()
	}
	p.pb.Describe(d)
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

func isTerminal(w io.Writer) bool {
	if r, ok := w.(*redactor); ok {
		w = r.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
