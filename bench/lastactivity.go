package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
)

// ScenarioLastActivity measures the issue-last-activity job file against
// what it replaces, side by side on one server in interleaved rounds: the
// application's serial command (the same UPDATE in batches of 1 000 ids
// walked by an id keyset, on one connection) and one UPDATE of the whole
// table, then shardfill at concurrency 1 and 2 with its defaults. Each
// mode starts from the same table: the issues are copied back from a
// template and vacuumed before each.
const ScenarioLastActivity = "lastactivity"

// lastActivityModes are the modes of the scenario, in the order of a
// round.
var lastActivityModes = []string{"one UPDATE", "serial loop", "shardfill c=1", "shardfill c=2"}

// LastActivity runs the scenario on a fresh database of n issues for the
// given rounds and writes bench/results/lastactivity.md.
func LastActivity(ctx context.Context, h *Harness, srv *pgserver.Server, n, rounds int, out, resultsDoc string) error {
	db, err := CreateDB(ctx, srv, "bench_lastactivity")
	if err != nil {
		return err
	}
	defer db.Close()
	h.logf("lastactivity: seeding %d issues", n)
	if err := fixture.SeedIssues(ctx, db.Pool, "00000000-0000-0000-0000-0000000000b1", n); err != nil {
		return err
	}
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE issue_template AS SELECT * FROM issue`); err != nil {
		return err
	}
	var todo int64
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM issue WHERE last_activity_at IS NULL AND updated_at IS NOT NULL`).Scan(&todo); err != nil {
		return err
	}
	walls := map[string][]time.Duration{}
	for r := 1; r <= rounds; r++ {
		for _, mode := range lastActivityModes {
			if err := resetIssues(ctx, db); err != nil {
				return err
			}
			start := time.Now()
			switch mode {
			case "one UPDATE":
				_, err = db.Pool.Exec(ctx, `UPDATE issue SET last_activity_at = updated_at WHERE last_activity_at IS NULL AND updated_at IS NOT NULL`)
			case "serial loop":
				err = serialLastActivity(ctx, db)
			default:
				c := strings.TrimPrefix(mode, "shardfill c=")
				_, err = h.RunBinary(ctx, db.URL, "lastactivity-c"+c, "run", "--job", "issue-last-activity",
					"--concurrency", c, "--no-progress", "--new-run")
			}
			wall := time.Since(start)
			if err != nil {
				return fmt.Errorf("lastactivity %s: %w", mode, err)
			}
			var left int64
			if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM issue WHERE last_activity_at IS DISTINCT FROM updated_at AND updated_at IS NOT NULL
				AND id NOT IN (SELECT id FROM issue_template WHERE last_activity_at IS NOT NULL)`).Scan(&left); err != nil || left != 0 {
				return fmt.Errorf("lastactivity %s: %d rows not seeded (%v)", mode, left, err)
			}
			walls[mode] = append(walls[mode], wall)
			h.logf("lastactivity round %d: %s %s", r, mode, wall.Round(time.Millisecond))
		}
	}
	md := lastActivityMarkdown(n, todo, rounds, walls)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, ScenarioLastActivity+".md"), []byte(md), 0o644); err != nil {
		return err
	}
	if resultsDoc != "" {
		return WriteResultsDoc(out, resultsDoc)
	}
	return nil
}

// resetIssues puts the issues back as seeded, vacuumed and analyzed, with
// a checkpoint so no mode pays for the previous one's dirty pages.
func resetIssues(ctx context.Context, db *DB) error {
	for _, sql := range []string{
		`TRUNCATE issue CASCADE`, // no task refers to an issue in this database
		`INSERT INTO issue SELECT * FROM issue_template`,
		`VACUUM (ANALYZE) issue`,
		`CHECKPOINT`,
	} {
		if _, err := db.Pool.Exec(ctx, sql); err != nil {
			return fmt.Errorf("reset issues: %w", err)
		}
	}
	return nil
}

// serialLastActivity is the application's serial command: a session lock,
// then the UPDATE of batches of 1 000 ids after a keyset cursor, each
// batch its own transaction, on one connection, until a pass changes no
// row.
func serialLastActivity(ctx context.Context, db *DB) error {
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('issue_last_activity_backfill', 0))`); err != nil {
		return err
	}
	cursor := "00000000-0000-0000-0000-000000000000"
	for {
		var n int64
		var last *string
		err := conn.QueryRow(ctx, `
			WITH done AS (
			    UPDATE issue i SET last_activity_at = i.updated_at
			      FROM (SELECT id FROM issue
			             WHERE id > $1 AND last_activity_at IS NULL AND updated_at IS NOT NULL
			             ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) b
			     WHERE i.id = b.id AND i.last_activity_at IS NULL
			    RETURNING i.id)
			SELECT count(*), (SELECT id::text FROM done ORDER BY id DESC LIMIT 1) FROM done`, cursor).Scan(&n, &last)
		if err != nil {
			return err
		}
		if n == 0 || last == nil {
			return nil
		}
		cursor = *last
	}
}

func lastActivityMarkdown(n int, todo int64, rounds int, walls map[string][]time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Job issue-last-activity: shardfill against the serial command and one UPDATE\n\n")
	fmt.Fprintf(&b, "Generated by `go run ./bench -scenarios lastactivity -issue-rows %d -rounds %d -bin bin/shardfill`.\n\n", n, rounds)
	fmt.Fprintf(&b, "%d issues (%d to seed, the rest without `updated_at` or already set), uuid keys; the server's tuned settings (`shared_buffers` %s). "+
		"%d interleaved rounds of the four modes, each from the same table (copied back from a template, vacuumed, checkpointed). "+
		"shardfill runs with its defaults (`--job issue-last-activity --concurrency C`).\n\n", n, todo, SharedBuffers(), rounds)
	base := median(walls["serial loop"])
	fmt.Fprintf(&b, "| mode | median | min | max | rows/s (median) | vs serial loop |\n|---|---:|---:|---:|---:|---:|\n")
	for _, mode := range lastActivityModes {
		w := walls[mode]
		m := median(w)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.0f | %.2f |\n", mode, m.Round(time.Millisecond), slices.Min(w).Round(time.Millisecond),
			slices.Max(w).Round(time.Millisecond), float64(todo)/m.Seconds(), m.Seconds()/base.Seconds())
	}
	fmt.Fprintf(&b, "\nEvery round, every mode: ")
	for _, mode := range lastActivityModes {
		var ws []string
		for _, d := range walls[mode] {
			ws = append(ws, d.Round(time.Millisecond).String())
		}
		fmt.Fprintf(&b, "%s %s; ", mode, strings.Join(ws, ", "))
	}
	b.WriteString("\n")
	return b.String()
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// lastActivityRows parses -issue-rows.
func lastActivityRows(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1000 {
		return 0, fmt.Errorf("%w: -issue-rows %q: want at least 1000", errUsage, s)
	}
	return n, nil
}
