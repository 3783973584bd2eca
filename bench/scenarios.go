package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
)

// LatencyConfig is the data set of the latency scenario: many small
// workspaces, so that a run that gives each slice its own transaction is
// dominated by per-slice round trips.
type LatencyConfig struct {
	Fixture     fixture.Config
	Delay       time.Duration // added each way
	Concurrency []int
}

// latencyVariants are the two ways the latency scenario runs shardfill:
// with its defaults, where a window's slices share one transaction and one
// round trip, and unbatched, one transaction per slice as an operator who
// wants the smallest transactions would run it. The first shows what
// batching does against latency, the second what concurrency does.
var latencyVariants = []struct {
	name string
	args []string
}{
	{"", nil},
	{"unbatched", []string{"--batch-slices", "1"}},
}

// DefaultLatency is the latency scenario's default data set.
func DefaultLatency() LatencyConfig {
	return LatencyConfig{
		Fixture:     fixture.Config{Seed: 10, Workspaces: 2_000, Months: 3, Rows: 40_000, Skew: 0, End: historyEnd},
		Delay:       time.Millisecond,
		Concurrency: []int{1, 2, 4, 8, 16},
	}
}

// Latency runs shardfill through a LatencyProxy at each concurrency.
func (h *Harness) Latency(ctx context.Context, srv *pgserver.Server, cfg LatencyConfig) ([]Result, error) {
	h.logf("latency: generating %d workspaces × %d months, ~%d rows", cfg.Fixture.Workspaces, cfg.Fixture.Months, cfg.Fixture.Rows)
	db, err := GenerateDB(ctx, srv, "bench_latency", cfg.Fixture)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	dbURL, err := pgURLHost(db.URL)
	if err != nil {
		return nil, err
	}
	proxy, err := StartLatencyProxy(dbURL, cfg.Delay)
	if err != nil {
		return nil, err
	}
	defer proxy.Close()
	viaProxy, err := proxy.URL(db.URL)
	if err != nil {
		return nil, err
	}
	proxied := *db
	proxied.URL = viaProxy

	var out []Result
	for _, v := range latencyVariants {
		for _, c := range cfg.Concurrency {
			// Reset, verification and the slice table go direct; only the
			// binary talks through the proxy.
			if err := h.Reset(ctx, db); err != nil {
				return out, err
			}
			res := Result{Scenario: ScenarioLatency, Mode: ModeShardfill, Concurrency: c, Variant: v.name,
				Rows: db.UsageRows, Note: fmt.Sprintf("+%s each way; %d workspaces", cfg.Delay, cfg.Fixture.Workspaces)}
			if len(v.args) > 0 {
				res.Note += "; " + strings.Join(v.args, " ")
			}
			label := "latency " + res.Label()
			h.logf("latency: %s (+%s each way)", label, cfg.Delay)
			args := append([]string{"run", "--concurrency", fmt.Sprint(c), "--rate", "0", "--no-progress", "--new-run"}, v.args...)
			p, err := h.RunBinary(ctx, proxied.URL, fmt.Sprintf("latency%s-c%d", v.name, c), args...)
			if err != nil {
				return out, fmt.Errorf("%s: %w", label, err)
			}
			res.Wall, res.MaxRSSKiB, res.RusageMaxRSSKiB = p.Wall, p.MaxRSSKiB, p.RusageMaxRSSKiB
			if err := h.readRun(ctx, db, &res); err != nil {
				return out, fmt.Errorf("%s: %w", label, err)
			}
			if err := Verify(ctx, db, label); err != nil {
				return out, err
			}
			res.Verified = true
			h.logf("latency: %s: %s, %.0f rows/s, %d slices", label, res.Wall.Round(time.Millisecond), res.RowsPerSec(), res.Slices)
			out = append(out, res)
		}
	}
	return out, nil
}

// pgURLHost returns the host:port of a database URL.
func pgURLHost(raw string) (string, error) {
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		return "", fmt.Errorf("parse database URL: %s", redactURL(raw))
	}
	return fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), nil
}

// SkewConfig is the data set of the skew scenario: one workspace holds
// TopShare of the rows.
type SkewConfig struct {
	Fixture     fixture.Config
	Concurrency int
}

// DefaultSkew is the skew scenario's default data set.
func DefaultSkew() SkewConfig {
	return SkewConfig{
		Fixture:     fixture.Config{Seed: 11, Workspaces: 200, Months: 12, Rows: 300_000, Skew: 1.1, TopShare: 0.3, End: historyEnd},
		Concurrency: 2,
	}
}

// Skew runs shardfill on a history where one workspace holds a large share
// of the rows and measures the tail: the part of the run during which a
// worker already had nothing left to do.
func (h *Harness) Skew(ctx context.Context, srv *pgserver.Server, cfg SkewConfig) (Result, error) {
	h.logf("skew: generating %d workspaces, ~%d rows, top workspace %.0f%%", cfg.Fixture.Workspaces, cfg.Fixture.Rows, 100*cfg.Fixture.TopShare)
	db, err := GenerateDB(ctx, srv, "bench_skew", cfg.Fixture)
	if err != nil {
		return Result{}, err
	}
	defer db.Close()
	res, err := h.Shardfill(ctx, db, cfg.Concurrency)
	res.Scenario = ScenarioSkew
	if err != nil {
		return res, err
	}
	tail, err := h.tail(ctx, db, res.RunID)
	if err != nil {
		return res, err
	}
	res.TailRatio = tail.Seconds() / res.Wall.Seconds()
	var top int64
	err = db.Pool.QueryRow(ctx, `
		SELECT max(n) FROM (
		    SELECT count(*) AS n FROM task_usage u
		    JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		    GROUP BY a.workspace_id) w`).Scan(&top)
	if err != nil {
		return res, fmt.Errorf("skew: top share: %w", err)
	}
	res.Note = fmt.Sprintf("top workspace holds %.1f%% of rows; tail %s", 100*float64(top)/float64(db.UsageRows), tail.Round(time.Millisecond))
	h.logf("skew: tail %s of %s (%.1f%%)", tail.Round(time.Millisecond), res.Wall.Round(time.Millisecond), 100*res.TailRatio)
	return res, nil
}

// tail is max(finished_at) minus the first moment a worker went idle: the
// first slice finish at or after the last claim (after the last claim,
// a worker that finishes finds nothing left to take).
func (h *Harness) tail(ctx context.Context, db *DB, runID int64) (time.Duration, error) {
	slice := pgx.Identifier{h.schema(), "slice"}.Sanitize()
	var secs *float64
	err := db.Pool.QueryRow(ctx, `
		WITH s AS (SELECT started_at, finished_at FROM `+slice+` WHERE run_id = $1 AND state = 'done'),
		     last_claim AS (SELECT max(started_at) AS at FROM s),
		     first_idle AS (SELECT min(s.finished_at) AS at FROM s, last_claim WHERE s.finished_at >= last_claim.at)
		SELECT extract(epoch FROM (SELECT max(finished_at) FROM s) - (SELECT at FROM first_idle))`, runID).Scan(&secs)
	if err != nil {
		return 0, fmt.Errorf("skew: tail: %w", err)
	}
	return seconds(secs), nil
}

// Plan1MConfig is the plan1m data set: every workspace has a usage row in
// every month, so the plan has Workspaces × Months slices.
type Plan1MConfig struct {
	Workspaces, Months int
}

// DefaultPlan1M is 40 000 workspaces × 25 months = 1 000 000 slices.
func DefaultPlan1M() Plan1MConfig { return Plan1MConfig{Workspaces: 40_000, Months: 25} }

// plan1mSQL fills an empty schema with one workspace, agent and runtime per
// workspace and one task with one usage row per (workspace, month). Ids
// are built from the numbers, so the foreign keys hold by construction;
// FK triggers are skipped (session_replication_role) as the fixture
// generator does, for speed.
const plan1mSQL = `
SET LOCAL session_replication_role = replica;
CREATE TEMP TABLE ids (w int, m int, ws uuid, agent uuid, runtime uuid, task uuid, usage uuid, at timestamptz) ON COMMIT DROP;
INSERT INTO ids
    SELECT w, m,
           (lpad(to_hex(1), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(w::bigint), 12, '0'))::uuid AS ws,
           (lpad(to_hex(2), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(w::bigint), 12, '0'))::uuid AS agent,
           (lpad(to_hex(3), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(w::bigint), 12, '0'))::uuid AS runtime,
           (lpad(to_hex(4), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(w::bigint * 1000 + m), 12, '0'))::uuid AS task,
           (lpad(to_hex(5), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(w::bigint * 1000 + m), 12, '0'))::uuid AS usage,
           (date_trunc('month', $3::timestamptz AT TIME ZONE 'UTC') - make_interval(months => m)) AT TIME ZONE 'UTC'
               + make_interval(mins => w % 20000) AS at
    FROM generate_series(1, $1::int) w, generate_series(0, $2::int - 1) m;
INSERT INTO workspace (id) SELECT ws FROM ids WHERE m = 0;
INSERT INTO agent (id, workspace_id) SELECT agent, ws FROM ids WHERE m = 0;
INSERT INTO agent_task_queue (id, agent_id, runtime_id, status, created_at)
    SELECT task, agent, runtime, 'completed', at FROM ids;
INSERT INTO task_usage (id, task_id, provider, model, input_tokens, output_tokens, cost_usd_ticks, created_at, updated_at)
    SELECT usage, task, 'anthropic', 'claude-sonnet-4', 1000 + w % 97, 100 + m, 42, at + interval '1 minute', at + interval '1 minute'
    FROM ids;
`

// Plan1M measures `shardfill run --plan-only` on a history of
// Workspaces × Months slices.
func (h *Harness) Plan1M(ctx context.Context, srv *pgserver.Server, cfg Plan1MConfig) (Result, error) {
	want := int64(cfg.Workspaces) * int64(cfg.Months)
	h.logf("plan1m: generating %d workspaces × %d months (%d slices)", cfg.Workspaces, cfg.Months, want)
	db, err := CreateDB(ctx, srv, "bench_plan1m")
	if err != nil {
		return Result{}, err
	}
	defer db.Close()
	start := time.Now()
	// Multi-statement SQL with parameters needs one statement per Exec:
	// split on the statement terminator (no literal in it holds one).
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		for _, stmt := range strings.Split(plan1mSQL, ";\n") {
			stmt = strings.TrimSpace(stmt)
			if stmt == "" {
				continue
			}
			var args []any
			if strings.Contains(stmt, "$1") {
				args = []any{cfg.Workspaces, cfg.Months, historyEnd}
			}
			if _, err := tx.Exec(ctx, stmt, args...); err != nil {
				return fmt.Errorf("plan1m: %.60s…: %w", stmt, err)
			}
		}
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	if _, err := db.Pool.Exec(ctx, `ANALYZE workspace, agent, agent_task_queue, task_usage`); err != nil {
		return Result{}, fmt.Errorf("plan1m: analyze: %w", err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM task_usage`).Scan(&db.UsageRows); err != nil {
		return Result{}, err
	}
	h.logf("plan1m: %d rows loaded in %s; planning", db.UsageRows, time.Since(start).Round(time.Millisecond))

	p, err := h.RunBinary(ctx, db.URL, "plan1m", "run", "--plan-only", "--new-run", "--no-progress")
	if err != nil {
		return Result{}, fmt.Errorf("plan1m: %w", err)
	}
	res := Result{Scenario: ScenarioPlan1M, Mode: "plan-only", Wall: p.Wall, Rows: db.UsageRows, MaxRSSKiB: p.MaxRSSKiB, RusageMaxRSSKiB: p.RusageMaxRSSKiB}
	run := pgx.Identifier{h.schema(), "run"}.Sanitize()
	if err := db.Pool.QueryRow(ctx, `SELECT id, slices_total FROM `+run+` ORDER BY id DESC LIMIT 1`).Scan(&res.RunID, &res.Slices); err != nil {
		return res, fmt.Errorf("plan1m: read run: %w", err)
	}
	if res.Slices != want {
		return res, fmt.Errorf("plan1m: planned %d slices, want %d", res.Slices, want)
	}
	res.Verified = true
	res.Note = fmt.Sprintf("%d workspaces × %d months", cfg.Workspaces, cfg.Months)
	h.logf("plan1m: %d slices planned in %s, peak RSS %d MiB", res.Slices, res.Wall.Round(time.Millisecond), res.MaxRSSKiB/1024)
	return res, nil
}

// Explain runs the engine's own slice statements (the default job's batch, Apply) for
// the run's largest slice on an empty rollup, with auto_explain reporting
// EXPLAIN ANALYZE back as notices; everything is rolled back.
func (h *Harness) Explain(ctx context.Context, db *DB, runID int64) (string, error) {
	if err := resetRollup(ctx, db); err != nil {
		return "", err
	}
	cfg, err := pgx.ParseConfig(db.URL)
	if err != nil {
		return "", fmt.Errorf("explain: parse URL")
	}
	var buf strings.Builder
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		buf.WriteString(n.Message)
		buf.WriteString("\n\n")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("explain: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var sl shard.Slice
	slice := pgx.Identifier{h.schema(), "slice"}.Sanitize()
	err = conn.QueryRow(ctx, `SELECT run_id, id, workspace_id::text, from_ts, to_ts, est_rows FROM `+slice+`
		WHERE run_id = $1 ORDER BY est_rows DESC LIMIT 1`, runID).Scan(&sl.RunID, &sl.ID, &sl.Workspace, &sl.From, &sl.To, &sl.EstRows)
	if err != nil {
		return "", fmt.Errorf("explain: largest slice: %w", err)
	}
	// The statements the engine runs, which count tasks as its preflight
	// found it may (before auto_explain, which would report the preflight).
	pool, err := pgxpool.New(ctx, db.URL)
	if err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	defer pool.Close()
	j, err := sqljob.Default(ctx, pool)
	if err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	if err := j.Preflight(ctx, conn); err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	if _, err := conn.Exec(ctx, `LOAD 'auto_explain'`); err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	for _, set := range []string{
		"auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
		"auto_explain.log_buffers = on", "auto_explain.log_level = 'notice'",
	} {
		if _, err := conn.Exec(ctx, "SET "+set); err != nil {
			return "", fmt.Errorf("explain: %w", err)
		}
	}
	fmt.Fprintf(&buf, "# largest slice of run %d: %s, est_rows %d, on an empty rollup\n\n", runID, sl, sl.EstRows)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := j.Apply(ctx, tx, sl); err != nil {
			return err
		}
		return errRollback
	})
	if err != nil && err != errRollback {
		return "", fmt.Errorf("explain: apply: %w", err)
	}
	return buf.String(), nil
}

var errRollback = fmt.Errorf("rollback")
