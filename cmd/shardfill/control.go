package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
)

// openRun connects and finds run runID, or the latest run when runID is 0.
// No run is a usage error (exit 2) when refuse is set, a failure (exit 1)
// otherwise.
func openRun(ctx context.Context, g *globals, runID int64, refuse bool) (*pgxpool.Pool, *checkpoint.Store, *checkpoint.Run, error) {
	pool, err := g.connect(ctx, 1)
	if err != nil {
		return nil, nil, nil, err
	}
	store, err := g.runs(ctx, pool)
	var run *checkpoint.Run
	var installed bool
	if err == nil {
		installed, err = store.Installed(ctx)
	}
	switch {
	case err != nil:
	case installed && runID > 0:
		run, err = store.GetRun(ctx, runID)
	case installed:
		run, err = store.LatestRun(ctx)
	}
	if err == nil && run == nil {
		err = errors.New("no run of job " + store.Job() + " yet in schema " + g.schema + ": start one with `shardfill run`")
		if runID > 0 {
			err = fmt.Errorf("no run %d in schema %s", runID, g.schema)
		}
		if refuse {
			err = usageError{err}
		}
	}
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	return pool, store, run, nil
}

// operator names who steers a run: user@host.
func operator() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// steerable refuses a run that no longer takes control: done or replaced.
func steerable(run *checkpoint.Run) error {
	if run.Finished() {
		what := "done"
		if run.State == checkpoint.StateSuperseded {
			what = "superseded by a newer run"
		}
		return usageError{fmt.Errorf("run %d is %s: there is nothing to steer", run.ID, what)}
	}
	return nil
}

// steer applies change to the run runID (or the latest) in its control
// record, as by (default user@host), refusing a run that no longer takes
// control.
func steer(ctx context.Context, g *globals, runID int64, by string,
	change func(store *checkpoint.Store, run *checkpoint.Run, by string) (*checkpoint.Control, error)) (*checkpoint.Run, *checkpoint.Control, string, error) {
	pool, store, run, err := openRun(ctx, g, runID, true)
	if err != nil {
		return nil, nil, "", err
	}
	defer pool.Close()
	if err := steerable(run); err != nil {
		return nil, nil, "", err
	}
	if by == "" {
		by = operator()
	}
	ctl, err := change(store, run, by)
	return run, ctl, by, err
}

func newPauseCmd(g *globals, pause bool) *cobra.Command {
	var runID int64
	var by string
	use, short := "pause", "Hold every process of the run after its batches in flight (stays paused across restarts)"
	if !pause {
		use, short = "unpause", "Let every process of a paused run claim again"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long: short + `.

Every process of the run reads the run's control record every ` + engine.ControlInterval.String() + `:
paused, it finishes the batches in flight, claims nothing new, keeps its
claims and the cron lock, and waits. A process started while the run is
paused joins it and waits too. ` + "`shardfill status`" + ` shows who paused it and when.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			run, ctl, by, err := steer(ctx, g, runID, by, func(store *checkpoint.Store, run *checkpoint.Run, by string) (*checkpoint.Control, error) {
				return store.SetPaused(ctx, run.ID, pause, by)
			})
			if err != nil {
				return err
			}
			if pause {
				printf(g.out, "run %d paused by %s (control version %d); its processes hold within %s, after their batches in flight\n",
					run.ID, by, ctl.Version, engine.ControlInterval)
			} else {
				printf(g.out, "run %d unpaused by %s (control version %d); its processes claim again within %s\n",
					run.ID, by, ctl.Version, engine.ControlInterval)
			}
			return nil
		},
	}
	cmd.Flags().Int64Var(&runID, "run", 0, "the run to "+use+" (default the latest)")
	cmd.Flags().StringVar(&by, "by", "", "who does it, as status shows (default user@host)")
	return cmd
}

func newSetCmd(g *globals) *cobra.Command {
	var runID int64
	var by string
	var rate float64
	var burst, concurrency int
	var sleep time.Duration
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Change the limits of every process of the run, applied within seconds",
		Long: `Changes the given limits (only those) in the run's control record; every
process of the run applies them within ` + engine.ControlInterval.String() + ` without a restart, and
` + "`shardfill status`" + ` shows the limits each live process runs under. --rate and
--concurrency are per process. A process does not raise its concurrency above
its --max-concurrency (the connections it sized its pool for).`,
		Example: `  shardfill set --rate 500 --burst 100
  shardfill set --rate 0            # no rate limit
  shardfill set --concurrency 2 --sleep-between-slices 50ms`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The values are checked by the engine's one validation, as
			// the flags of run are.
			fs := cmd.Flags()
			var l checkpoint.Limits
			cfg := engine.DefaultConfig()
			if fs.Changed("rate") {
				l.Rate, cfg.Rate = &rate, rate
			}
			if fs.Changed("burst") {
				l.Burst, cfg.Burst = &burst, burst
			}
			if fs.Changed("concurrency") {
				l.Concurrency, cfg.Concurrency = &concurrency, concurrency
			}
			if fs.Changed("sleep-between-slices") {
				l.SleepBetweenSlices, cfg.SleepBetweenSlices = &sleep, sleep
			}
			if l == (checkpoint.Limits{}) {
				return usageError{errors.New("nothing to set: give --rate, --burst, --concurrency or --sleep-between-slices")}
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			run, ctl, by, err := steer(ctx, g, runID, by, func(store *checkpoint.Store, run *checkpoint.Run, by string) (*checkpoint.Control, error) {
				return store.SetLimits(ctx, run.ID, l, by)
			})
			if err != nil {
				return err
			}
			printf(g.out, "run %d: limits set by %s (control version %d): %s; its processes apply them within %s\n",
				run.ID, by, ctl.Version, describeLimits(ctl.Limits), engine.ControlInterval)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.Int64Var(&runID, "run", 0, "the run to steer (default the latest)")
	fs.StringVar(&by, "by", "", "who does it, as status shows (default user@host)")
	fs.Float64Var(&rate, "rate", 0, "slices started per second in each process (0 = no limit)")
	fs.IntVar(&burst, "burst", 1, "rate limiter burst (with --rate, also the most slices in one batch)")
	fs.IntVar(&concurrency, "concurrency", 1, "workers claiming at once in each process")
	fs.DurationVar(&sleep, "sleep-between-slices", 0, "pause of each worker after each batch")
	return cmd
}

// describeLimits renders the limits a control record sets; the others are
// each process's own flags.
func describeLimits(l checkpoint.Limits) string {
	s := ""
	add := func(name string, v any) {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s %v", name, v)
	}
	if l.Rate != nil {
		if *l.Rate == 0 {
			add("rate", "unlimited")
		} else {
			add("rate", *l.Rate)
		}
	}
	if l.Burst != nil {
		add("burst", *l.Burst)
	}
	if l.Concurrency != nil {
		add("concurrency", *l.Concurrency)
	}
	if l.SleepBetweenSlices != nil {
		add("sleep-between-slices", *l.SleepBetweenSlices)
	}
	if s == "" {
		return "each process's own flags"
	}
	return s
}
