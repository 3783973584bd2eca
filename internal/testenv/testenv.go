// Package testenv sets up what most shardfill tests start from: a fresh
// database on the shared throwaway server, with the target schema and a
// generated history loaded.
package testenv

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// Small is a history with every edge case that loads in well under a second.
var Small = fixture.Config{Seed: 7, Workspaces: 25, Months: 6, Rows: 4000, Skew: 1.1}

// DB returns the URL of a fresh database holding the target schema and,
// unless cfg is nil, a history generated from cfg.
func DB(t testing.TB, cfg *fixture.Config) string {
	t.Helper()
	url := pgtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pool := Pool(t, url)
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		if _, err := fixture.Generate(ctx, pool, *cfg); err != nil {
			t.Fatal(err)
		}
	}
	return url
}

// Pool opens a pool on url, closed when the test ends.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Conn opens a single connection on url, closed when the test ends.
func Conn(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// RequireOracle fails the test unless task_usage_hourly equals the
// aggregate of the raw rows, row for row.
func RequireOracle(t testing.TB, q fixture.Querier) {
	t.Helper()
	diffs, total, err := fixture.Diff(context.Background(), q, 10)
	if err != nil {
		t.Fatal(err)
	}
	if total > 0 {
		t.Fatalf("rollup differs from the oracle in %d rows, e.g.:\n%v", total, diffs)
	}
}

// RollupRows counts task_usage_hourly rows, failing the test on error.
func RollupRows(t testing.TB, q fixture.Querier) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), `SELECT count(*) FROM task_usage_hourly`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TryCronLock reports whether another session can take the cron job's
// lock, exactly as rollup_task_usage_hourly() tries it. A backend whose
// client went away (a cancelled statement's connection) ends its
// transaction only once the server notices, so a lock still held is tried
// again for up to two seconds before TryCronLock says so.
func TryCronLock(t testing.TB, url string) bool {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if tryCronLockOnce(t, url) || time.Now().After(deadline) {
			return tryCronLockOnce(t, url)
		}
	}
}

// HeldCronLock reports whether the cron job would find its lock taken right
// now (no waiting: for checks made while a run works).
func HeldCronLock(t testing.TB, url string) bool {
	t.Helper()
	return !tryCronLockOnce(t, url)
}

func tryCronLockOnce(t testing.TB, url string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var got bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(fixture.AppLockKey)).Scan(&got); err != nil {
		t.Fatal(err)
	}
	return got
}

// Quiet is a logger that drops everything, for engines whose logs a test
// does not read.
var Quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Engine builds an engine on its own pool for url, with checkpoints in
// schema "shardfill", the production job unless j is given, and a quiet
// logger unless cfg has one.
func Engine(t testing.TB, url string, j engine.Job, cfg engine.Config) *engine.Engine {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = Quiet
	}
	pool := Pool(t, url)
	if j == nil {
		j = Rollup(t, pool)
	}
	e, err := engine.New(pool, "shardfill", j, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Output collects what a background process (or a logger) writes while a
// test reads it.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// FailingJob is the production job but that every batch holding a slice of
// Workspace fails, permanently, with one error: the engine must narrow the
// failure down to that workspace's slices.
type FailingJob struct {
	*sqljob.Batched
	Workspace string
}

func (f *FailingJob) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	if slices.ContainsFunc(batch.Slices, func(s shard.Slice) bool { return s.Workspace == f.Workspace }) {
		tx.Queue(`SELECT no_such_column FROM task_usage LIMIT 1`)
		return
	}
	f.Batched.Queue(tx, batch, written)
}

// Rollup opens the default job, the rollup of task_usage_hourly, on pool.
func Rollup(t testing.TB, pool *pgxpool.Pool) *sqljob.Batched {
	t.Helper()
	j, err := sqljob.Default(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return j
}
