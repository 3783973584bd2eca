package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/jobs"
	"github.com/shardfill/shardfill/sqljob"
)

var (
	_ engine.Job         = (*sqljob.Sliced)(nil)
	_ engine.SliceRunner = (*sqljob.Sliced)(nil)
	_ engine.Job         = (*sqljob.Batched)(nil)
	_ engine.Queuer      = (*sqljob.Batched)(nil)
	_ engine.Ranged      = (*sqljob.Batched)(nil)
	_ engine.Verifier    = (*sqljob.Batched)(nil)
)

// jobFlags are --job and --param, which every command that works on runs
// takes: runs of several jobs live side by side in one schema.
type jobFlags struct {
	name   string
	params []string
}

func addJobFlags(cmd *cobra.Command, jf *jobFlags) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&jf.name, "job", checkpoint.DefaultJob, "the job: a shipped one by name (`shardfill jobs` lists them) or a job file (path to .sql)")
	fs.StringArrayVar(&jf.params, "param", nil, "a job parameter, name=value (repeat for several)")
}

// file reads the job file --job names (a shipped job, the rollup by
// default, or a path).
func (jf *jobFlags) file() (*jobfile.File, error) {
	name := jf.name
	if name == "" {
		name = checkpoint.DefaultJob
	}
	if path, src, ok := jobs.Source(name); ok {
		return jobfile.Parse(path, src)
	}
	if _, err := os.Stat(jf.name); err != nil {
		return nil, usageError{fmt.Errorf("--job %s: no shipped job of that name and no such file (`shardfill jobs` lists the shipped ones)", jf.name)}
	}
	return jobfile.Load(jf.name)
}

// given parses the --param flags.
func (jf *jobFlags) given() (map[string]string, error) {
	out := map[string]string{}
	for _, p := range jf.params {
		name, value, ok := strings.Cut(p, "=")
		if !ok || name == "" {
			return nil, usageError{fmt.Errorf("--param %q: write name=value", p)}
		}
		if _, dup := out[name]; dup {
			return nil, usageError{fmt.Errorf("--param %s given twice", name)}
		}
		out[name] = value
	}
	return out, nil
}

// load binds the job --job names to pool.
func (jf *jobFlags) load(ctx context.Context, pool *pgxpool.Pool) (engine.Job, error) {
	f, err := jf.file()
	if err != nil {
		return nil, err
	}
	given, err := jf.given()
	if err != nil {
		return nil, err
	}
	j, err := sqljob.Open(ctx, pool, f, given)
	if err != nil {
		return nil, err
	}
	return j.Engine().(engine.Job), nil
}

// runs is the checkpoint store of the runs of the job --job names, for
// the commands that read and steer them (no parameters needed).
func (g *globals) runs(ctx context.Context, pool *pgxpool.Pool) (*checkpoint.Store, error) {
	f, err := g.job.file()
	if err != nil {
		return nil, err
	}
	l, err := sqljob.LockOf(ctx, pool, f)
	if err != nil {
		return nil, err
	}
	return checkpoint.NewJob(pool, g.schema, f.Name, l.Key, l.Fence), nil
}

// jobError reports whether err is a mistake in the job file or its
// parameters, or a privilege the role lacks (exit code 2).
func jobError(err error) bool {
	var fileErr *jobfile.Error
	var paramErr *jobfile.ParamError
	var privErr *job.MissingPrivilegeError
	return errors.As(err, &fileErr) || errors.As(err, &paramErr) || errors.As(err, &privErr)
}

func newJobsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "jobs",
		Short: "List the shipped jobs",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, name := range jobs.Names() {
				path, src, _ := jobs.Source(name)
				f, err := jobfile.Parse(path, src)
				if err != nil {
					return err
				}
				desc := f.Description
				if name == checkpoint.DefaultJob {
					desc = "(the default) " + desc
				}
				printf(g.out, "%-22s %s\n", name, desc)
			}
			return nil
		},
	}
}

func newCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Check a job against the database without running it: statements, privileges, the plan's size",
		Long: `Prepares every statement of the job (--job) against the database without
running it, checks the privileges its statements need, and prints the size
of the run it would plan. A mistake is reported with the job file, the
section and the line; a missing privilege with the GRANT that gives it.
Exit code 0: the job can run.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := engine.DefaultConfig()
			cfg.Concurrency = 1
			e, pool, err := g.newEngine(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			p, err := e.Plan(cmd.Context(), 0)
			if err == nil {
				err = e.Preflight(cmd.Context(), true)
			}
			if err != nil {
				return err
			}
			printf(g.out, "job %s (%s): statements and privileges check out\nslices: %d\nestimated rows: %d\n",
				e.JobName(), e.JobVersion(), p.Slices, p.Rows)
			return nil
		},
	}
}
