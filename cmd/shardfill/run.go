package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/metrics"
	"github.com/shardfill/shardfill/shard"
)

// addPlanFlags binds the flags that decide which slices a new run has; run
// and plan share them.
func addPlanFlags(fs *pflag.FlagSet, cfg *engine.Config) {
	fs.Int64Var(&cfg.MaxSliceRows, "max-slice-rows", cfg.MaxSliceRows, "cut a month with more raw rows (all workspaces) into whole-day windows of about this many")
	fs.IntVar(&cfg.MonthsBack, "months-back", cfg.MonthsBack, "only the last N UTC calendar months, the current one included (0 = all history)")
	fs.BoolVar(&cfg.ForcePartial, "force-partial", false, "accept --months-back although older history stays out of the rollup")
	fs.BoolVar(&cfg.NewRun, "new-run", false, "plan a fresh run even if an unfinished one exists")
	fs.DurationVar(&cfg.PlanTimeout, "plan-timeout", cfg.PlanTimeout, "statement_timeout of planning, which reads the whole history (0 = none, whatever the role or database sets)")
	fs.BoolVar(&cfg.Force, "force", false, "with --new-run: supersede the unfinished run even while other processes work on it (they stop within seconds)")
}

func newRunCmd(g *globals) *cobra.Command {
	cfg := engine.DefaultConfig()
	var dryRun, noProgress bool
	var metricsAddr string
	progressInterval := DefaultProgressInterval
	var hf *healthFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Plan (or resume) the backfill and execute it",
		Long: `Plans a run (or resumes the unfinished one) and executes its slices.
The watermark is stamped when every slice of the run is done. Interrupt at
any time (SIGINT/SIGTERM): in-flight slices roll back, and running the same
command again resumes. Several processes, on several hosts, may run it
against one database at once: they share the run.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.MonthsBackGiven = cmd.Flags().Changed("months-back")
			if err := hf.apply(cmd, &cfg); err != nil {
				return err
			}
			if dryRun {
				return printPlan(cmd, g, cfg)
			}
			if progressInterval <= 0 {
				return usageError{fmt.Errorf("--progress-interval must be positive, got %s", progressInterval)}
			}
			ctx := cmd.Context()
			var m *metrics.Metrics
			if metricsAddr != "" {
				m = metrics.New()
			}
			p := newProgress(g.errOut, g.log, !noProgress, progressInterval, m)
			p.lines = g.logLines
			cfg.OnEvent = p.event
			e, pool, err := g.newEngine(ctx, cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			if m != nil {
				m.SetJob(e.JobName(), e.JobVersion())
				sctx, stopServing := context.WithCancel(ctx)
				defer stopServing()
				addr, err := m.Serve(sctx, metricsAddr, g.log)
				if err != nil {
					return usageError{fmt.Errorf("--metrics-addr: %w", err)}
				}
				g.log.Info("serving metrics", "addr", addr.String(), "metrics", "http://"+addr.String()+"/metrics")
			}
			started := time.Now()
			stopProgress := p.start(ctx, e.Store())
			res, err := e.Run(ctx)
			stopProgress()
			if res != nil && !res.NothingToDo {
				printf(g.out, "run %d: %d slices executed by this process, %d rollup rows written in %s\n",
					res.Run.ID, res.Executed, res.RowsWritten, time.Since(started).Round(time.Millisecond))
			}
			if errors.Is(err, engine.ErrInterrupted) && res != nil {
				// The error that follows says what to run next.
				printf(g.out, "interrupted: run %d is checkpointed\n", res.Run.ID)
			}
			if err != nil {
				return err
			}
			switch {
			case cfg.PlanOnly:
				printf(g.out, "run %d planned: %d slices, %d rows; `shardfill run` executes it\n",
					res.Run.ID, res.Run.SlicesTotal, res.Run.RowsTotal)
			case res.NothingToDo && !e.Watermarked():
				printf(g.out, "run %d of job %s is already done; nothing to do. Use --new-run to run it again.\n", res.Run.ID, e.JobName())
			case res.NothingToDo:
				printf(g.out, "run %d is already done (watermark stamped %s); nothing to do. Use --new-run to backfill again.\n",
					res.Run.ID, stampedAt(res.Run))
			case res.Outcome.State == checkpoint.StateDone && !e.Watermarked():
				printf(g.out, "run %d of job %s done\n", res.Run.ID, e.JobName())
			case res.Outcome.Stamped && res.Outcome.Closed:
				printf(g.out, "run %d done: watermark stamped at %s\n", res.Run.ID, res.Run.WatermarkTarget.UTC().Format(time.RFC3339))
			case res.Outcome.Stamped:
				printf(g.out, "run %d already done: watermark %s stamped by another process at %s\n", res.Run.ID,
					res.Run.WatermarkTarget.UTC().Format(time.RFC3339), res.Outcome.StampedAt.UTC().Format(time.RFC3339))
			case res.Outcome.State == checkpoint.StateDone:
				printf(g.out, "run %d done, but the watermark was NOT stamped: the finish's UPDATE changed no row (is the watermark's state row missing?)\n", res.Run.ID)
			default:
				printf(g.out, "run %d: this process found no more work; %d slices are still held by other processes\n",
					res.Run.ID, res.Outcome.Counts.Unfinished())
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "workers in this process, each running one batch of slices at a time (slices in flight with --batch-slices 1)")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "slices started per second across this process (0 = no limit)")
	fs.IntVar(&cfg.Burst, "burst", cfg.Burst, "rate limiter burst: slices that may start at once (with --rate, also the most slices in one batch)")
	fs.DurationVar(&cfg.SleepBetweenSlices, "sleep-between-slices", cfg.SleepBetweenSlices, "pause of each worker after each slice")
	fs.BoolVar(&dryRun, "dry-run", false, "print the slices the run would have and write nothing (same as plan)")
	fs.Int64Var(&cfg.BatchRows, "batch-rows", cfg.BatchRows, "slices of one window share a transaction up to this many raw rows (each still checkpointed); keep it above --max-slice-rows so a window is claimed whole")
	fs.IntVar(&cfg.BatchSlices, "batch-slices", cfg.BatchSlices, "most slices in one batch (1 = no batching)")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", cfg.MaxAttempts, "tries of a slice on transient errors")
	fs.DurationVar(&cfg.Lease, "lease", cfg.Lease, "how long a claimed slice stays this process's without renewal")
	fs.DurationVar(&cfg.StatementTimeout, "statement-timeout", cfg.StatementTimeout, "statement_timeout of each slice's transaction (0 = server default)")
	fs.DurationVar(&cfg.LockTimeout, "lock-timeout", cfg.LockTimeout, "lock_timeout of each slice's transaction (0 = server default)")
	fs.BoolVar(&cfg.PlanOnly, "plan-only", false, "plan the run into the checkpoint tables and exit without executing it")
	fs.BoolVar(&noProgress, "no-progress", false, "no progress bar (progress records are still logged)")
	fs.DurationVar(&progressInterval, "progress-interval", progressInterval, "how often a progress record is logged")
	fs.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://HOST:PORT/metrics and /healthz (port 0: a free one, logged)")
	fs.IntVar(&cfg.MaxConcurrency, "max-concurrency", cfg.MaxConcurrency, "most workers shardfill set --concurrency may raise this process to; sizes the connection pool (0 = max(--concurrency, 32))")
	addPlanFlags(fs, &cfg)
	hf = addHealthFlags(fs, &cfg)
	return cmd
}

func newPlanCmd(g *globals) *cobra.Command {
	cfg := engine.DefaultConfig()
	cfg.Concurrency = 1
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Print the slices a run would have; write nothing",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.MonthsBackGiven = cmd.Flags().Changed("months-back")
			return printPlan(cmd, g, cfg)
		},
	}
	addPlanFlags(cmd.Flags(), &cfg)
	return cmd
}

// printPlan is plan and run --dry-run: it reads and prints, nothing more.
func printPlan(cmd *cobra.Command, g *globals, cfg engine.Config) error {
	e, pool, err := g.newEngine(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	p, err := e.Plan(cmd.Context(), 10)
	if err != nil {
		return err
	}
	w := g.out
	if p.Resume != nil {
		printf(w, "run would resume run %d (%s): %d of %d slices done, %d pending, %d failed\n",
			p.Resume.ID, p.Resume.State, p.Counts.Done, p.Counts.Total, p.Counts.Pending, p.Counts.Failed)
		if e.Watermarked() {
			printf(w, "watermark target: %s (run %d's, taken when it was planned)\n",
				p.Resume.WatermarkTarget.UTC().Format(time.RFC3339), p.Resume.ID)
		}
		printf(w, "a new run (--new-run) would have:\n")
	}
	if !e.Watermarked() {
		printf(w, "slices: %d (job %s)\nestimated rows: %d\n", p.Slices, e.JobName(), p.Rows)
	} else if err := printRollupPlan(cmd, pool, w, p); err != nil {
		return err
	}
	if t := p.Summary; t != nil {
		printf(w, "what a run would change (the job's dry run):\n")
		printTable(w, t)
	}
	if len(p.Largest) > 0 {
		printf(w, "largest slices:\n")
		for _, s := range p.Largest {
			printf(w, "  %s  %-10s  %d rows\n", s.Workspace, shard.Period(s.From, s.To), s.EstRows)
		}
	}
	printf(w, "nothing was written\n")
	return nil
}

// printRollupPlan prints the size of a rollup run and the watermark it
// would stamp.
func printRollupPlan(cmd *cobra.Command, pool *pgxpool.Pool, w io.Writer, p *engine.Plan) error {
	rng := "all history"
	if p.RangeFrom != nil {
		rng = "from " + p.RangeFrom.UTC().Format("2006-01-02")
	}
	printf(w, "slices: %d (%s)\nestimated rows: %d\n", p.Slices, rng, p.Rows)
	// The expression the checkpoint tables plan a run with.
	var target time.Time
	if err := pool.QueryRow(cmd.Context(), `SELECT now() - interval '5 minutes'`).Scan(&target); err != nil {
		return err
	}
	label := "watermark target"
	if p.Resume != nil {
		label = "its watermark target"
	}
	printf(w, "%s: %s (the database's now() - 5 minutes, taken when the run is planned)\n", label, target.UTC().Format(time.RFC3339))
	return nil
}

// printTable prints a job's query result as aligned columns.
func printTable(w io.Writer, t *job.Table) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  "+strings.Join(t.Columns, "\t"))
	for _, r := range t.Rows {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

// stampedAt renders when a run stamped the watermark.
func stampedAt(r *checkpoint.Run) string {
	if r.StampedAt == nil {
		return "never"
	}
	return r.StampedAt.UTC().Format(time.RFC3339)
}
