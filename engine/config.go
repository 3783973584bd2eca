package engine

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"
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
)

// Config tunes a run. The zero value of every field means its default.
type Config struct {
	// Concurrency is the number of workers in this process, each running
	// one batch of slices (one window's slices, see BatchSlices) at a time:
	// the slices in flight when batches hold one slice. Default
	// DefaultConcurrency.
	Concurrency int
	// Rate limits slices started per second across this process; 0 means
	// no limit. Default 0. With a rate, a batch holds at most Burst slices.
	Rate float64
	// Burst is the rate limiter's bucket size: how many slices may start at
	// once. Default DefaultBurst.
	Burst int
	// SleepBetweenSlices pauses each worker after each slice. Default 0.
	SleepBetweenSlices time.Duration
	// MonthsBack restricts a new run to the last N UTC calendar months
	// (the current one included); 0 means all history. Default 0.
	MonthsBack int
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
	// DefaultMaxSliceRows.
	MaxSliceRows int64
	// PlanPieceRows: a history of more raw rows than this is planned in
	// pieces of whole months, newest first, while workers already work on
	// the first (checkpoint.PlanSpec.PieceRows); a smaller one in one
	// piece. Default checkpoint.DefaultPieceRows.
	PlanPieceRows int64
	// BatchRows lets slices of one window share a transaction and one
	// sweep through the window while their estimated rows stay within it;
	// each slice is still checkpointed on its own. Keep it above
	// MaxSliceRows so a window is claimed whole. Default DefaultBatchRows.
	BatchRows int64
	// BatchSlices caps the slices in one batch; 1 disables batching.
	// Default DefaultBatchSlices.
	BatchSlices int
	// MaxAttempts bounds the tries of a slice on transient errors.
	// Default DefaultMaxAttempts.
	MaxAttempts int
	// Backoff is the first retry delay; it doubles per attempt, with
	// jitter, up to 30 times its value. Default DefaultBackoff.
	Backoff time.Duration
	// Lease is how long a claim stays valid without renewal. Default
	// DefaultLease.
	Lease time.Duration
	// StatementTimeout and LockTimeout apply to each slice's transaction
	// only; 0 leaves the server's setting. Default 0.
	StatementTimeout time.Duration
	LockTimeout      time.Duration
	// Owner names this process in the checkpoint tables. Default
	// host:pid:random.
	Owner string
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
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
		Backoff: DefaultBackoff, Lease: DefaultLease,
	}
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	setZero(&c.Concurrency, d.Concurrency)
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
	case c.Concurrency < 1:
		return bad("Concurrency", "must be at least 1", c.Concurrency)
	case c.Rate < 0:
		return bad("Rate", "must be 0 (no limit) or positive", c.Rate)
	case c.Burst < 1:
		return bad("Burst", "must be at least 1", c.Burst)
	case c.MonthsBack < 0:
		return bad("MonthsBack", "must not be negative", c.MonthsBack)
	case c.SleepBetweenSlices < 0:
		return bad("SleepBetweenSlices", "must not be negative", c.SleepBetweenSlices)
	case c.MaxSliceRows < 1:
		return bad("MaxSliceRows", "must be at least 1", c.MaxSliceRows)
	case c.BatchRows < 1:
		return bad("BatchRows", "must be at least 1", c.BatchRows)
	case c.BatchSlices < 1:
		return bad("BatchSlices", "must be at least 1", c.BatchSlices)
	case c.MaxAttempts < 1:
		return bad("MaxAttempts", "must be at least 1", c.MaxAttempts)
	case c.Backoff < 0:
		return bad("Backoff", "must not be negative", c.Backoff)
	case c.Lease < time.Second:
		return bad("Lease", "must be at least 1s", c.Lease)
	case c.StatementTimeout < 0:
		return bad("StatementTimeout", "must not be negative", c.StatementTimeout)
	case c.LockTimeout < 0:
		return bad("LockTimeout", "must not be negative", c.LockTimeout)
	case c.Force && !c.NewRun:
		return &ConfigError{Msg: "{Force} only makes sense with {NewRun}"}
	case c.ForcePartial && c.MonthsBack == 0:
		return &ConfigError{Msg: "{ForcePartial} only makes sense with {MonthsBack}"}
	}
	return nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}
