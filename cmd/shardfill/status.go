package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/checkpoint"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON, check bool
	var runID int64
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the latest run (or --run ID) as stored in the checkpoint tables",
		Long: `Reads the checkpoint tables only, so it works from any machine while a
run is in progress, whichever process or host runs it. With --check it exits
1 when the run failed or was interrupted, 0 when it is done or in progress
(paused included).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, store, run, err := openRun(ctx, g, runID, false)
			if err != nil {
				return err
			}
			defer pool.Close()
			st, err := store.Status(ctx, run)
			if err != nil {
				return err
			}
			if st.ReadOnlyReplica {
				g.log.Warn("the server is a hot standby (in recovery): this status may lag the primary, " +
					"and whether processes still work on the run can only be seen on the primary")
			}
			if asJSON {
				enc := json.NewEncoder(g.out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				printStatus(g, st)
			}
			if check && (st.State == checkpoint.StateFailed || st.State == checkpoint.StateInterrupted) {
				return fmt.Errorf("status --check: run %d is %s", st.RunID, st.State)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().BoolVar(&check, "check", false, "exit 1 when the run failed or was interrupted")
	cmd.Flags().Int64Var(&runID, "run", 0, "show this run instead of the latest")
	return cmd
}

// etaText is the ETA as status prints it: a duration (marked when it
// counts rows not planned yet), what holds the run while nothing moves,
// or "-" while no pace is known; ok is false for a run that is not moving
// and has nothing to say.
func etaText(st *checkpoint.Status) (eta string, ok bool) {
	switch {
	case st.ETASeconds != nil:
		eta = (time.Duration(*st.ETASeconds) * time.Second).Round(time.Second).String()
		if st.ETAEstimated {
			eta = "~" + eta + " (estimated: planning goes on)"
		}
		return eta, true
	case st.State == checkpoint.StateRunning && st.ThrottleReason != nil && st.SlicesPending+st.SlicesRunning > 0:
		return "none while held: " + *st.ThrottleReason, true
	case st.RowsPerSecond > 0:
		return "-", true
	}
	return "", false
}

func printStatus(g *globals, st *checkpoint.Status) {
	w := g.out
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	printf(w, "run %d of job %s: %s (planned %s)\n", st.RunID, st.Job, st.State, ts(st.PlannedAt))
	if st.Paused {
		by, at := "?", "?"
		if st.PausedBy != nil {
			by = *st.PausedBy
		}
		if st.PausedAt != nil {
			at = ts(*st.PausedAt)
		}
		printf(w, "paused: by %s at %s (`shardfill unpause` lets it go on)\n", by, at)
	}
	if st.ThrottleReason != nil && !st.Paused {
		printf(w, "held back: %s\n", *st.ThrottleReason)
	}
	printf(w, "slices: %d total, %d done, %d failed, %d pending, %d running\n",
		st.SlicesTotal, st.SlicesDone, st.SlicesFailed, st.SlicesPending, st.SlicesRunning)
	pct := 100.0
	if st.RowsTotal > 0 {
		pct = 100 * float64(st.RowsDone) / float64(st.RowsTotal)
	}
	printf(w, "rows: %d of %d done (%.1f%%)\n", st.RowsDone, st.RowsTotal, pct)
	if st.Planning {
		about := ""
		if e := st.RowsTotalEstimated; e != nil {
			about = fmt.Sprintf(" (about %d rows in all, estimated from the history's extent)", *e)
		}
		printf(w, "planning: still in progress; the totals count the months planned so far%s\n", about)
	}
	if eta, ok := etaText(st); ok {
		printf(w, "rate: %.0f rows/s over the last %.0fs, eta %s\n", st.RowsPerSecond, st.RateWindowSeconds, eta)
	}
	if st.ReadOnlyReplica {
		printf(w, "note: read on a hot standby; this may lag the primary\n")
	}
	if y := st.YieldingTo; y != nil {
		how := "waits for"
		if y.Granted {
			how = "holds"
		}
		printf(w, "yielding: pid %d (%s) %s the cron lock; work resumes when it is done\n", y.PID, y.ApplicationName, how)
	}
	for _, p := range st.Processes {
		conc, rate := fmt.Sprint(p.Concurrency), rateText(p.Rate)
		if e := p.EffectiveConcurrency; e != nil && *e != p.Concurrency {
			conc = fmt.Sprintf("%d of %d", *e, p.Concurrency)
		}
		if e := p.EffectiveRate; e != nil && *e != p.Rate {
			rate = fmt.Sprintf("%s (limit %s)", rateText(*e), rate)
		}
		lim := fmt.Sprintf("concurrency %s, rate %s, burst %d, sleep %s", conc, rate, p.Burst, p.SleepBetweenSlices)
		reason := ""
		if p.Reason != nil {
			reason = " (" + *p.Reason + ")"
		}
		printf(w, "process %s (pid %d on %s): %s%s; %s; control v%d acknowledged %s ago\n", p.Owner, p.OSPID, p.Host,
			p.State, reason, lim, p.ControlVersion, time.Since(p.SeenAt).Round(time.Second))
	}
	if len(st.Processes) == 0 {
		for _, o := range st.Owners {
			printf(w, "working: %s\n", o)
		}
	}
	switch {
	case st.Job != checkpoint.DefaultJob:
		// A job file's run has no watermark.
	case st.WatermarkAt != nil:
		stamped := "?"
		if st.StampedAt != nil {
			stamped = ts(*st.StampedAt)
		}
		printf(w, "watermark: watermark_at = %s, stamped at %s\n", ts(*st.WatermarkAt), stamped)
	default:
		printf(w, "watermark: not stamped yet (watermark_at will be %s)\n", ts(st.WatermarkTarget))
	}
	if st.LastError != nil {
		printf(w, "last error: %s\n", *st.LastError)
	}
	for _, f := range st.Failures {
		e := f.Example
		printf(w, "failed: %d slices: %s (e.g. %s after %d attempts)\n", f.Slices, f.Error, e.Where(), e.Attempts)
	}
	if st.FailureGroupsOmitted > 0 {
		printf(w, "failed: %d more errors not shown (`shardfill status --json` lists failed slices one by one)\n", st.FailureGroupsOmitted)
	}
}

func rateText(r float64) string {
	if r <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s", r)
}
