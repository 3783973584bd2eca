package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/time/rate"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// pacedVerify is a job verified month by month whose comparison waits
// for a rate limiter and logs each month it checked: verify's --rate and
// its progress, without a change to the engine's loop.
type pacedVerify struct {
	*sqljob.Batched
	limiter *rate.Limiter // nil: no limit
	log     *slog.Logger

	mu          sync.Mutex
	last        time.Time // the last month of the extent
	total, done int       // months of the first pass, and checked so far
	mismatches  int
	started     time.Time
}

// Extent notes the last month the first pass will check.
func (p *pacedVerify) Extent(ctx context.Context, q job.Querier) (first, last *time.Time, err error) {
	first, last, err = p.Batched.Extent(ctx, q)
	if err == nil && last != nil {
		p.last = shard.MonthStart(*last)
	}
	p.started = time.Now()
	return first, last, err
}

func (p *pacedVerify) Verify(ctx context.Context, q job.Querier, from, to time.Time) ([]job.Mismatch, error) {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return nil, err
		}
	}
	got, err := p.Batched.Verify(ctx, q, from, to)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == 0 {
		// The pass starts here (the engine may have moved the first month
		// up for --months-back) and runs month by month to the last.
		p.total = monthsBetween(shard.MonthStart(from), p.last) + 1
	}
	p.done++
	p.mismatches += len(got)
	if p.done > p.total {
		p.log.Info("checked a repaired month again", "month", from.UTC().Format("2006-01"), "mismatches", len(got))
		return got, nil
	}
	p.log.Info("verified month", "month", from.UTC().Format("2006-01"), "done", p.done, "of", p.total,
		"mismatches", p.mismatches, "elapsed", time.Since(p.started).Round(time.Millisecond).String())
	return got, nil
}

// monthsBetween counts the whole months from a to b (both month starts).
func monthsBetween(a, b time.Time) int {
	return (b.Year()-a.Year())*12 + int(b.Month()) - int(a.Month())
}

// errMismatch makes verify exit 1 when the rollup is wrong.
type errMismatch struct{ n int }

func (e errMismatch) Error() string {
	return fmt.Sprintf("%d (shard, month) pairs differ from what the job's verify expects; `shardfill verify --repair` re-runs them", e.n)
}

func newVerifyCmd(g *globals) *cobra.Command {
	var asJSON, repair bool
	var monthsPerSecond float64
	cfg := engine.DefaultConfig()
	cfg.Concurrency = 1
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check a job's output (the rollup's: against the aggregate of the raw rows)",
		Long: `Runs the job's verify query. For a job planned by months (the default
rollup) it recomputes the expected output month by month and lists every
(workspace, month) whose rows differ (wrong, missing or extra); --repair
re-runs those slices under the job's lock. For other jobs it lists what
their verify query returns and counts what their remaining query finds.
Exit code 0 means no mismatch (after repair, if asked).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			f, err := g.job.file()
			if err != nil {
				return err
			}
			if !f.PlanMonths || f.Verify == nil {
				if repair {
					return usageError{fmt.Errorf("--repair: job %s re-runs with `shardfill run --job %s --new-run` (its slices change nothing twice)", f.Name, g.job.name)}
				}
				return verifyFile(ctx, g, asJSON)
			}
			// Config.Validate bounds the rate like run's (finite, 0..MaxRate):
			// the engine's verify does not read it.
			cfg.Rate = monthsPerSecond
			if err := cfg.Validate(); err != nil {
				return err
			}
			paced := &pacedVerify{log: g.log}
			if monthsPerSecond > 0 {
				paced.limiter = rate.NewLimiter(rate.Limit(monthsPerSecond), 1)
			}
			e, pool, err := g.newEngineFor(ctx, cfg, func(j engine.Job) (engine.Job, error) {
				b, ok := j.(*sqljob.Batched)
				if !ok {
					return nil, fmt.Errorf("job %s is not verified month by month", j.Name())
				}
				paced.Batched = b
				return paced, nil
			})
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
	cmd.Flags().Float64Var(&monthsPerSecond, "rate", 0, "months compared per second (0 = no limit): each month is one statement over its raw rows")
	return cmd
}

// verifyFile runs a job file's verify and remaining queries: the job is
// verified when the first returns no row and the second counts none.
func verifyFile(ctx context.Context, g *globals, asJSON bool) error {
	pool, err := g.connect(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	j, err := g.job.load(ctx, pool)
	if err != nil {
		return err
	}
	fj, _ := sqljob.Of(j)
	if err := fj.Preflight(ctx, pool); err != nil {
		return err
	}
	mismatches, err := fj.Table(ctx, pool, fj.File().Verify)
	if err != nil {
		return err
	}
	remaining, counted, err := fj.Remaining(ctx, pool)
	if err != nil {
		return err
	}
	if mismatches == nil && !counted {
		return usageError{fmt.Errorf("job %s has neither a verify nor a remaining section: nothing to check", fj.Name())}
	}
	var bad int
	if mismatches != nil {
		bad = len(mismatches.Rows)
	}
	if asJSON {
		out := struct {
			Job        string     `json:"job"`
			Columns    []string   `json:"columns"`
			Mismatches [][]string `json:"mismatches"`
			Remaining  *int64     `json:"remaining"`
		}{Job: fj.Name(), Columns: []string{}, Mismatches: [][]string{}}
		if mismatches != nil {
			out.Columns, out.Mismatches = mismatches.Columns, append(out.Mismatches, mismatches.Rows...)
		}
		if counted {
			out.Remaining = &remaining
		}
		if err := json.NewEncoder(g.out).Encode(out); err != nil {
			return err
		}
	} else {
		if mismatches != nil {
			for _, r := range mismatches.Rows {
				printf(g.out, "mismatch: %s\n", strings.Join(r, " "))
			}
			printf(g.out, "verify: %d mismatching rows (shown at most as many as the job's query lists)\n", bad)
		}
		if counted {
			printf(g.out, "remaining: %d rows still to do\n", remaining)
		}
	}
	if bad > 0 || remaining > 0 {
		return fmt.Errorf("job %s is not verified: %d mismatching rows, %d rows remaining; `shardfill run --job %s` does what is left",
			fj.Name(), bad, remaining, g.job.name)
	}
	return nil
}
