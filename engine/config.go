package engine

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Config tunes a run. The zero value of every field means its default.
type Config struct {
	// Concurrency is the number of workers in this process, each running
	// one batch of slices (one window's slices, see BatchSlices) at a time:
	// the slices in flight when batches hold one slice. Default 4.
	Concurrency int
	// Rate limits slices started per second across this process; 0 means
	// no limit. Default 0. With a rate, a batch holds at most Burst slices.
	Rate float64
	// Burst is the rate limiter's bucket size: how many slices may start at
	// once. Default 1.
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
	// PlanOnly plans (or finds) the run and returns without executing a
	// slice: plan ahead, then start workers later or on other hosts.
	// Default false.
	PlanOnly bool
	// MaxSliceRows cuts a month whose raw rows (all workspaces) exceed it
	// into whole-day windows of about that many rows when a run is planned;
	// a slice is one workspace's rows in one window. Default 50 000.
	MaxSliceRows int64
	// BatchRows lets slices of one window share a transaction and one
	// sweep through the window while their estimated rows stay within it;
	// each slice is still checkpointed on its own. Default 100 000 (keep
	// it above MaxSliceRows so a window is claimed whole).
	BatchRows int64
	// BatchSlices caps the slices in one batch. Default 5 000; 1 disables
	// batching.
	BatchSlices int
	// MaxAttempts bounds the tries of a slice on transient errors.
	// Default 5.
	MaxAttempts int
	// Backoff is the first retry delay; it doubles per attempt, with
	// jitter, up to 30 times its value. Default 200ms.
	Backoff time.Duration
	// Lease is how long a claim stays valid without renewal. Default 60s.
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

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Concurrency == 0 {
		c.Concurrency = 4
	}
	if c.Burst == 0 {
		c.Burst = 1
	}
	if c.MaxSliceRows == 0 {
		c.MaxSliceRows = 50_000
	}
	if c.BatchRows == 0 {
		c.BatchRows = 100_000
	}
	if c.BatchSlices == 0 {
		c.BatchSlices = 5_000
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff == 0 {
		c.Backoff = 200 * time.Millisecond
	}
	if c.Lease == 0 {
		c.Lease = 60 * time.Second
	}
	if c.Owner == "" {
		c.Owner = defaultOwner()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
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

// Validate rejects values no run can use.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return &ConfigError{fmt.Sprintf("--concurrency must be at least 1, got %d", c.Concurrency)}
	case c.Rate < 0:
		return &ConfigError{fmt.Sprintf("--rate must be 0 (no limit) or positive, got %g", c.Rate)}
	case c.Burst < 1:
		return &ConfigError{fmt.Sprintf("--burst must be at least 1, got %d", c.Burst)}
	case c.MonthsBack < 0:
		return &ConfigError{fmt.Sprintf("--months-back must be positive, got %d", c.MonthsBack)}
	case c.SleepBetweenSlices < 0:
		return &ConfigError{"--sleep-between-slices must not be negative"}
	case c.MaxSliceRows < 1 || c.BatchRows < 1 || c.BatchSlices < 1:
		return &ConfigError{"--max-slice-rows, --batch-rows and --batch-slices must be at least 1"}
	case c.MaxAttempts < 1:
		return &ConfigError{fmt.Sprintf("--max-attempts must be at least 1, got %d", c.MaxAttempts)}
	case c.Lease < time.Second:
		return &ConfigError{"--lease must be at least 1s"}
	case c.StatementTimeout < 0 || c.LockTimeout < 0:
		return &ConfigError{"timeouts must not be negative"}
	case c.ForcePartial && c.MonthsBack == 0:
		return &ConfigError{"--force-partial only makes sense with --months-back"}
	}
	return nil
}

func defaultOwner() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}
