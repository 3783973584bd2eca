package checkpoint

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/shard"
)

//go:embed schema.sql
var schemaSQL string

// Run states as stored and reported by status.
const (
	StatePlanned     = "planned"
	StateRunning     = "running"
	StateDone        = "done"
	StateFailed      = "failed"
	StateInterrupted = "interrupted"
	StateSuperseded  = "superseded"
)

// schemaObjects are the tables and indexes schema.sql creates.
var schemaObjects = func() []string {
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^CREATE (?:TABLE|INDEX) IF NOT EXISTS (?:_SCHEMA_\.)?(\w+)`).FindAllStringSubmatch(schemaSQL, -1) {
		names = append(names, m[1])
	}
	return names
}()

// complete reports whether the checkpoint schema already has every table,
// index and column, so that a process joining a run takes no DDL lock at
// all: CREATE INDEX IF NOT EXISTS and ALTER TABLE lock the slice table
// even when there is nothing to do, which would stall, or deadlock with,
// the processes already working on the run.
func (s *Store) complete(ctx context.Context, tx pgx.Tx) (bool, error) {
	qualified := make([]string, len(schemaObjects))
	for i, name := range schemaObjects {
		qualified[i] = s.ident + "." + name
	}
	var complete bool
	err := tx.QueryRow(ctx, `
		SELECT (SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n)
		   AND EXISTS (SELECT FROM pg_attribute
		               WHERE attrelid = to_regclass($2) AND attname = 'window_rows' AND NOT attisdropped)`,
		qualified, s.ident+".slice").Scan(&complete)
	return complete, err
}

// lockClass is the first half of the two-key advisory locks that serialise
// migrations and planning per schema. Two-key locks live in a key space of
// their own, so they never collide with the cron job's single key 4246.
const lockClass = 4246

// cronLockHeld is the SQL test that backend pid %s holds the cron job's
// advisory lock 4246 (a single bigint key: classid 0, objid 4246, objsubid
// 1 in pg_locks). An owner whose lock connection fails it is gone.
const cronLockHeld = `EXISTS (SELECT 1 FROM pg_locks l
	WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = 4246 AND l.objsubid = 1
	  AND l.granted AND l.pid = %s)`

// ErrLostClaim fails a batch (through QueueComplete) when a slice is no longer
// this worker's claim: its lease expired and another worker took it over.
var ErrLostClaim = errors.New("claim lost: the slice was taken over by another worker")

// Store reads and writes the checkpoint tables of one schema.
type Store struct {
	db     *pgxpool.Pool
	schema string // as given, for messages and lock keys
	ident  string // sanitized, for SQL
}

// New returns a Store for the checkpoint tables in schema.
func New(db *pgxpool.Pool, schema string) *Store {
	return &Store{db: db, schema: schema, ident: pgx.Identifier{schema}.Sanitize()}
}

// q qualifies the table names of a statement with the store's schema.
func (s *Store) q(sql string) string { return strings.ReplaceAll(sql, "_SCHEMA_", s.ident) }

// Migrate creates the checkpoint schema and tables if they do not exist.
func (s *Store) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClass, "migrate:"+s.schema); err != nil {
			return err
		}
		complete, err := s.complete(ctx, tx)
		if err != nil || complete {
			return err
		}
		_, err = tx.Exec(ctx, s.q(schemaSQL))
		return err
	})
	if err != nil {
		return fmt.Errorf("create checkpoint schema %s: %w", s.schema, err)
	}
	return nil
}

// Installed reports whether the checkpoint tables exist, so read-only
// commands can answer "no run yet" without creating anything.
func (s *Store) Installed(ctx context.Context) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.ident+".slice").Scan(&ok)
	return ok, err
}

// Run is one backfill as stored.
type Run struct {
	ID              int64
	State           string
	PlannedAt       time.Time
	WatermarkTarget time.Time
	RangeFrom       *time.Time
	SlicesTotal     int64
	RowsTotal       int64
	LogicVersion    string
	StartedAt       *time.Time
	FinishedAt      *time.Time
	StampedAt       *time.Time
	LastError       *string
}

// Finished reports whether the run needs no more work.
func (r *Run) Finished() bool { return r.State == StateDone || r.State == StateSuperseded }

const runColumns = `id, state, planned_at, watermark_target, range_from, slices_total, rows_total,
	logic_version, started_at, finished_at, watermark_stamped_at, last_error`

func scanRun(row pgx.Row) (*Run, error) {
	var r Run
	err := row.Scan(&r.ID, &r.State, &r.PlannedAt, &r.WatermarkTarget, &r.RangeFrom, &r.SlicesTotal,
		&r.RowsTotal, &r.LogicVersion, &r.StartedAt, &r.FinishedAt, &r.StampedAt, &r.LastError)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return &r, err
}

// LatestRun returns the newest run, or nil when there is none.
func (s *Store) LatestRun(ctx context.Context) (*Run, error) {
	return scanRun(s.db.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run ORDER BY id DESC LIMIT 1`)))
}

// GetRun returns run id, or nil when there is no such run.
func (s *Store) GetRun(ctx context.Context, id int64) (*Run, error) {
	return scanRun(s.db.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run WHERE id = $1`), id))
}

// PlanSpec describes how to plan a new run.
type PlanSpec struct {
	// SourceSQL lists the slices: columns workspace_id, from_ts, to_ts,
	// est_rows, read_from (see schema.sql); its parameters are $1 RangeFrom (or -infinity) and $2
	// MaxSliceRows.
	SourceSQL string
	// RangeFrom is the lower time bound (--months-back); nil = all history.
	RangeFrom *time.Time
	// MaxSliceRows is SourceSQL's $2: most raw rows per slice.
	MaxSliceRows int64
	// LogicVersion identifies the slice SQL the run is planned for.
	LogicVersion string
	// NewRun plans a fresh run even if the latest one is unfinished.
	NewRun bool
}

// Start resumes the latest unfinished run or plans a new one, in one
// transaction serialised per schema so that processes started together all
// join the same run. It reports whether the run was planned now. A finished
// latest run is returned as is unless spec.NewRun is set.
func (s *Store) Start(ctx context.Context, spec PlanSpec) (run *Run, planned bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClass, "plan:"+s.schema); err != nil {
			return err
		}
		latest, err := scanRun(tx.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run ORDER BY id DESC LIMIT 1`)))
		if err != nil {
			return err
		}
		if latest != nil && !spec.NewRun {
			run = latest
			if latest.Finished() || latest.LogicVersion != spec.LogicVersion {
				return nil // done, or not ours to resume: the caller says which
			}
			return s.reopen(ctx, tx, latest)
		}
		if latest != nil && !latest.Finished() {
			if _, err := tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET state = 'superseded', finished_at = now() WHERE id = $1`), latest.ID); err != nil {
				return err
			}
		}
		run, err = s.plan(ctx, tx, spec)
		planned = true
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("start run: %w", err)
	}
	return run, planned, nil
}

// reopen makes an unfinished run runnable again: failed slices get another
// chance, and the run is marked running.
func (s *Store) reopen(ctx context.Context, tx pgx.Tx, run *Run) error {
	_, err := tx.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice SET state = 'pending', owner = NULL, owner_pid = NULL, lease_until = NULL
		WHERE run_id = $1 AND state = 'failed'`), run.ID)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.run SET state = 'running', started_at = coalesce(started_at, now()), last_error = NULL
		WHERE id = $1`), run.ID)
	run.State = StateRunning
	return err
}

// plan inserts a run and its slices. Slice ids follow descending size, so
// claiming in id order starts the largest slices first.
func (s *Store) plan(ctx context.Context, tx pgx.Tx, spec PlanSpec) (*Run, error) {
	var id int64
	err := tx.QueryRow(ctx, s.q(`
		INSERT INTO _SCHEMA_.run (state, watermark_target, range_from, logic_version, started_at)
		VALUES ('running', now() - interval '5 minutes', $1, $2, now())
		RETURNING id`), spec.RangeFrom, spec.LogicVersion).Scan(&id)
	if err != nil {
		return nil, err
	}
	// Planning reads the whole history once, before any worker can start:
	// the one statement where the server's parallel workers pay. INSERT …
	// SELECT never runs in parallel and CREATE TABLE … AS may, so the slice
	// list is first computed into a temporary table. The planner badly
	// overestimates how many (workspace, day) groups the scan reduces to and
	// would stay serial; the cost settings, local to this transaction, let
	// it take the parallel plan (the server's worker limits still apply).
	// work_mem keeps its hashes and sorts of (workspace, day) groups in
	// memory: at the default 4 MB they spill to disk (about a tenth of the
	// plan's time on a million usage rows).
	_, err = tx.Exec(ctx, `SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'`)
	if err != nil {
		return nil, err
	}
	_, err = tx.Exec(ctx, `CREATE TEMP TABLE shardfill_plan ON COMMIT DROP AS `+spec.SourceSQL,
		LowerBound(spec.RangeFrom), spec.MaxSliceRows)
	if err != nil {
		return nil, fmt.Errorf("plan slices: %w", err)
	}
	_, err = tx.Exec(ctx, s.q(`
		INSERT INTO _SCHEMA_.slice (run_id, id, workspace_id, from_ts, to_ts, est_rows, read_from, ws_rows, window_rows)
		SELECT $1, row_number() OVER (ORDER BY est_rows DESC, workspace_id, from_ts),
		       workspace_id, from_ts, to_ts, est_rows, read_from,
		       sum(est_rows) OVER (PARTITION BY workspace_id),
		       sum(est_rows) OVER (PARTITION BY from_ts, to_ts)
		FROM shardfill_plan`), id)
	if err != nil {
		return nil, fmt.Errorf("plan slices: %w", err)
	}
	// The slice table just grew by a whole run: without fresh statistics
	// the planner takes the run for a handful of rows and picks plans
	// that are quadratic in its size.
	if _, err := tx.Exec(ctx, s.q(`ANALYZE _SCHEMA_.slice`)); err != nil {
		return nil, err
	}
	_, err = tx.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.run r SET slices_total = c.n, rows_total = c.rows
		FROM (SELECT count(*) AS n, coalesce(sum(est_rows), 0) AS rows FROM _SCHEMA_.slice WHERE run_id = $1) c
		WHERE r.id = $1`), id)
	if err != nil {
		return nil, err
	}
	return scanRun(tx.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run WHERE id = $1`), id))
}

// LowerBound turns an optional bound into a timestamptz parameter.
func LowerBound(from *time.Time) pgtype.Timestamptz {
	if from == nil {
		return pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	}
	return pgtype.Timestamptz{Time: *from, Valid: true}
}

// Claim is one worker's hold on a slice.
type Claim struct {
	Owner string // process identity, also written to the slice row
	PID   int    // backend pid of the owner's cron-lock connection
}

// BatchLimits bound what one claim takes.
type BatchLimits struct {
	Rows   int64 // estimated raw rows; a single larger slice is still taken alone
	Slices int
}

// Claim takes a batch for c, or returns nil when there is nothing to take.
// The batch starts with the first pending slice in id order (largest
// first) and fills up, largest first and within limits, with pending slices
// of other workspaces in the same time window, which the job can read in
// one sweep. When nothing is pending it takes over one slice whose owner is
// gone: lease expired, or its lock connection no longer holds the cron lock.
func (s *Store) Claim(ctx context.Context, runID int64, c Claim, limits BatchLimits, lease time.Duration) (*shard.Batch, error) {
	got, cost, err := s.claim(ctx, claimPendingSQL, limits.Slices <= 1, runID, c, lease, limits.Rows, max(limits.Slices-1, 0))
	if err == nil && len(got) == 0 {
		got, cost, err = s.claim(ctx, claimAbandonedSQL, true, runID, c, lease)
	}
	if err != nil || len(got) == 0 {
		return nil, err
	}
	b, err := shard.NewBatch(got)
	if err != nil {
		return nil, err
	}
	b.WorkspaceRows, b.RangeRows = cost.workspaceRows, cost.rangeRows
	return &b, nil
}

// claimSet marks the picked slices claimed. The picked ids are gathered
// into an array first, so the update is always primary-key lookups: joined
// to the pick, the planner can misjudge its size and rescan it per slice
// of the run.
const claimSet = `
	UPDATE _SCHEMA_.slice s
	SET state = 'running', owner = $2, owner_pid = $3, attempts = s.attempts + 1,
	    lease_until = now() + $4 * interval '1 millisecond', started_at = now(), error = NULL
	WHERE s.run_id = $1 AND s.id = ANY (ARRAY (SELECT id FROM pick))
	RETURNING s.run_id, s.id, s.workspace_id::text, s.from_ts, s.to_ts, s.est_rows, s.attempts,
	          s.read_from, coalesce(s.ws_rows, 0), coalesce(s.window_rows, 0)`

// claimPendingSQL: $5 row budget, $6 most companions of the first slice.
const claimPendingSQL = `
	WITH first AS (
		SELECT run_id, id, est_rows, from_ts, to_ts
		FROM _SCHEMA_.slice
		WHERE run_id = $1 AND state = 'pending'
		ORDER BY id LIMIT 1
		FOR UPDATE SKIP LOCKED
	), mates AS (
		SELECT s.id, s.est_rows
		FROM _SCHEMA_.slice s JOIN first f
		  ON s.run_id = f.run_id AND s.from_ts = f.from_ts AND s.to_ts = f.to_ts
		WHERE f.est_rows < $5 AND s.state = 'pending' AND s.id <> f.id
		ORDER BY s.id LIMIT $6
		FOR UPDATE OF s SKIP LOCKED
	), pick AS (
		SELECT id FROM first
		UNION ALL
		SELECT m.id
		FROM (SELECT id, sum(est_rows) OVER (ORDER BY id) AS running FROM mates) m, first f
		WHERE f.est_rows + m.running <= $5
	)` + claimSet

// claimAbandonedSQL takes over one slice whose lease ran out or whose
// owner's lock connection is gone, oldest lease first (which also keeps it
// on the running-slice index).
var claimAbandonedSQL = `
	WITH pick AS (
		SELECT id FROM _SCHEMA_.slice
		WHERE run_id = $1 AND state = 'running'
		  AND (lease_until < now() OR NOT ` + fmt.Sprintf(cronLockHeld, "_SCHEMA_.slice.owner_pid") + `)
		ORDER BY lease_until LIMIT 1
		FOR UPDATE SKIP LOCKED
	)` + claimSet

// readCost is what reading a batch costs on each access path, in raw rows
// as planned.
type readCost struct {
	// workspaceRows: the rows of the batch's workspaces over the whole run,
	// summed (the workspace path visits every task of a workspace's agents;
	// read_from only spares the usage lookups of older ones).
	workspaceRows int64
	// rangeRows: the rows of every workspace in the batch's windows, summed
	// (the time path reads them all and keeps the batch's). A claimed batch
	// lies in one window.
	rangeRows int64
}

// claim runs one claim statement and returns the claimed slices and what
// reading them costs, from the per-workspace and per-window totals the plan
// stored with every slice.
//
// Claims of one run take turns (a transaction-level advisory lock, taken
// before the claim statement's snapshot): racing claims could each skip
// the slices the others had just locked and split a window between
// workers, each of which then reads the whole window. A claim of one slice
// (single) splits nothing and skips the turn: with one slice per batch
// every slice needs a claim, and a pool of workers queueing for the turn
// idles while the holder waits for a core. The transaction travels in one
// round trip.
func (s *Store) claim(ctx context.Context, sql string, single bool, runID int64, c Claim, lease time.Duration, extra ...any) ([]shard.Slice, readCost, error) {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return nil, readCost{}, fmt.Errorf("claim slices: %w", err)
	}
	defer conn.Release()
	var b pgx.Batch
	b.Queue(`BEGIN`)
	if !single {
		b.Queue(`SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClass, fmt.Sprintf("claim:%s:%d", s.schema, runID))
	}
	var got []shard.Slice
	var cost readCost
	b.Queue(s.q(sql), append([]any{runID, c.Owner, c.PID, lease.Milliseconds()}, extra...)...).Query(func(rows pgx.Rows) error {
		var cerr error
		got, cost, cerr = collectClaimed(rows)
		return cerr
	})
	b.Queue(`COMMIT`)
	if err := conn.SendBatch(ctx, &b).Close(); err != nil {
		// Whatever failed, the transaction did not commit: end it before
		// the connection goes back to the pool.
		_, _ = conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
		return nil, readCost{}, fmt.Errorf("claim slices: %w", err)
	}
	return got, cost, nil
}

// collectClaimed reads the rows of a claim statement.
func collectClaimed(rows pgx.Rows) ([]shard.Slice, readCost, error) {
	perWorkspace := map[string]int64{}
	perWindow := map[[2]time.Time]int64{}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard.Slice, error) {
		var sl shard.Slice
		var readFrom *time.Time
		var wsRows, windowRows int64
		err := r.Scan(&sl.RunID, &sl.ID, &sl.Workspace, &sl.From, &sl.To, &sl.EstRows, &sl.Attempt, &readFrom,
			&wsRows, &windowRows)
		if readFrom != nil {
			sl.ReadFrom = *readFrom
		} else {
			sl.ReadFrom = sl.From // planned without raw rows: nothing older to read
		}
		perWorkspace[sl.Workspace] = wsRows
		perWindow[[2]time.Time{sl.From.UTC(), sl.To.UTC()}] = windowRows
		return sl, err
	})
	if err != nil {
		return nil, readCost{}, err
	}
	var cost readCost
	for _, n := range perWorkspace {
		cost.workspaceRows += n
	}
	for _, n := range perWindow {
		cost.rangeRows += n
	}
	return got, cost, nil
}

// ErrNotProtected is returned by Fence when the owner's lock connection no
// longer holds the cron lock: committing now could race the cron job.
var ErrNotProtected = errors.New("the cron lock (4246) is no longer held by this process")

// ErrLockContended is returned by QueueFence when the slice transaction
// cannot take the cron lock in shared mode although this process holds it:
// another session is queued for it exclusively (a cron tick, or the serial
// command started by mistake). It is transient: the queue drains.
var ErrLockContended = errors.New("a session is waiting for the cron lock (4246) exclusively")

// QueueFence appends to b (a batch inside the slice transaction) the check
// that c's lock connection still holds the cron lock, and takes the cron
// lock in shared mode for the transaction itself: if the lock connection
// dies while this transaction writes, the cron job still cannot start until
// it has committed or rolled back. The batch fails with ErrNotProtected or
// ErrLockContended otherwise. Queue it first.
func (s *Store) QueueFence(b *pgx.Batch, c Claim) {
	b.Queue(`SELECT `+fmt.Sprintf(cronLockHeld, "$1")+`, pg_try_advisory_xact_lock_shared(4246)`, c.PID).QueryRow(func(row pgx.Row) error {
		var held, shared bool
		if err := row.Scan(&held, &shared); err != nil {
			return err
		}
		if !held {
			return ErrNotProtected
		}
		if !shared {
			return ErrLockContended
		}
		return nil
	})
}

// QueueComplete appends to b the done marks of w's slices, so they commit
// with the rollup rows, and fails the batch with ErrLostClaim unless every
// slice is still c's claim (same owner, same attempt, still running). Queue
// it last: the marks lock the slice rows, and checking at the end rather
// than the start keeps those locks, and the write the fence guards, in one
// short step. A worker that lost its claim while it wrote rolls back
// everything; whoever took the slice over writes the same buckets from the
// raw rows (the unique key makes the two writes wait for each other).
func (s *Store) QueueComplete(b *pgx.Batch, w shard.Batch, c Claim) {
	ids, attempts := make([]int64, len(w.Slices)), make([]int32, len(w.Slices))
	for i, sl := range w.Slices {
		ids[i], attempts[i] = sl.ID, int32(sl.Attempt)
	}
	b.Queue(s.q(`
		UPDATE _SCHEMA_.slice s
		SET state = 'done', finished_at = clock_timestamp(), lease_until = NULL, error = NULL
		FROM unnest($3::bigint[], $4::integer[]) AS c(id, attempts)
		WHERE s.run_id = $1 AND s.id = c.id AND s.attempts = c.attempts
		  AND s.owner = $2 AND s.state = 'running'`), w.Slices[0].RunID, c.Owner, ids, attempts).Exec(func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() != int64(len(ids)) {
			return ErrLostClaim
		}
		return nil
	})
}

// Fail records a slice's permanent error. It does nothing if the claim was
// lost meanwhile: the slice belongs to someone else now.
func (s *Store) Fail(ctx context.Context, sl shard.Slice, owner string, cause error) error {
	_, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET state = 'failed', error = $5, finished_at = now(), lease_until = NULL
		WHERE run_id = $1 AND id = $2 AND owner = $3 AND attempts = $4 AND state = 'running'`),
		sl.RunID, sl.ID, owner, sl.Attempt, cause.Error())
	return err
}

// Release hands owner's unfinished claims back as pending, so a graceful stop
// leaves nothing for others to wait out.
func (s *Store) Release(ctx context.Context, runID int64, owner string) (int64, error) {
	tag, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET state = 'pending', owner = NULL, owner_pid = NULL, lease_until = NULL
		WHERE run_id = $1 AND owner = $2 AND state = 'running'`), runID, owner)
	return tag.RowsAffected(), err
}

// ReleaseBatch hands back the slices of w that are still this claim's
// (owner and attempt unchanged) after part of the batch was taken over:
// without it they would stay claimed by a live process that has dropped
// them, and be renewed forever.
func (s *Store) ReleaseBatch(ctx context.Context, w shard.Batch, owner string) error {
	ids, attempts := make([]int64, len(w.Slices)), make([]int32, len(w.Slices))
	for i, sl := range w.Slices {
		ids[i], attempts[i] = sl.ID, int32(sl.Attempt)
	}
	_, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET state = 'pending', owner = NULL, owner_pid = NULL, lease_until = NULL
		WHERE run_id = $1 AND owner = $2 AND state = 'running'
		  AND (id, attempts) IN (SELECT * FROM unnest($3::bigint[], $4::integer[]))`),
		w.Slices[0].RunID, owner, ids, attempts)
	return err
}

// Renew extends the leases of owner's claims. Rows locked by a slice
// transaction are skipped: that lock already keeps them from being taken.
func (s *Store) Renew(ctx context.Context, runID int64, owner string, lease time.Duration) error {
	_, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice s SET lease_until = now() + $3 * interval '1 millisecond'
		FROM (SELECT run_id, id FROM _SCHEMA_.slice
		      WHERE run_id = $1 AND owner = $2 AND state = 'running'
		      FOR UPDATE SKIP LOCKED) c
		WHERE s.run_id = c.run_id AND s.id = c.id`), runID, owner, lease.Milliseconds())
	return err
}

// Unclaimed reports whether run has slices that are neither done nor
// failed and not held by owner: pending ones, or ones other processes are
// working on (which may yet be abandoned to us). Cheap on any run size:
// both conditions are partial-index lookups.
func (s *Store) Unclaimed(ctx context.Context, runID int64, owner string) (bool, error) {
	var any bool
	err := s.db.QueryRow(ctx, s.q(`
		SELECT EXISTS (SELECT 1 FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'pending')
		    OR EXISTS (SELECT 1 FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'running' AND owner <> $2)`),
		runID, owner).Scan(&any)
	return any, err
}

// Counts are the slices of a run by state.
type Counts struct {
	Total, Pending, Running, Done, Failed int64
	RowsDone                              int64
}

// Unfinished is the number of slices that still need work.
func (c Counts) Unfinished() int64 { return c.Pending + c.Running }

func (s *Store) counts(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, runID int64) (Counts, error) {
	var c Counts
	err := q.QueryRow(ctx, s.q(`
		SELECT count(*),
		       count(*) FILTER (WHERE state = 'pending'),
		       count(*) FILTER (WHERE state = 'running'),
		       count(*) FILTER (WHERE state = 'done'),
		       count(*) FILTER (WHERE state = 'failed'),
		       coalesce(sum(est_rows) FILTER (WHERE state = 'done'), 0)
		FROM _SCHEMA_.slice WHERE run_id = $1`), runID).
		Scan(&c.Total, &c.Pending, &c.Running, &c.Done, &c.Failed, &c.RowsDone)
	return c, err
}

// Counts returns the slices of run by state.
func (s *Store) Counts(ctx context.Context, runID int64) (Counts, error) {
	return s.counts(ctx, s.db, runID)
}

// Outcome is what Finish found and did.
type Outcome struct {
	Counts  Counts
	Stamped bool // this call stamped the watermark
	State   string
}

// StampFunc hands the rollup over to the cron job at the run's watermark
// target; it reports false when there was nothing to stamp.
type StampFunc func(ctx context.Context, tx pgx.Tx, at time.Time) (bool, error)

// Finish closes the run if no slice is unfinished: done (stamping the
// watermark through stamp, exactly once) when every slice is done, failed
// when some failed. The run row is locked first, so when several processes
// finish together exactly one of them sees the last slice done and stamps.
func (s *Store) Finish(ctx context.Context, runID int64, stamp StampFunc) (Outcome, error) {
	var out Outcome
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var target time.Time
		err := tx.QueryRow(ctx, s.q(`SELECT state, watermark_target FROM _SCHEMA_.run WHERE id = $1 FOR UPDATE`), runID).
			Scan(&out.State, &target)
		if err != nil {
			return err
		}
		if out.Counts, err = s.counts(ctx, tx, runID); err != nil {
			return err
		}
		if out.State == StateDone || out.State == StateSuperseded || out.Counts.Unfinished() > 0 {
			return nil
		}
		if out.Counts.Failed > 0 {
			out.State = StateFailed
			_, err := tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET state = 'failed', finished_at = now(),
				last_error = $2 WHERE id = $1`), runID, fmt.Sprintf("%d slices failed", out.Counts.Failed))
			return err
		}
		if out.Stamped, err = stamp(ctx, tx, target); err != nil {
			return err
		}
		out.State = StateDone
		_, err = tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET state = 'done', finished_at = now(), last_error = NULL,
			watermark_stamped_at = CASE WHEN $2 THEN now() END WHERE id = $1`), runID, out.Stamped)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("finish run %d: %w", runID, err)
	}
	return out, nil
}

// SetState records a run state (running, interrupted) unless the run has
// already ended.
func (s *Store) SetState(ctx context.Context, runID int64, state string) error {
	_, err := s.db.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET state = $2
		WHERE id = $1 AND state NOT IN ('done', 'superseded', 'failed')`), runID, state)
	return err
}

// OthersActive reports whether any slice of run is claimed by an owner other than
// owner whose lock connection is still alive.
func (s *Store) OthersActive(ctx context.Context, runID int64, owner string) (bool, error) {
	var active bool
	err := s.db.QueryRow(ctx, s.q(`
		SELECT EXISTS (SELECT 1 FROM _SCHEMA_.slice s
		       WHERE s.run_id = $1 AND s.state = 'running' AND s.owner <> $2
		         AND `+fmt.Sprintf(cronLockHeld, "s.owner_pid")+`)`), runID, owner).Scan(&active)
	return active, err
}
