package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/internal/fixture"
)

// ScenarioETA measures how true the ETA is that `status` (and the progress
// records and metrics, which read the same figures) gives during a run: how
// far the moment it predicts is from the run's real end, when 10 % and
// 50 % of the rows are done.
const ScenarioETA = "eta"

// etaReadEvery is how often the ETA scenario reads the run's status.
const etaReadEvery = time.Second

// etaMarks are the shares of the rows done at which the ETA is judged.
var etaMarks = []float64{0.10, 0.50}

// etaSample is one status read during the run.
type etaSample struct {
	at          time.Time
	done, total int64
	eta         *float64
	planning    bool
}

// ETA runs shardfill at concurrency c on db while reading its status every
// second, as an operator's dashboard would (a read every 200 ms took a
// tenth of a core from the run it measured), and reports, for each mark,
// the ETA read when the mark was passed against the real end.
func (h *Harness) ETA(ctx context.Context, db *DB, c int) (Result, error) {
	if err := h.Reset(ctx, db); err != nil {
		return Result{}, err
	}
	h.logf("eta: c=%d", c)
	store := checkpoint.New(db.Pool, h.schema(), fixture.AppLockKey)
	type ended struct {
		p   Proc
		err error
	}
	end := make(chan ended, 1)
	go func() {
		p, err := h.RunBinary(ctx, db.URL, "eta", "run", "--concurrency", strconv.Itoa(c), "--no-progress", "--new-run")
		end <- ended{p, err}
	}()
	var samples []etaSample
	tick := time.NewTicker(etaReadEvery)
	defer tick.Stop()
	var out ended
wait:
	for {
		select {
		case out = <-end:
			break wait
		case <-tick.C:
		}
		run, err := store.LatestRun(ctx)
		if err != nil || run == nil || run.State != checkpoint.StateRunning {
			continue // not planned yet, or a previous run's row
		}
		st, err := store.Status(ctx, run)
		if err != nil {
			continue
		}
		samples = append(samples, etaSample{at: time.Now(), done: st.RowsDone, total: st.RowsTotal, eta: st.ETASeconds, planning: st.Planning})
	}
	finished := time.Now()
	res := Result{Scenario: ScenarioETA, Mode: ModeShardfill, Concurrency: c, Wall: out.p.Wall, Rows: db.UsageRows,
		MaxRSSKiB: out.p.MaxRSSKiB, RusageMaxRSSKiB: out.p.RusageMaxRSSKiB}
	if out.err != nil {
		return res, fmt.Errorf("eta: %w", out.err)
	}
	if err := h.readRun(ctx, db, &res); err != nil {
		return res, err
	}
	if err := Verify(ctx, db, "eta"); err != nil {
		return res, err
	}
	res.Verified = true
	res.Note = etaReport(samples, finished, len(samples))
	h.logf("eta: %s", res.Note)
	return res, nil
}

// etaReport judges the ETA read at each mark against the real end.
func etaReport(samples []etaSample, finished time.Time, reads int) string {
	var parts []string
	for _, mark := range etaMarks {
		s, ok := firstPast(samples, mark)
		if !ok {
			parts = append(parts, fmt.Sprintf("%.0f%%: never read (the run ended between two reads)", 100*mark))
			continue
		}
		left := finished.Sub(s.at)
		if s.eta == nil {
			parts = append(parts, fmt.Sprintf("%.0f%%: no ETA given with %s left", 100*mark, left.Round(100*time.Millisecond)))
			continue
		}
		predicted := time.Duration(*s.eta * float64(time.Second))
		note := ""
		if s.planning {
			note = ", totals still partial (planning)"
		}
		parts = append(parts, fmt.Sprintf("%.0f%%: ETA %s, real %s (%+.0f%%%s)", 100*mark,
			predicted.Round(100*time.Millisecond), left.Round(100*time.Millisecond),
			100*(predicted.Seconds()/left.Seconds()-1), note))
	}
	return fmt.Sprintf("ETA read from status every %s (%d reads) against the real end: %s", etaReadEvery, reads, strings.Join(parts, "; "))
}

// firstPast is the first sample at or past mark (a share of the rows),
// counted against the totals of the whole run (the last sample's: the
// totals grow while the run is still being planned).
func firstPast(samples []etaSample, mark float64) (etaSample, bool) {
	if len(samples) == 0 {
		return etaSample{}, false
	}
	total := samples[len(samples)-1].total
	for _, s := range samples {
		if float64(s.done) >= mark*float64(max(total, 1)) {
			return s, true
		}
	}
	return etaSample{}, false
}
