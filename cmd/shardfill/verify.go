package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/engine"
)

// errMismatch makes verify exit 1 when the rollup is wrong.
type errMismatch struct{ n int }

func (e errMismatch) Error() string {
	return fmt.Sprintf("%d (workspace, month) pairs differ from the raw rows; `shardfill verify --repair` re-runs them", e.n)
}

func newVerifyCmd(g *globals) *cobra.Command {
	var asJSON, repair bool
	cfg := engine.DefaultConfig()
	cfg.Concurrency = 1
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare task_usage_hourly with the aggregate of the raw rows",
		Long: `Recomputes the expected rollup from task_usage month by month and lists
every (workspace, month) whose rows differ (wrong, missing or extra).
--repair re-runs those slices under the cron lock. Exit code 0 means no
mismatch (after repair, if asked).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			e, pool, err := g.newEngine(ctx, cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			res, err := e.Verify(ctx, repair)
			if err != nil {
				return err
			}
			if asJSON {
				type row struct {
					Workspace string `json:"workspace_id"`
					Month     string `json:"month"`
					Rows      int64  `json:"rows"`
				}
				out := struct {
					Months     int   `json:"months_checked"`
					Mismatches []row `json:"mismatches"`
					Repaired   int   `json:"repaired"`
					Remaining  int   `json:"remaining_after_repair"`
				}{Months: res.Months, Mismatches: []row{}, Repaired: res.Repaired, Remaining: len(res.Remaining)}
				for _, m := range res.Mismatches {
					out.Mismatches = append(out.Mismatches, row{m.Workspace, m.Month.UTC().Format("2006-01"), m.Rows})
				}
				if err := json.NewEncoder(g.out).Encode(out); err != nil {
					return err
				}
			} else {
				for _, m := range res.Mismatches {
					printf(g.out, "mismatch: workspace %s month %s: %d rows differ\n", m.Workspace, m.Month.UTC().Format("2006-01"), m.Rows)
				}
				printf(g.out, "checked %d months: %d mismatching (workspace, month) pairs", res.Months, len(res.Mismatches))
				if repair {
					printf(g.out, ", %d repaired", res.Repaired)
				}
				printf(g.out, "\n")
			}
			if len(res.Mismatches) > 0 && !repair {
				return errMismatch{len(res.Mismatches)}
			}
			if len(res.Remaining) > 0 {
				return fmt.Errorf("%d (workspace, month) pairs still differ after the repair", len(res.Remaining))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().BoolVar(&repair, "repair", false, "re-run the mismatching slices")
	cmd.Flags().IntVar(&cfg.MonthsBack, "months-back", 0, "only the last N UTC calendar months")
	return cmd
}
