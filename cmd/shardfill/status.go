package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	var runID int64
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the latest run (or --run ID) as stored in the checkpoint tables",
		Long: `Reads the checkpoint tables only, so it works from any machine while a
run is in progress, whichever process or host runs it.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := g.connect(ctx, 1)
			if err != nil {
				return err
			}
			defer pool.Close()
			store := checkpoint.New(pool, g.schema, job.CronLockKey)
			installed, err := store.Installed(ctx)
			if err != nil {
				return err
			}
			var run *checkpoint.Run
			if installed && runID > 0 {
				run, err = store.GetRun(ctx, runID)
			} else if installed {
				run, err = store.LatestRun(ctx)
			}
			if err != nil {
				return err
			}
			if run == nil {
				if runID > 0 {
					return fmt.Errorf("no run %d in schema %s", runID, g.schema)
				}
				return errors.New("no run yet in schema " + g.schema + ": start one with `shardfill run`")
			}
			st, err := store.Status(ctx, run)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(g.out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(g, st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().Int64Var(&runID, "run", 0, "show this run instead of the latest")
	return cmd
}

func printStatus(g *globals, st *checkpoint.Status) {
	w := g.out
	printf(w, "run %d: %s (planned %s)\n", st.RunID, st.State, st.PlannedAt.UTC().Format(time.RFC3339))
	printf(w, "slices: %d total, %d done, %d failed, %d pending, %d running\n",
		st.SlicesTotal, st.SlicesDone, st.SlicesFailed, st.SlicesPending, st.SlicesRunning)
	pct := 100.0
	if st.RowsTotal > 0 {
		pct = 100 * float64(st.RowsDone) / float64(st.RowsTotal)
	}
	printf(w, "rows: %d of %d done (%.1f%%)\n", st.RowsDone, st.RowsTotal, pct)
	if st.Planning {
		printf(w, "planning: still in progress; the totals count the months planned so far\n")
	}
	if st.RowsPerSecond > 0 {
		eta := "-"
		if st.ETASeconds != nil {
			eta = (time.Duration(*st.ETASeconds) * time.Second).Round(time.Second).String()
		}
		printf(w, "rate: %.0f rows/s over the last minute, eta %s\n", st.RowsPerSecond, eta)
	}
	for _, o := range st.Owners {
		printf(w, "working: %s\n", o)
	}
	if st.WatermarkAt != nil {
		printf(w, "watermark: stamped at %s\n", st.WatermarkAt.UTC().Format(time.RFC3339))
	} else {
		printf(w, "watermark: not stamped yet (will be %s)\n", st.WatermarkTarget.UTC().Format(time.RFC3339))
	}
	if st.LastError != nil {
		printf(w, "last error: %s\n", *st.LastError)
	}
	for _, f := range st.FailedSlices {
		printf(w, "failed: slice %d workspace %s %s..%s after %d attempts: %s\n", f.ID, f.Workspace,
			f.From.UTC().Format(time.RFC3339), f.To.UTC().Format(time.RFC3339), f.Attempts, f.Error)
	}
}
