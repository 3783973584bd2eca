package job

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/shardfill/shardfill/shard"
)

var (
	//go:embed plan.sql
	planSQL string
	//go:embed plan_bounds.sql
	planBoundsSQL string
	//go:embed delete.sql
	deleteSQL string
	//go:embed measures.sql
	measuresSQL string
	//go:embed by_workspace.sql
	byWorkspaceTemplate string
	//go:embed insert.sql
	insertHead string
	//go:embed by_time.sql
	byTimeTemplate string
	//go:embed verify.sql
	verifyTemplate string
	//go:embed queue.sql
	queueSQL string
	//go:embed stamp_queue.sql
	stampQueueSQL string

	// The statements are composed once from fixed fragments, so both access
	// paths compute the same measures and verify checks exactly what a
	// slice writes.
	distinctInserts = inserts{
		byWorkspace: insertOf(byWorkspaceTemplate),
		byTime:      insertOf(strings.Replace(byTimeTemplate, "/*ranges*/", rangesJoin, 1)),
		byWindow:    insertOf(strings.Replace(byTimeTemplate, "/*ranges*/", "", 1)),
	}
	rowInserts = distinctInserts.countingRows()
	verifySQL  = withMeasures(verifyTemplate)
)

// inserts are the statements that write a batch's rollup rows, one per
// access path.
type inserts struct{ byWorkspace, byTime, byWindow string }

// countDistinctTasks is how measures.sql counts a key's tasks, and
// countRows what replaces it where the database guarantees a task at most
// one usage row per key (see Hourly.Preflight).
const (
	countDistinctTasks = "count(DISTINCT u.task_id)"
	countRows          = "count(*)"
)

// countingRows returns the statements with the tasks counted as rows:
// within one rollup key (which holds provider and model) every row is then
// a different task, and PostgreSQL 15 no longer sorts each key's rows for
// DISTINCT (about a third of the aggregate, 5 % of a batch).
func (s inserts) countingRows() inserts {
	replace := func(sql string) string {
		if strings.Count(sql, countDistinctTasks) != 1 {
			panic("job: measures.sql no longer counts tasks as " + countDistinctTasks)
		}
		return strings.Replace(sql, countDistinctTasks, countRows, 1)
	}
	return inserts{replace(s.byWorkspace), replace(s.byTime), replace(s.byWindow)}
}

// rangesJoin keeps the time path to the batch's own ranges; a batch whose
// ranges all equal its span (one window, as claims usually make them) does
// without it and saves a sort of the whole span.
const rangesJoin = `JOIN unnest($1::uuid[], $4::timestamptz[], $5::timestamptz[]) AS r(workspace_id, from_ts, to_ts)
  ON r.workspace_id = t.workspace_id AND u.created_at >= r.from_ts AND u.created_at < r.to_ts`

// insertOf is the INSERT of the rows an access path selects, in the order
// of the rollup's workspace-led indexes (workspace_id, agent_id,
// bucket_hour DESC): consecutive rows then land on the same index pages,
// which makes the insert, most of a slice's cost, about a sixth cheaper
// than in hash order.
func insertOf(selectSQL string) string {
	return insertHead + withMeasures(selectSQL) + "\nORDER BY 2, 4, 1 DESC"
}

// withMeasures puts the measure list (measures.sql without its comment)
// where a statement has the /*measures*/ marker.
func withMeasures(sql string) string {
	var body []string
	for _, line := range strings.Split(measuresSQL, "\n") {
		if line != "" && !strings.HasPrefix(line, "--") {
			body = append(body, line)
		}
	}
	return strings.Replace(sql, "/*measures*/", strings.TrimLeft(strings.Join(body, "\n"), " "), 1)
}

// CronLockKey is the advisory lock the cron entry rollup_task_usage_hourly()
// takes with pg_try_advisory_xact_lock; holding it in shared mode keeps the
// cron tick out while a backfill works.
const CronLockKey = 4246

// Querier is the part of pgx.Conn, pgxpool.Pool and pgx.Tx the job needs.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Hourly backfills task_usage_hourly. Its zero value is ready to use;
// [Hourly.Preflight] also learns what the database guarantees that the
// statements may rely on, so call it before queueing batches.
type Hourly struct {
	// usageKeyed records that task_usage has at most one row per (task,
	// provider, model), as its unique key in the multica schema says, so
	// tasks are counted as rows. False (the zero value) counts them with
	// DISTINCT, which is right whatever the schema.
	usageKeyed bool
}

// Version identifies the slice logic. It is stored with each run so progress
// made by different rollup SQL is never silently mixed. Counting tasks as
// rows where the unique key allows it computes the same rows, so it keeps
// the version.
func (*Hourly) Version() string {
	s := distinctInserts
	sum := sha256.Sum256([]byte(planSQL + deleteSQL + s.byWorkspace + s.byTime + s.byWindow + queueSQL))
	return "hourly-" + hex.EncodeToString(sum[:6])
}

// PlanSQL returns the query that lists the slices: columns workspace_id,
// from_ts, to_ts, est_rows, read_from; $1 is the lower time bound, $2 the
// most raw rows per window before a month is cut into shorter windows, $3
// the upper time bound (exclusive; a run is planned in pieces of whole
// months).
func (*Hourly) PlanSQL() string { return planSQL }

// PlanBoundsSQL returns the query that finds the months of the oldest and
// newest raw rows from $1 on (two timestamptz, NULL when there are none),
// where planning in pieces starts and stops, counts those rows up to
// $2 + 1, and estimates the table's rows.
func (*Hourly) PlanBoundsSQL() string { return planBoundsSQL }

// timePathCost weighs a row of the time path against one of the
// workspace path: the time path reads every workspace's rows in the span
// and keeps the batch's, so a batch that holds most of its span pays for
// rows it does not keep; the factor leaves small-workspace batches on the
// workspace path.
const timePathCost = 2

// Queue appends to tx the statements that replace the buckets of batch:
// delete the batch's buckets, then insert the aggregate of its raw rows.
// Deleting first and inserting second (rather than one statement) keeps the
// unique key from ever seeing old and new rows at once. *written receives
// the number of rollup rows inserted. A batch of a run (its
// WatermarkTarget set) then drops the dirty keys its read covered
// (queue.sql), so the cron job takes over a queue of what changed since.
//
// The access path is chosen per batch from the planner's row counts. The
// workspace path reads the batch's workspaces' tasks (agent -> task ->
// usage), skipping tasks created before the batch's ReadFrom, which the
// planner derived from the data (a task can receive usage long after it was
// created): its cost is the workspaces' rows from then on. The time path
// reads every usage row in the batch's time span: its cost is all
// workspaces' rows in that span. A batch of a small workspace's months
// takes the first; a short slice of a big workspace, or one month of many
// workspaces, the second.
func (h *Hourly) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	insert := distinctInserts
	if h.usageKeyed {
		insert = rowInserts
	}
	spans := batch.Spans()
	ws := make([]string, len(spans))
	from, to := make([]time.Time, len(spans)), make([]time.Time, len(spans))
	for i, s := range spans {
		ws[i], from[i], to[i] = s.Workspace, s.From, s.To
	}
	count := func(ct pgconn.CommandTag) error {
		*written += ct.RowsAffected()
		return nil
	}
	tx.Queue(deleteSQL, ws, from, to)
	if batch.WindowRows > 0 && timePathCost*batch.WindowRows < batch.WorkspaceRows {
		lo, hi := batch.Bounds()
		if spansEqual(spans, lo, hi) {
			tx.Queue(insert.byWindow, ws, lo, hi).Exec(count)
		} else {
			tx.Queue(insert.byTime, ws, lo, hi, from, to).Exec(count)
		}
	} else {
		// The workspace path's joins are written in the order they run,
		// each an index lookup keyed by the one before; planning them in
		// that order rather than searching all orders takes a third off
		// the planning, which is about a quarter of what a one-slice batch
		// costs the server.
		tx.Queue(`SET LOCAL join_collapse_limit = 1`)
		tx.Queue(insert.byWorkspace, ws, from, to, batch.ReadFrom()).Exec(count)
	}
	if at := batch.WatermarkTarget(); !at.IsZero() {
		tx.Queue(queueSQL, ws, from, to, at)
	}
}

// spansEqual reports whether every span covers exactly [lo, hi) and no
// workspace appears twice.
func spansEqual(spans []shard.Span, lo, hi time.Time) bool {
	for i, s := range spans {
		if !s.From.Equal(lo) || !s.To.Equal(hi) || (i > 0 && spans[i-1].Workspace == s.Workspace) {
			return false
		}
	}
	return true
}

// Apply replaces the buckets of one slice inside tx, outside any run (verify
// --repair, benchmarks). It returns the rollup rows written.
func (h *Hourly) Apply(ctx context.Context, tx pgx.Tx, s shard.Slice) (int64, error) {
	batch, err := shard.NewBatch([]shard.Slice{s})
	if err != nil {
		return 0, err
	}
	var stmts pgx.Batch
	var written int64
	h.Queue(&stmts, batch, &written)
	if err := tx.SendBatch(ctx, &stmts).Close(); err != nil {
		return 0, fmt.Errorf("%s: %w", s, err)
	}
	return written, nil
}

// Stamp hands the rollup over to the cron job: every change before at is in
// the rollup. It also drops the dirty keys enqueued before at that no slice
// dropped (stamp_queue.sql), keeping those of buckets before from, the
// run's range (nil: all history). It reports false when the state row is
// missing, in which case nothing is stamped and the queue is left alone
// (as the serial command did, the caller warns).
func (*Hourly) Stamp(ctx context.Context, tx Querier, at time.Time, from *time.Time) (bool, error) {
	tag, err := tx.Exec(ctx, `UPDATE task_usage_hourly_rollup_state SET watermark_at = $1 WHERE id = 1`, at)
	if err != nil {
		return false, fmt.Errorf("stamp watermark: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return false, nil
	}
	lower := pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	if from != nil {
		lower = pgtype.Timestamptz{Time: *from, Valid: true}
	}
	if _, err := tx.Exec(ctx, stampQueueSQL, at, lower); err != nil {
		return false, fmt.Errorf("hand over the dirty queue: %w", err)
	}
	return true, nil
}

// HasRowsBefore reports whether task_usage holds rows created before at:
// history a run whose range starts at at would leave out of the rollup.
func (*Hourly) HasRowsBefore(ctx context.Context, q Querier, at time.Time) (bool, error) {
	var older bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM task_usage WHERE created_at < $1)`, at).Scan(&older)
	if err != nil {
		return false, fmt.Errorf("look for usage before %s: %w", at.Format(time.DateOnly), err)
	}
	return older, nil
}

// Extent is the time task_usage and the rollup cover: the earliest and the
// latest of the usage rows' creation and the buckets; nil when both
// tables are empty.
func (*Hourly) Extent(ctx context.Context, q Querier) (first, last *time.Time, err error) {
	err = q.QueryRow(ctx, `
		SELECT least((SELECT min(created_at) FROM task_usage), (SELECT min(bucket_hour) FROM task_usage_hourly)),
		       greatest((SELECT max(created_at) FROM task_usage), (SELECT max(bucket_hour) FROM task_usage_hourly))`).
		Scan(&first, &last)
	if err != nil {
		return nil, nil, fmt.Errorf("read the history's extent: %w", err)
	}
	return first, last, nil
}

// Watermark reads the cron job's current watermark (nil when the state row
// is missing).
func (*Hourly) Watermark(ctx context.Context, q Querier) (*time.Time, error) {
	var at time.Time
	err := q.QueryRow(ctx, `SELECT watermark_at FROM task_usage_hourly_rollup_state WHERE id = 1`).Scan(&at)
	if err == pgx.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read watermark: %w", err)
	}
	return &at, nil
}

// requiredColumns lists every relation the backfill and the cron job that
// takes over depend on, with the columns shardfill reads or writes.
// TestRequiredColumnsCoverStatements checks it against every alias.column
// the plan and slice statements name.
var requiredColumns = []struct {
	table   string
	columns []string
}{
	{"agent", []string{"id", "workspace_id"}},
	{"issue", []string{"id", "project_id"}},
	{"agent_task_queue", []string{"id", "agent_id", "issue_id", "runtime_id", "created_at"}},
	{"task_usage", []string{"task_id", "provider", "model", "input_tokens", "output_tokens",
		"cache_read_tokens", "cache_write_tokens", "cost_usd_ticks", "created_at", "updated_at"}},
	{"task_usage_hourly", []string{"bucket_hour", "workspace_id", "runtime_id", "agent_id", "project_id",
		"provider", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
		"task_count", "event_count", "cost_usd_ticks", "uncosted_input_tokens", "uncosted_output_tokens",
		"uncosted_cache_read_tokens", "uncosted_cache_write_tokens", "updated_at"}},
	{"task_usage_hourly_rollup_state", []string{"id", "watermark_at"}},
	{"task_usage_hourly_dirty", nil},
}

// requiredFunctions are the bucket helper verify calls and the incremental
// pipeline that must be in place to take over after the backfill.
var requiredFunctions = []string{
	"task_usage_hour_bucket",
	"rollup_task_usage_hourly_window",
	"rollup_task_usage_hourly",
}

// MissingError lists everything the database lacks, so an operator fixes a
// half-migrated database in one go rather than one error at a time.
type MissingError struct{ Missing []string }

func (e *MissingError) Error() string {
	return "database is not ready for the backfill (run the multica migrations first): missing " +
		strings.Join(e.Missing, ", ")
}

// Preflight checks, without writing, that every table, column and function
// the backfill and the cron hand-over need is visible on the search_path,
// and reads from the catalog whether task_usage's unique key lets the
// batches count tasks as rows. Batches queued by one Hourly all count the
// same way; run Preflight before the first and not while any is queued.
func (h *Hourly) Preflight(ctx context.Context, q Querier) error {
	var missing []string
	for _, rel := range requiredColumns {
		var exists bool
		var have []string
		err := q.QueryRow(ctx, `
			SELECT to_regclass($1) IS NOT NULL,
			       ARRAY(SELECT attname::text FROM pg_attribute
			             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped)`,
			rel.table).Scan(&exists, &have)
		if err != nil {
			return fmt.Errorf("preflight %s: %w", rel.table, err)
		}
		if !exists {
			missing = append(missing, "table "+rel.table)
			continue
		}
		for _, c := range rel.columns {
			if !slices.Contains(have, c) {
				missing = append(missing, "column "+rel.table+"."+c)
			}
		}
	}
	for _, fn := range requiredFunctions {
		var n int
		err := q.QueryRow(ctx, `SELECT count(*) FROM pg_proc WHERE proname = $1 AND pg_function_is_visible(oid)`, fn).Scan(&n)
		if err != nil {
			return fmt.Errorf("preflight %s: %w", fn, err)
		}
		if n == 0 {
			missing = append(missing, "function "+fn+"()")
		}
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing}
	}
	if err := q.QueryRow(ctx, usageKeyedSQL).Scan(&h.usageKeyed); err != nil {
		return fmt.Errorf("preflight task_usage unique keys: %w", err)
	}
	return nil
}

// usageKeyedSQL asks whether a valid, unconditional unique index of
// task_usage has a key made only of task_id, provider and model (all or
// some of them), with no column in it that may repeat as NULL. A rollup key
// holds one provider and one model, so its usage rows then belong to
// different tasks and their count is the number of distinct tasks. It is
// read once per command: a key dropped while a run works, with duplicates
// written after, would be counted by rows until the next run (verify,
// which always counts distinct tasks, would report those buckets).
const usageKeyedSQL = `
SELECT EXISTS (
    SELECT FROM pg_index x
    WHERE x.indrelid = to_regclass('task_usage')
      AND x.indisunique AND x.indisvalid
      AND x.indpred IS NULL AND x.indexprs IS NULL
      AND NOT EXISTS (
          SELECT FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
          WHERE k.n <= x.indnkeyatts
            AND (a.attname NOT IN ('task_id', 'provider', 'model')
                 OR NOT (a.attnotnull OR x.indnullsnotdistinct))))`

// Mismatch is a (workspace, month) whose rollup rows differ from the
// aggregate of its raw rows.
type Mismatch struct {
	Workspace string
	Month     time.Time
	Rows      int64 // differing rows, counted in both directions
}

// Verify compares the rollup with the aggregate of the raw rows over
// [from, to) and returns every mismatching (workspace, month).
func (*Hourly) Verify(ctx context.Context, q Querier, from, to time.Time) ([]Mismatch, error) {
	rows, err := q.Query(ctx, verifySQL, from, to)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", shard.Period(from, to), err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Mismatch])
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", shard.Period(from, to), err)
	}
	return out, nil
}
