package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
)

// defaultDatabaseURL is the serial command's default, kept for runbooks.
const defaultDatabaseURL = "postgres://multica:multica@localhost:5432/multica?sslmode=disable"

// defaultConnectTimeout bounds a connection attempt (TCP, TLS and the
// startup exchange) unless the URL or PGCONNECT_TIMEOUT sets
// connect_timeout: a server that accepts the connection and never answers
// must not hang the command forever.
const defaultConnectTimeout = 10 * time.Second

// defaultDatabaseURLShown is the default URL as help shows it, password
// hidden.
func defaultDatabaseURLShown() string {
	u, _ := url.Parse(defaultDatabaseURL) // a constant that parses
	return u.Redacted()
}

// globals are the flags every command shares, and the output they write to.
type globals struct {
	databaseURL string
	schema      string
	logFormat   string
	logLevel    string
	out, errOut *redactor
	log         *slog.Logger
	job         jobFlags
	logLines    *logLines // where g.log writes: errOut, kept clear of the progress bar
}

func newRootCmd(out, errOut *redactor) *cobra.Command {
	g := &globals{out: out, errOut: errOut, logLines: &logLines{w: errOut}}
	root := &cobra.Command{
		Use:   "shardfill",
		Short: "Parallel, resumable backfills on a live PostgreSQL, each a job file of SQL",
		Long: `shardfill runs a backfill (--job: a shipped job by name or a job file; by
default the hourly usage rollup) in slices, on a bounded pool of workers
behind a rate limiter and the database's health. Every finished slice is
checkpointed, so any interruption resumes where it stopped; the job's
finish (the rollup's cron watermark) runs once every slice is done.
` + "`shardfill jobs`" + ` lists the shipped jobs.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setup()
		},
		// Without a subcommand, help; with an unknown one, a usage error
		// with cobra's suggestions.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{unknownCommand(cmd, args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SuggestionsMinimumDistance = 2 // cobra defaults it only on its own path
	root.Version = versionText()
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.databaseURL, "database-url", "",
		"target database (default $DATABASE_URL, else the libpq PG* variables, else "+defaultDatabaseURLShown()+")")
	pf.StringVar(&g.schema, "schema", "shardfill", "schema of shardfill's checkpoint tables (created on first use)")
	pf.StringVar(&g.logFormat, "log-format", "text", "structured logs on stderr: text or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "least level logged: debug, info, warn or error")

	addJobFlags(root, &g.job)
	root.AddCommand(newRunCmd(g), newPlanCmd(g), newStatusCmd(g), newVerifyCmd(g), newDemoCmd(g), newVersionCmd(),
		newPauseCmd(g, true), newPauseCmd(g, false), newSetCmd(g), newJobsCmd(g), newCheckCmd(g))
	return root
}

// unknownCommand phrases a mistyped command, with cobra's "did you mean"
// suggestions (within SuggestionsMinimumDistance edits, or by prefix). An
// argument that looks like a connection string is not echoed.
func unknownCommand(root *cobra.Command, arg string) error {
	if strings.Contains(arg, "://") || strings.Contains(arg, "=") {
		return errors.New("unknown command: the argument looks like a connection string; pass it with --database-url or DATABASE_URL")
	}
	msg := fmt.Sprintf("unknown command %q for %q", arg, root.Name())
	if sugg := root.SuggestionsFor(arg); len(sugg) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(sugg, "\n\t") + "\n"
	}
	return errors.New(msg + "\nRun 'shardfill --help' for usage.")
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
		opts.ReplaceAttr = omitNil
		g.log = slog.New(slog.NewTextHandler(g.logLines, opts))
	case "json":
		g.log = slog.New(slog.NewJSONHandler(g.logLines, opts))
	default:
		return usageError{fmt.Errorf("--log-format must be text or json, got %q", g.logFormat)}
	}
	if err := checkpoint.ValidSchema(g.schema); err != nil {
		return usageError{fmt.Errorf("--schema: %w", err)}
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
	if multipleAt(raw) {
		// Parsers split such a URL differently (pgx took the password's
		// tail for the host name and printed it): refuse it unseen.
		return nil, usageError{errors.New("the database URL (--database-url or DATABASE_URL) holds more than one '@' before its host: " +
			"percent-encode every '@' in the user name and password as %40 (the URL is not shown: it holds a password)")}
	}
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
	defaultApplicationName(cfg.ConnConfig)
	cfg.MaxConns = int32(concurrency + 3)
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	if err := g.adaptToPooler(ctx, raw, cfg); err != nil {
		return nil, connectError(ctx, cfg.ConnConfig.User, cfg.ConnConfig.ConnectTimeout, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, connectError(ctx, cfg.ConnConfig.User, cfg.ConnConfig.ConnectTimeout, err)
	}
	return pool, nil
}

// adaptToPooler turns pgx's cache of prepared statements off when the
// connections go through a transaction pooler (engine.TransactionPooled),
// unless the URL chose a default_query_exec_mode itself. Everything else
// works there as it is: every statement of shardfill's that needs its
// session runs inside one transaction.
func (g *globals) adaptToPooler(ctx context.Context, raw string, cfg *pgxpool.Config) error {
	if strings.Contains(raw, "default_query_exec_mode") {
		return nil
	}
	pooled, err := engine.TransactionPooled(ctx, cfg.ConnConfig)
	if err != nil || !pooled {
		return err
	}
	g.log.Info("the connections go through a transaction pooler: prepared statements are off")
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	return nil
}

// connectError says why the first connection failed in the operator's
// terms: a refused login is not an unreachable server, and a server that
// never answers is named as such.
func connectError(ctx context.Context, user string, timeout time.Duration, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
		return fmt.Errorf("authentication failed for user %q: check the password (in --database-url, DATABASE_URL or PGPASSWORD), "+
			"that the role may log in, and the server's pg_hba.conf: %w", user, err)
	case ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)):
		return fmt.Errorf("cannot reach the database: the server did not answer within %s "+
			"(set connect_timeout=SECONDS in the URL to wait longer; check the host and port): %w", timeout, err)
	}
	return fmt.Errorf("cannot reach the database (check --database-url / DATABASE_URL and that the server is up): %w", err)
}

// multipleAt reports whether a URL's authority (between "://" and the
// path, query or fragment) holds more than one '@': a user name or password
// with an '@' left unescaped.
func multipleAt(raw string) bool {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return false // a key=value connection string
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	return strings.Count(rest, "@") > 1
}

func (g *globals) addSecret(s string) {
	g.out.Add(s)
	g.errOut.Add(s)
}

// newEngine connects and builds an engine for the checkpoint schema.
func (g *globals) newEngine(ctx context.Context, cfg engine.Config) (*engine.Engine, *pgxpool.Pool, error) {
	// Refuse bad flags before touching the database. cfg started from
	// engine.DefaultConfig, so a zero here was given on purpose.
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	return g.newEngineFor(ctx, cfg, nil)
}

// newEngineFor is newEngine for the job --job names, as wrap returns it
// (nil: as it is; verify paces its months).
func (g *globals) newEngineFor(ctx context.Context, cfg engine.Config, wrap func(engine.Job) (engine.Job, error)) (*engine.Engine, *pgxpool.Pool, error) {
	if _, err := g.job.file(); err != nil {
		return nil, nil, err // a mistake in the file needs no database
	}
	// Sized for the most workers `shardfill set --concurrency` may raise
	// this process to; pgxpool opens connections only when they are used.
	pool, err := g.connect(ctx, max(cfg.WithDefaults().MaxConcurrency, 1))
	if err != nil {
		return nil, nil, err
	}
	j, err := g.job.load(ctx, pool)
	if err == nil && wrap != nil {
		j, err = wrap(j)
	}
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	cfg.Logger = g.log
	e, err := engine.New(pool, g.schema, j, &cfg)
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
