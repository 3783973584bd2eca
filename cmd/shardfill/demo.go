package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
)

func newDemoCmd(g *globals) *cobra.Command {
	gen := fixture.Config{Seed: 42, Workspaces: 400, Months: 24, Rows: 200_000, Skew: 1.1}
	cfg := engine.DefaultConfig()
	interruptAt := 0.4
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Backfill a synthetic history on a throwaway local PostgreSQL",
		Long: `Starts a private PostgreSQL in a temp dir, loads the schema and a
synthetic usage history, runs the backfill with live progress (interrupting
it once partway to show the resume), verifies the rollup against the raw
rows, prints a summary and stops the database. Nothing outside the temp dir
is touched.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Refuse bad numbers before a server is started for nothing.
			if err := cfg.Validate(); err != nil {
				return err
			}
			for _, n := range []struct {
				flag     string
				got, max int
			}{{"--workspaces", gen.Workspaces, 1_000_000}, {"--months", gen.Months, engine.CeilingMonthsBack}, {"--rows", gen.Rows, 1_000_000_000}} {
				if n.got < 1 || n.got > n.max {
					return usageError{fmt.Errorf("%s must be from 1 to %d, got %d", n.flag, n.max, n.got)}
				}
			}
			if !(interruptAt >= 0 && interruptAt < 1) {
				return usageError{fmt.Errorf("--interrupt-at must be from 0 (never) to below 1, got %v", interruptAt)}
			}
			return runDemo(cmd.Context(), g, gen, cfg, interruptAt)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "workers, each running one batch of slices at a time")
	fs.IntVar(&gen.Workspaces, "workspaces", gen.Workspaces, "workspaces in the synthetic history")
	fs.IntVar(&gen.Months, "months", gen.Months, "months of synthetic history")
	fs.IntVar(&gen.Rows, "rows", gen.Rows, "usage rows in the synthetic history (about)")
	fs.Int64Var(&gen.Seed, "seed", gen.Seed, "generator seed")
	fs.Float64Var(&interruptAt, "interrupt-at", interruptAt, "interrupt the first run at this fraction of rows, then resume (0 = never)")
	return cmd
}

func runDemo(ctx context.Context, g *globals, gen fixture.Config, cfg engine.Config, interruptAt float64) (err error) {
	say := func(format string, args ...any) { printf(g.out, "==> "+format+"\n", args...) }

	say("starting a throwaway PostgreSQL")
	srv, err := pgserver.Start(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := srv.Stop(); stopErr != nil && err == nil {
			err = stopErr
		}
		say("stopped the throwaway PostgreSQL")
	}()
	g.addSecret(srv.Password())
	url, err := srv.CreateDatabase(ctx, "shardfill_demo")
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()

	say("loading the schema and a synthetic history (%d workspaces, %d months, ~%d usage rows, seed %d)",
		gen.Workspaces, gen.Months, gen.Rows, gen.Seed)
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		return err
	}
	stats, err := fixture.Generate(ctx, pool, gen)
	if err != nil {
		return err
	}
	say("history: %d workspaces, %d agents, %d tasks, %d usage rows from %s to %s",
		stats.Workspaces, stats.Agents, stats.Tasks, stats.Usage,
		stats.MinCreated.UTC().Format("2006-01-02"), stats.MaxCreated.UTC().Format("2006-01-02"))

	g.databaseURL = url
	started := time.Now()
	if interruptAt > 0 && interruptAt < 1 {
		say("backfilling with %d workers; interrupting at %.0f%% of the rows to show the resume", cfg.Concurrency, 100*interruptAt)
		if err := demoRun(ctx, g, cfg, interruptAt); !errors.Is(err, engine.ErrInterrupted) {
			return fmt.Errorf("demo: expected the first run to be interrupted, got %v", err)
		}
		say("interrupted; the finished slices are checkpointed. Resuming:")
	} else {
		say("backfilling with %d workers", cfg.Concurrency)
	}
	if err := demoRun(ctx, g, cfg, 0); err != nil {
		return err
	}
	took := time.Since(started)

	say("verifying the rollup against the raw rows")
	diffs, total, err := fixture.Diff(ctx, pool, 5)
	if err != nil {
		return err
	}
	rollupRows, err := fixture.RollupRows(ctx, pool)
	if err != nil {
		return err
	}
	store, err := g.runs(ctx, pool)
	if err != nil {
		return err
	}
	run, err := store.LatestRun(ctx)
	if err != nil {
		return err
	}
	st, err := store.Status(ctx, run)
	if err != nil {
		return err
	}
	watermark, err := fixture.Watermark(ctx, pool)
	if err != nil {
		return err
	}
	printf(g.out, "\nsummary\n")
	printf(g.out, "  run %d: %s, %d slices, %d usage rows -> %d rollup rows in %s (%.0f rows/s)\n",
		st.RunID, st.State, st.SlicesDone, stats.Usage, rollupRows, took.Round(time.Millisecond),
		float64(stats.Usage)/took.Seconds())
	if watermark != nil {
		printf(g.out, "  watermark: %s (handed over to the cron job)\n", watermark.UTC().Format(time.RFC3339))
	}
	if total > 0 {
		for _, d := range diffs {
			printf(g.out, "  mismatch: %s\n", d)
		}
		return fmt.Errorf("demo: the rollup does NOT match the raw rows (%d differing rows)", total)
	}
	printf(g.out, "  the rollup matches the raw rows, row for row (%d rollup rows checked)\n", rollupRows)
	return nil
}

// demoRun runs the engine once; with stopAt > 0 it cancels the run when
// that fraction of the rows is done.
func demoRun(ctx context.Context, g *globals, cfg engine.Config, stopAt float64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := newProgress(g.errOut, g.log, true, time.Second, nil)
	p.lines = g.logLines
	cfg.OnEvent = func(ev engine.Event) {
		p.event(ev)
		if stopAt > 0 && p.fraction() >= stopAt {
			cancel()
		}
	}
	e, pool, err := g.newEngine(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := g.runs(ctx, pool)
	if err != nil {
		return err
	}
	stop := p.start(ctx, store)
	res, err := e.Run(ctx)
	stop()
	if res != nil && !res.NothingToDo {
		printf(g.out, "    this pass: %d slices, %d rollup rows written\n", res.Executed, res.RowsWritten)
	}
	return err
}
