package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/job"
)

// defaultDatabaseURL is the serial command's default, kept for runbooks.
const defaultDatabaseURL = "postgres://multica:multica@localhost:5432/multica?sslmode=disable"

// globals are the flags every command shares, and the output they write to.
type globals struct {
	databaseURL string
	schema      string
	logFormat   string
	logLevel    string
	out, errOut *redactor
	log         *slog.Logger
}

func newRootCmd(out, errOut *redactor) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:   "shardfill",
		Short: "Parallel, resumable backfill of task_usage_hourly",
		Long: `shardfill backfills the task_usage_hourly rollup from task_usage in
per-workspace month slices, on a bounded pool of workers behind a rate
limiter. Every finished slice is checkpointed, so any interruption resumes
where it stopped; the cron watermark is stamped once every slice is done.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setup()
		},
		// Without a subcommand, help; with an unknown one, a usage error.
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q; see `shardfill --help`", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.databaseURL, "database-url", "",
		"target database (default $DATABASE_URL, else the libpq PG* variables, else "+redactURL(defaultDatabaseURL)+")")
	pf.StringVar(&g.schema, "schema", "shardfill", "schema of shardfill's checkpoint tables (created on first use)")
	pf.StringVar(&g.logFormat, "log-format", "text", "structured logs on stderr: text or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "least level logged: debug, info, warn or error")

	root.AddCommand(newRunCmd(g), newPlanCmd(g), newStatusCmd(g), newVerifyCmd(g), newDemoCmd(g),
		newPauseCmd(g, true), newPauseCmd(g, false), newSetCmd(g))
	return root
}

// setup validates the shared flags and prepares logging.
func (g *globals) setup() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return usageError{fmt.Errorf("--log-level must be debug, info, warn or error, got %q", g.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		g.log = slog.New(slog.NewTextHandler(g.errOut, opts))
	case "json":
		g.log = slog.New(slog.NewJSONHandler(g.errOut, opts))
	default:
		return usageError{fmt.Errorf("--log-format must be text or json, got %q", g.logFormat)}
	}
	if g.schema == "" {
		return usageError{errors.New("--schema must not be empty")}
	}
	return nil
}

// resolveURL applies the contract's precedence: flag, $DATABASE_URL, the
// libpq PG* variables (an empty string makes pgx read them), the default.
func (g *globals) resolveURL() string {
	if g.databaseURL != "" {
		return g.databaseURL
	}
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	for _, name := range []string{"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
		"PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGAPPNAME", "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS"} {
		if os.Getenv(name) != "" {
			return ""
		}
	}
	return defaultDatabaseURL
}

// connect opens a pool sized for concurrency workers plus the checkpoint
// bookkeeping, after registering the password with the output redactors.
func (g *globals) connect(ctx context.Context, concurrency int) (*pgxpool.Pool, error) {
	raw := g.resolveURL()
	g.addSecret(os.Getenv("PGPASSWORD"))
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			g.addSecret(pw)
		}
	}
	cfg, err := pgxpool.ParseConfig(raw)
	if err != nil {
		// pgx's message hides the password; the raw URL is not repeated.
		return nil, usageError{fmt.Errorf("invalid database URL: %w", err)}
	}
	g.addSecret(cfg.ConnConfig.Password)
	cfg.MaxConns = int32(concurrency + 3)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach the database (check --database-url / DATABASE_URL and that the server is up): %w", err)
	}
	return pool, nil
}

func (g *globals) addSecret(s string) {
	g.out.Add(s)
	g.errOut.Add(s)
}

// redactURL hides the password of a connection URL for display.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// newEngine connects and builds an engine for the checkpoint schema.
func (g *globals) newEngine(ctx context.Context, cfg engine.Config) (*engine.Engine, *pgxpool.Pool, error) {
	// Refuse bad flags before touching the database. cfg started from
	// engine.DefaultConfig, so a zero here was given on purpose.
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	// Sized for the most workers `shardfill set --concurrency` may raise
	// this process to; pgxpool opens connections only when they are used.
	pool, err := g.connect(ctx, max(cfg.WithDefaults().MaxConcurrency, 1))
	if err != nil {
		return nil, nil, err
	}
	cfg.Logger = g.log
	e, err := engine.New(pool, g.schema, new(job.Hourly), &cfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return e, pool, nil
}

// noArgs is cobra.NoArgs as a usage error (exit code 2).
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }
