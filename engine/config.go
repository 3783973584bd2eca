package engine

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/shardfill/shardfill/throttle"
)

// Defaults of the [Config] fields; the CLI's flags show the same values.
const (
	DefaultConcurrency  = 4
	DefaultBurst        = 1
	DefaultMaxSliceRows = 50_000
	DefaultBatchRows    = 100_000
	DefaultBatchSlices  = 5_000
	DefaultMaxAttempts  = 5
	DefaultBackoff      = 200 * time.Millisecond
	DefaultLease        = 60 * time.Second
	// DefaultMaxConcurrency is the least MaxConcurrency defaults to.
	DefaultMaxConcurrency = 32
)

// Bounds of the [Config] fields: [Config.Validate] refuses a value outside
// them. They are far beyond any useful setting, but keep every value inside
// what the arithmetic and the database can take (a pool of CeilingConcurrency+3
// connections fits an int32; CeilingMonthsBack months back stay a valid
// timestamp; a timeout stays a PostgreSQL integer of milliseconds).
const (
	CeilingConcurrency  = 1024
	CeilingRate         = 1e6
	CeilingBurst        = 1_000_000
	CeilingMonthsBack   = 1200 // a hundred years
	CeilingSliceRows    = 10_000_000_000
	CeilingBatchRows    = 10_000_000_000
	CeilingBatchSlices  = 1_000_000
	CeilingAttempts     = 1000
	CeilingBackoff      = time.Hour
	CeilingLease        = 24 * time.Hour
	CeilingTimeout      = 24 * time.Hour // StatementTimeout, LockTimeout
	CeilingSleepBetween = time.Hour      // SleepBetweenSlices
)

// Config tunes a run. The zero value of every field means its default.
type Config struct {
	// Concurrency is the number of workers in this process, each running
	// one batch of slices (one window's slices, see BatchSlices) at a time:
	// the slices in flight when batches hold one slice. Default
	// DefaultConcurrency; at most CeilingConcurrency.
	Concurrency int
	// MaxConcurrency is the most workers this process runs when the run's
	// control record (shardfill set --concurrency) raises Concurrency: the
	// pool starts this many workers and a gate lets Concurrency of them
	// claim, so the caller must size its connection pool for it (the CLI
	// allows MaxConcurrency+3 connections, opened only when used). 0 means
	// the default, max(Concurrency, DefaultMaxConcurrency).
	MaxConcurrency int
	// Rate limits slices started per second across this process; 0 means
	// no limit. Default 0; finite, at most CeilingRate. With a rate, a batch
	// holds at most Burst slices.
	Rate float64
	// Burst is the rate limiter's bucket size: how many slices may start at
	// once. Default DefaultBurst; at most CeilingBurst.
	Burst int
	// SleepBetweenSlices pauses each worker after each slice. Default 0;
	// at most CeilingSleepBetween.
	SleepBetweenSlices time.Duration
	// MonthsBack restricts a new run to the last N UTC calendar months
	// (the current one included); 0 means all history. Default 0; at most
	// CeilingMonthsBack.
	MonthsBack int
	// MonthsBackGiven says MonthsBack was chosen by the operator even
	// where it is 0 (a CLI sets it when the flag is on the command line):
	// resuming a run planned with another range then warns that the range
	// only applies to a new run. A non-zero MonthsBack warns anyway.
	// Default false.
	MonthsBackGiven bool
	// ForcePartial accepts a MonthsBack that leaves older raw rows out of
	// the rollup while the watermark still advances. Default false.
	ForcePartial bool
	// NewRun plans a fresh run even when an unfinished one exists.
	// Default false.
	NewRun bool
	// Force lets NewRun supersede a run that other processes still work
	// on (they stop within seconds); without it that is refused. Default
	// false.
	Force bool
	// PlanOnly plans (or finds) the run and returns without executing a
	// slice: plan ahead, then start workers later or on other hosts.
	// Default false.
	PlanOnly bool
	// MaxSliceRows cuts a month whose raw rows (all workspaces) exceed it
	// into whole-day windows of about that many rows when a run is planned;
	// a slice is one workspace's rows in one window. Default
	// DefaultMaxSliceRows; at most CeilingSliceRows.
	MaxSliceRows int64
	// PlanPieceRows: a history of more raw rows than this is planned in
	// pieces of whole months, newest first, while workers already work on
	// the first (checkpoint.PlanSpec.PieceRows); a smaller one in one
	// piece. Default checkpoint.DefaultPieceRows.
	PlanPieceRows int64
	// BatchRows lets slices of one window share a transaction and one
	// sweep through the window while their estimated rows stay within it;
	// each slice is still checkpointed on its own. Keep it above
	// MaxSliceRows so a window is claimed whole. Default DefaultBatchRows;
	// at most CeilingBatchRows.
	BatchRows int64
	// BatchSlices caps the slices in one batch; 1 disables batching.
	// Default DefaultBatchSlices; at most CeilingBatchSlices.
	BatchSlices int
	// MaxAttempts bounds the tries of a slice on transient errors.
	// Default DefaultMaxAttempts; at most CeilingAttempts.
	MaxAttempts int
	// Backoff is the first retry delay; it doubles per attempt, with
	// jitter, up to 30 times its value. Default DefaultBackoff; at most
	// CeilingBackoff.
	Backoff time.Duration
	// Lease is how long a claim stays valid without renewal. Default
	// DefaultLease; from 1s to CeilingLease.
	Lease time.Duration
	// StatementTimeout and LockTimeout apply to each slice's transaction
	// only; 0 leaves the server's setting. Default 0; at most CeilingTimeout.
	// A fraction of a millisecond is rounded up to the next millisecond,
	// never down to 0 (which would mean no timeout).
	StatementTimeout time.Duration
	LockTimeout      time.Duration
	// PlanTimeout is the statement_timeout of planning (the one read of
	// the whole history) and of the read-only plan; 0 means none, whatever
	// the role or database sets, since a server-wide timeout sized for the
	// application's queries would otherwise kill every attempt to plan.
	// Default 0.
	PlanTimeout time.Duration
	// Owner names this process in the checkpoint tables. Default
	// host:pid:random.
	Owner string
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// Health says which of the database's health signals pace this
	// process (package throttle: replica lag, slot WAL, archive backlog,
	// vacuum of the rollup, blocked sessions, the operator's query).
	// Unlike the other fields, its zero value is not "the defaults": a
	// zero threshold turns its signal off, as in throttle.Config, so a
	// Config{} literal runs unthrottled. [DefaultConfig] (what the CLI
	// starts from) carries throttle.DefaultConfig(): every signal on at
	// its default. Health.ApplicationName, the application_name prefix of
	// this process's backends that the blocked signal looks for, defaults
	// to the application_name of the pool's connections (the CLI sets
	// "shardfill" unless the URL sets one); with none, the blocked signal
	// is turned off with a warning. Health.Tables defaults to
	// the job's tables. Default: every signal off.
	Health throttle.Config
	// HealthExplicit marks the signals the operator set explicitly (a CLI
	// sets it from the flags on the command line): one of them that this
	// role cannot read refuses the run at start with a
	// *throttle.UnreadableError; a signal not marked holds the run at run
	// time whenever it cannot be read, rather than run blind. Default nil.
	HealthExplicit map[throttle.Signal]bool
	// OnEvent, if set, is called for every slice event (from worker
	// goroutines, so it must be safe for concurrent use). Default nil.
	OnEvent func(Event)
}

// DefaultConfig is a Config with every field at its default, but Owner
// and Logger (chosen by [New]): what a caller that binds flags to the
// fields starts from, so that a zero it reads was given on purpose.
func DefaultConfig() Config {
	return Config{
		Concurrency: DefaultConcurrency, Burst: DefaultBurst, MaxSliceRows: DefaultMaxSliceRows,
		BatchRows: DefaultBatchRows, BatchSlices: DefaultBatchSlices, MaxAttempts: DefaultMaxAttempts,
		Backoff: DefaultBackoff, Lease: DefaultLease, Health: throttle.DefaultConfig(),
	}
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	setZero(&c.Concurrency, d.Concurrency)
	setZero(&c.MaxConcurrency, max(c.Concurrency, DefaultMaxConcurrency))
	setZero(&c.Burst, d.Burst)
	setZero(&c.MaxSliceRows, d.MaxSliceRows)
	setZero(&c.BatchRows, d.BatchRows)
	setZero(&c.BatchSlices, d.BatchSlices)
	setZero(&c.MaxAttempts, d.MaxAttempts)
	setZero(&c.Backoff, d.Backoff)
	setZero(&c.Lease, d.Lease)
	setZero(&c.Owner, defaultOwner())
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// healthOn reports whether any health signal is on.
func (c Config) healthOn() bool {
	for _, s := range throttle.Signals {
		if c.Health.Enabled(s) {
			return true
		}
	}
	return false
}

func setZero[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// batchSlices is the most slices one claim takes: BatchSlices, or Burst
// when a rate is set, since every slice of a batch takes a token of the
// rate limiter before the batch starts and the bucket holds Burst.
func (c Config) batchSlices() int {
	if c.Rate > 0 {
		return min(c.BatchSlices, c.Burst)
	}
	return c.BatchSlices
}

// Validate rejects values no run can use with a [*ConfigError] that names
// the field. [New] validates after applying the defaults; a caller
// that starts from [DefaultConfig] validates before, so that a zero given
// on purpose is refused rather than taken for "default".
func (c Config) Validate() error {
	bad := func(field, rule string, got any) error {
		return &ConfigError{Msg: fmt.Sprintf("{%s} %s, got %v", field, rule, got)}
	}
	switch {
	case c.Concurrency < 1 || c.Concurrency > CeilingConcurrency:
		return bad("Concurrency", fmt.Sprintf("must be from 1 to %d", CeilingConcurrency), c.Concurrency)
	case c.MaxConcurrency != 0 && (c.MaxConcurrency < c.Concurrency || c.MaxConcurrency > CeilingConcurrency):
		return bad("MaxConcurrency", fmt.Sprintf("must be 0 (default) or from {Concurrency} (%d) to %d", c.Concurrency, CeilingConcurrency), c.MaxConcurrency)
	case !(c.Rate >= 0 && c.Rate <= CeilingRate): // NaN fails both comparisons
		return bad("Rate", fmt.Sprintf("must be 0 (no limit) or a positive number of at most %g", float64(CeilingRate)), c.Rate)
	case c.Burst < 1 || c.Burst > CeilingBurst:
		return bad("Burst", fmt.Sprintf("must be from 1 to %d", CeilingBurst), c.Burst)
	case c.MonthsBack < 0 || c.MonthsBack > CeilingMonthsBack:
		return bad("MonthsBack", fmt.Sprintf("must be from 0 (all history) to %d", CeilingMonthsBack), c.MonthsBack)
	case c.SleepBetweenSlices < 0 || c.SleepBetweenSlices > CeilingSleepBetween:
		return bad("SleepBetweenSlices", "must be from 0 to "+CeilingSleepBetween.String(), c.SleepBetweenSlices)
	case c.MaxSliceRows < 1 || c.MaxSliceRows > CeilingSliceRows:
		return bad("MaxSliceRows", fmt.Sprintf("must be from 1 to %d", int64(CeilingSliceRows)), c.MaxSliceRows)
	case c.BatchRows < 1 || c.BatchRows > CeilingBatchRows:
		return bad("BatchRows", fmt.Sprintf("must be from 1 to %d", int64(CeilingBatchRows)), c.BatchRows)
	case c.BatchSlices < 1 || c.BatchSlices > CeilingBatchSlices:
		return bad("BatchSlices", fmt.Sprintf("must be from 1 to %d", CeilingBatchSlices), c.BatchSlices)
	case c.MaxAttempts < 1 || c.MaxAttempts > CeilingAttempts:
		return bad("MaxAttempts", fmt.Sprintf("must be from 1 to %d", CeilingAttempts), c.MaxAttempts)
	case c.Backoff < 0 || c.Backoff > CeilingBackoff:
		return bad("Backoff", "must be from 0 to "+CeilingBackoff.String(), c.Backoff)
	case c.Lease < time.Second || c.Lease > CeilingLease:
		return bad("Lease", "must be from 1s to "+CeilingLease.String(), c.Lease)
	case c.StatementTimeout < 0 || c.StatementTimeout > CeilingTimeout:
		return bad("StatementTimeout", "must be from 0 (server default) to "+CeilingTimeout.String(), c.StatementTimeout)
	case c.LockTimeout < 0 || c.LockTimeout > CeilingTimeout:
		return bad("LockTimeout", "must be from 0 (server default) to "+CeilingTimeout.String(), c.LockTimeout)
	case c.PlanTimeout < 0 || c.PlanTimeout > CeilingTimeout:
		return bad("PlanTimeout", "must be from 0 (none) to "+CeilingTimeout.String(), c.PlanTimeout)
	case c.healthInvalid() != nil:
		return &ConfigError{Msg: healthMsg(c.healthInvalid())}
	case c.Force && !c.NewRun:
		return &ConfigError{Msg: "{Force} only makes sense with {NewRun}"}
	case c.ForcePartial && c.MonthsBack == 0:
		return &ConfigError{Msg: "{ForcePartial} only makes sense with {MonthsBack}"}
	}
	return nil
}

// healthMsg phrases an invalid health setting. The health settings have
// no one flag (each signal has its own, checked by the CLI before a Config
// is built), so the message names them as Config.Health does rather than
// as a {Field}, which would render as a flag that does not exist.
func healthMsg(err error) string {
	return "the health throttle's settings (Config.Health): " + err.Error()
}

// healthInvalid checks Health; an empty ApplicationName is filled from
// the pool's connections when the run starts, so it is not refused here.
func (c Config) healthInvalid() error {
	h := c.Health
	if h.ApplicationName == "" {
		h.ApplicationName = throttle.DefaultApplicationName
	}
	return h.Validate()
}

// pgMillis renders d as a PostgreSQL duration setting in whole
// milliseconds, rounded up: 500µs is 1ms, never 0ms (no timeout at all).
func pgMillis(d time.Duration) string {
	return fmt.Sprintf("%dms", (d+time.Millisecond-1)/time.Millisecond)
}

func defaultOwner() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}
