package checkpoint

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

//go:embed plan_slices.sql
var planSlicesSQL string

// RunState is the state of a run as stored (see schema.sql).
type RunState string

// Run states as stored and reported by status.
const (
	StatePlanned     RunState = "planned"
	StateRunning     RunState = "running"
	StateDone        RunState = "done"
	StateFailed      RunState = "failed"
	StateInterrupted RunState = "interrupted"
	StateSuperseded  RunState = "superseded"
)

// Run is one backfill as stored.
type Run struct {
	ID              int64
	State           RunState
	PlannedAt       time.Time
	WatermarkTarget time.Time
	RangeFrom       *time.Time
	SlicesTotal     int64
	RowsTotal       int64
	LogicVersion    string
	StartedAt       *time.Time
	FinishedAt      *time.Time
	StampedAt       *time.Time // when this run stamped the watermark (at WatermarkTarget)
	LastError       *string
	// PlanningDone: every piece of the run is planned, so SlicesTotal and
	// RowsTotal are final; until then they count the pieces planned so far.
	PlanningDone bool
	// PlanPieces is how many pieces are planned.
	PlanPieces int
	// PlanningEndedAt is when the last piece was planned (nil until then,
	// and for runs planned in one pass by earlier releases).
	PlanningEndedAt *time.Time
}

// Finished reports whether the run needs no more work.
func (r *Run) Finished() bool { return r.State == StateDone || r.State == StateSuperseded }

const runColumns = `id, state, planned_at, watermark_target, range_from, slices_total, rows_total,
	logic_version, started_at, finished_at, watermark_stamped_at, last_error, planning_done, plan_pieces,
	planning_ended_at`

func scanRun(row pgx.Row) (*Run, error) {
	var r Run
	err := row.Scan(&r.ID, &r.State, &r.PlannedAt, &r.WatermarkTarget, &r.RangeFrom, &r.SlicesTotal,
		&r.RowsTotal, &r.LogicVersion, &r.StartedAt, &r.FinishedAt, &r.StampedAt, &r.LastError,
		&r.PlanningDone, &r.PlanPieces, &r.PlanningEndedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return &r, err
}

// querier is what reading a run needs: the pool, or a transaction.
type querier interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}

// latestRun returns the newest run, or nil when there is none.
func (s *Store) latestRun(ctx context.Context, q querier) (*Run, error) {
	return scanRun(q.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run WHERE job = $1 ORDER BY id DESC LIMIT 1`), s.job))
}

// LatestRun returns the newest run, or nil when there is none.
func (s *Store) LatestRun(ctx context.Context) (*Run, error) { return s.latestRun(ctx, s.db) }

// GetRun returns run id of the store's job, or nil when there is no such
// run.
func (s *Store) GetRun(ctx context.Context, id int64) (*Run, error) {
	return scanRun(s.db.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run WHERE id = $1 AND job = $2`), id, s.job))
}

// PlanSpec describes how to plan a new run.
type PlanSpec struct {
	// RangeFrom is the lower time bound; nil = all history.
	RangeFrom *time.Time
	// MaxSliceRows is the most rows per window of a plan by months.
	MaxSliceRows int64
	// LogicVersion identifies the slice SQL the run is planned for.
	LogicVersion string
	// NewRun plans a fresh run even if the latest one is unfinished.
	NewRun bool
	// Force lets NewRun supersede a run that other processes still work
	// on; they stop within seconds.
	Force bool
	// Self is the backend pid of the caller's lock connection: the
	// membership lock it holds is not another process's.
	Self int
	// Timeout is the statement_timeout of the planning transaction (0 =
	// none): a role's or database's own would kill planning, and waiting
	// for another process's planning, on a big history.
	Timeout time.Duration
	// Pieces plans the run's slices.
	Pieces Pieces
	// Params are the job's parameters as given (normalised text, nil for
	// NULL), kept with the run so that status shows what it runs.
	Params map[string]*string
}

// TimeoutSQL sets statement_timeout for the rest of the transaction to
// its argument, from [TimeoutSetting].
const TimeoutSQL = `SELECT set_config('statement_timeout', $1, true)`

// TimeoutSetting renders d for [TimeoutSQL]: whole milliseconds, rounded
// up so that a positive duration never becomes 0 (no timeout).
func TimeoutSetting(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10) + "ms"
}

// BusyError refuses to supersede a run that other processes still work on
// (PlanSpec.Force overrides it).
type BusyError struct {
	RunID int64
	PIDs  []int // backends of the processes working on it
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("run %d is still being worked on by %d other processes (lock backends %v)", e.RunID, len(e.PIDs), e.PIDs)
}

// Start resumes the latest unfinished run or plans a new one, in one
// transaction serialised per schema so that processes started together all
// join the same run. It reports whether the run was planned now. A finished
// latest run, or one planned by other slice logic, is returned as is
// unless spec.NewRun is set: the caller says which.
func (s *Store) Start(ctx context.Context, spec PlanSpec) (run *Run, planned bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, TimeoutSQL, TimeoutSetting(spec.Timeout)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, turnSQL, s.turn("plan")...); err != nil {
			return err
		}
		latest, err := s.latestRun(ctx, tx)
		if err != nil {
			return err
		}
		if latest != nil && !spec.NewRun {
			run = latest
			if latest.Finished() || latest.LogicVersion != spec.LogicVersion {
				return nil
			}
			return s.reopen(ctx, tx, latest)
		}
		if latest != nil && !latest.Finished() {
			members, err := s.Members(ctx, spec.Self)
			if err != nil {
				return err
			}
			if len(members) > 0 && !spec.Force {
				return &BusyError{RunID: latest.ID, PIDs: members}
			}
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
		UPDATE _SCHEMA_.run SET state = 'running', last_error = NULL
		WHERE id = $1`), run.ID)
	run.State = StateRunning
	return err
}

// plan inserts a run and plans its first piece, so that workers can
// start while the rest is planned. The watermark target is taken here,
// before any row is read.
func (s *Store) plan(ctx context.Context, tx pgx.Tx, spec PlanSpec) (*Run, error) {
	var id int64
	// The parameters travel as JSON text: a transaction pooler's
	// connections send arguments without the statement's types.
	var params *string
	if len(spec.Params) > 0 {
		b, err := json.Marshal(spec.Params)
		if err != nil {
			return nil, err
		}
		params = new(string(b))
	}
	err := tx.QueryRow(ctx, s.q(`
		INSERT INTO _SCHEMA_.run (state, watermark_target, range_from, logic_version,
		                          planning_done, plan_cursor, plan_max_rows, job, params)
		VALUES ('running', now() - interval '5 minutes', $1, $2, false, 'infinity', $3, $4, $5::jsonb)
		RETURNING id`), spec.RangeFrom, spec.LogicVersion, spec.MaxSliceRows, s.job, params).Scan(&id)
	if err != nil {
		return nil, err
	}
	pieces := spec.Pieces
	if pieces == nil {
		return nil, fmt.Errorf("plan run: the job says nothing of how to plan it")
	}
	if err := pieces.begin(ctx, s, tx, id, spec); err != nil {
		return nil, err
	}
	if _, err := s.planNext(ctx, tx, id, pieces); err != nil {
		return nil, err
	}
	return scanRun(tx.QueryRow(ctx, s.q(`SELECT `+runColumns+` FROM _SCHEMA_.run WHERE id = $1`), id))
}

// begin finds where planning in pieces of months starts and stops.
func (m MonthPieces) begin(ctx context.Context, s *Store, tx pgx.Tx, id int64, spec PlanSpec) error {
	if m.Bounds == nil {
		return nil
	}
	pieceRows := m.PieceRows
	if pieceRows <= 0 {
		pieceRows = DefaultPieceRows
	}
	sql, args := m.Bounds(LowerBound(spec.RangeFrom), pieceRows)
	b, err := ReadBounds(ctx, tx, sql, args)
	if err != nil {
		return fmt.Errorf("plan bounds: %w", err)
	}
	floor, top, newest, rows, estimate := b.First, b.Last, b.Newest, b.Rows, b.Estimate
	if rows > pieceRows && floor != nil && top != nil {
		if newest != nil && newest.After(*top) {
			// The first piece is the newest rows alone, from a day inside
			// the newest month: the first slices commit within moments
			// however big a month is. plan_top marks where it starts.
			top = newest
		}
		_, err := tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET plan_floor = $2, plan_top = $3, plan_piece_months = $4 WHERE id = $1`),
			id, floor, top, minPieceMonths(max(rows, estimate), monthsFrom(*floor, *top)+1, pieceRows))
		return err
	}
	return nil
}

// Bounds is what a bounds query returns (see MonthPieces.Bounds).
type Bounds struct {
	First, Last    *time.Time // the UTC month starts of the oldest and newest rows
	Rows, Estimate int64      // rows counted up to the limit; all rows, estimated
	Newest         *time.Time // optional: where the newest rows' own first piece starts
}

// ReadBounds runs a bounds query: four columns, and an optional fifth.
func ReadBounds(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args []any) (Bounds, error) {
	var b Bounds
	r, err := q.Query(ctx, sql, args...)
	if err != nil {
		return b, err
	}
	defer r.Close()
	if !r.Next() {
		if err := r.Err(); err != nil {
			return b, err
		}
		return b, fmt.Errorf("the bounds query returned no row")
	}
	dest := []any{&b.First, &b.Last, &b.Rows, &b.Estimate}
	if len(r.FieldDescriptions()) > 4 {
		dest = append(dest, &b.Newest)
	}
	if err := r.Scan(dest...); err != nil {
		return b, err
	}
	r.Close()
	return b, r.Err()
}

// DefaultPieceRows is PlanSpec.PieceRows's default.
const DefaultPieceRows = 200_000

// MaxPieceMonths bounds a planned piece: after the newest month, pieces
// double in months (1, 2, 4, …) up to this many, so planning reads the
// raw rows' tasks O(log months) times (each piece joins the whole task
// table, which is what makes a long piece cheap per row), and an
// interrupted plan loses at most one piece.
const MaxPieceMonths = 12

// pieceMinRows: a piece after the first covers at least about this many
// PlanSpec.PieceRows (by the rows per month the run's estimate gives):
// each piece pays a pass over the whole task table, so a piece of a small
// history's few rows would cost more than it plans.
const pieceMinRows = 10

// minPieceMonths is the fewest months a piece after the first covers: as
// many as hold pieceMinRows × pieceRows raw rows at the history's average
// rate (rows over months).
func minPieceMonths(rows int64, months int, pieceRows int64) int {
	perMonth := max(rows/int64(max(months, 1)), 1)
	return int(min(max((pieceMinRows*pieceRows+perMonth-1)/perMonth, 1), int64(months)))
}

// pieceMonths is how many months piece number n (0 = the newest month)
// covers: after the first, at least the given months.
func pieceMonths(n, least int) int {
	if n == 0 {
		return 1
	}
	return max(min(1<<(n-1), MaxPieceMonths), least)
}

// monthsFrom counts the months from a to b, both UTC month starts.
func monthsFrom(a, b time.Time) int {
	a, b = a.UTC(), b.UTC()
	return (b.Year()-a.Year())*12 + int(b.Month()) - int(a.Month())
}

// planTable is where a piece's slice list is computed before it is stored:
// the table to create and its name.
type planTable struct{ create, name string }

// planList picks the table a piece's slice list is computed into: a
// temporary one, or, for a role without the TEMP privilege (PUBLIC has it
// unless revoked), an unlogged one in the checkpoint schema, which the role
// owns. Either is created and dropped in the piece's transaction, and
// planning takes turns per schema, so one name serves. CREATE TABLE … AS
// may run in parallel where INSERT … SELECT never does.
func (s *Store) planList(ctx context.Context, tx pgx.Tx) (planTable, error) {
	var temp bool
	if err := tx.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'TEMP')`).Scan(&temp); err != nil {
		return planTable{}, err
	}
	if temp {
		return planTable{create: "TEMP TABLE shardfill_plan ON COMMIT DROP", name: "shardfill_plan"}, nil
	}
	name := s.ident + ".plan_list"
	return planTable{create: "UNLOGGED TABLE " + name, name: name}, nil
}

// PlanNext plans the next piece of run, under the schema's planning turn,
// in a transaction of its own whose statement_timeout is timeout (0 =
// none, as for the first piece, see PlanSpec.Timeout): any process working on the run may call
// it, and a piece is planned once whoever does (the run row's cursor moves
// with the piece's slices, in the same commit). It reports whether
// planning is done (nothing was left, or this was the last piece).
func (s *Store) PlanNext(ctx context.Context, runID int64, pieces Pieces, timeout time.Duration) (done bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, TimeoutSQL, TimeoutSetting(timeout)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, turnSQL, s.turn("plan")...); err != nil {
			return err
		}
		done, err = s.planNext(ctx, tx, runID, pieces)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("plan run %d: %w", runID, err)
	}
	return done, nil
}

// planNext plans the run's next piece in tx, unless the run is superseded
// or fully planned, and reports whether planning is done.
func (s *Store) planNext(ctx context.Context, tx pgx.Tx, runID int64, pieces Pieces) (bool, error) {
	var state RunState
	var done bool
	err := tx.QueryRow(ctx, s.q(`SELECT state, planning_done FROM _SCHEMA_.run WHERE id = $1 FOR NO KEY UPDATE`), runID).Scan(&state, &done)
	switch {
	case err != nil:
		return false, err
	case state == StateSuperseded:
		return false, fmt.Errorf("run %d: %w", runID, ErrSuperseded)
	case done || state == StateDone:
		return true, nil
	}
	return pieces.next(ctx, s, tx, runID)
}

// next plans the piece below the run's cursor in tx: the newest month
// (open upwards, so rows newer than the bounds found when the run was
// created are planned too; or, when the bounds gave one, only its newest
// days, and then the rest of it) first, then earlier ones, the oldest piece open
// downwards to the run's range (history older than the oldest month, and
// rollup rows of no raw row, are planned with it). It reports whether the
// run is now fully planned.
func (m MonthPieces) next(ctx context.Context, s *Store, tx pgx.Tx, runID int64) (bool, error) {
	var (
		cursor              pgtype.Timestamptz
		top, floor, rangeTo *time.Time
		maxRows             *int64
		pieces, least       int
	)
	err := tx.QueryRow(ctx, s.q(`
		SELECT plan_cursor, plan_top, plan_floor, range_from, plan_max_rows, plan_pieces, plan_piece_months
		FROM _SCHEMA_.run WHERE id = $1`), runID).
		Scan(&cursor, &top, &floor, &rangeTo, &maxRows, &pieces, &least)
	if err != nil {
		return false, err
	}
	if maxRows == nil {
		return false, fmt.Errorf("run %d has no planning state", runID)
	}
	// The piece is [from, to); from = lower marks the last piece.
	lower := LowerBound(rangeTo)
	to, from, last := cursor, lower, true
	scale := 1.0
	restOfNewest := false // the newest month below its first piece of newest days
	if top != nil && floor != nil {
		next := *top // the newest piece starts at the newest month, or a day in it
		if cursor.InfinityModifier != pgtype.Infinity {
			c := cursor.Time.UTC()
			next = c.AddDate(0, -pieceMonths(pieces, least), 0)
			if month := time.Date(c.Year(), c.Month(), 1, 0, 0, 0, 0, time.UTC); month.Before(c) {
				next, restOfNewest = month, true // the rest of the newest month, below its first piece
			}
		}
		if next.After(*floor) {
			from, last = pgtype.Timestamptz{Time: next, Valid: true}, false
			scale = float64(monthsFrom(*floor, *top)+1) / float64(monthsFrom(next, *top)+1)
		}
	}
	if !last && cursor.InfinityModifier == pgtype.Finite && !from.Time.Before(cursor.Time) {
		return false, fmt.Errorf("run %d: planning does not move: piece %d would start at %s, its cursor is %s", runID, pieces, from.Time, cursor.Time)
	}
	// Planning reads raw rows before any worker can start on them: the one
	// statement where the server's parallel workers pay. INSERT … SELECT
	// never runs in parallel and CREATE TABLE … AS may, so the piece's
	// slice list is first computed into a temporary table. The planner
	// badly overestimates how many (workspace, day) groups the scan reduces
	// to and would stay serial; the cost settings, local to this
	// transaction, let it take the parallel plan (the server's worker
	// limits still apply). work_mem keeps its hashes and sorts of
	// (workspace, day) groups in memory: at the default 4 MB they spill to
	// disk (about a tenth of the plan's time on a million usage rows).
	_, err = tx.Exec(ctx, `SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'`)
	if err != nil {
		return false, err
	}
	// Only the first pieces are on the critical path. The later ones are
	// planned while the workers keep the cores busy, where parallel
	// workers would only add their coordination to the CPU the plan costs.
	// The first piece of several (the newest month, or its newest days)
	// looks its raw rows' tasks and agents up by primary key: a hash join
	// reads the whole task table, which for one month of a long history
	// costs several times the month's own lookups (10 M rows, 5.5 M
	// tasks: seconds before the first slice). So does the rest of the
	// newest month after a first piece of its newest days: serial, it
	// took 6–8 s through the hash join at 10 M rows while the workers,
	// done with the first piece, waited for it.
	switch {
	case restOfNewest:
		if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off`); err != nil {
			return false, err
		}
	case pieces > 0:
		if _, err := tx.Exec(ctx, `SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
			return false, err
		}
	case !last:
		if _, err := tx.Exec(ctx, `SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off`); err != nil {
			return false, err
		}
	}
	list, err := s.planList(ctx, tx)
	if err != nil {
		return false, err
	}
	planSQL, args := m.Plan(from, to, *maxRows)
	if _, err := tx.Exec(ctx, `CREATE `+list.create+` AS `+planSQL, args...); err != nil {
		return false, fmt.Errorf("plan slices: %w", err)
	}
	var lastID, slices, rows int64
	if err := tx.QueryRow(ctx, s.q(`SELECT coalesce(max(id), 0) FROM _SCHEMA_.slice WHERE run_id = $1`), runID).Scan(&lastID); err != nil {
		return false, err
	}
	insert := strings.ReplaceAll(planSlicesSQL, "_PLAN_", list.name)
	if err := tx.QueryRow(ctx, s.q(insert), runID, lastID, scale).Scan(&slices, &rows); err != nil {
		return false, fmt.Errorf("plan slices: %w", err)
	}
	if _, err := tx.Exec(ctx, `DROP TABLE `+list.name); err != nil {
		return false, err
	}
	// The slice table just grew: without fresh statistics the planner
	// takes the run for a handful of rows and picks plans that are
	// quadratic in its size.
	if _, err := tx.Exec(ctx, s.q(`ANALYZE _SCHEMA_.slice`)); err != nil {
		return false, err
	}
	_, err = tx.Exec(ctx, s.q(`
		WITH piece AS (
		    INSERT INTO _SCHEMA_.plan_piece (run_id, piece, from_ts, to_ts, slices, rows)
		    VALUES ($1, $2, $3, $4, $5, $6)
		)
		UPDATE _SCHEMA_.run SET plan_cursor = $3, plan_pieces = $2 + 1, planning_done = $7,
		       planning_ended_at = CASE WHEN $7 THEN clock_timestamp() END,
		       slices_total = slices_total + $5, rows_total = rows_total + $6
		WHERE id = $1`), runID, pieces, from, to, slices, rows, last)
	if err != nil {
		return false, err
	}
	return last, nil
}

// LowerBound turns an optional bound into a timestamptz parameter.
func LowerBound(from *time.Time) pgtype.Timestamptz {
	if from == nil {
		return pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	}
	return pgtype.Timestamptz{Time: *from, Valid: true}
}

// UpperBound is the upper time bound of a plan of all history: infinity.
func UpperBound() pgtype.Timestamptz {
	return pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}
}

// Counts are the slices of a run by state.
type Counts struct {
	Total, Pending, Running, Done, Failed int64
	RowsDone                              int64
}

// Unfinished is the number of slices that still need work.
func (c Counts) Unfinished() int64 { return c.Pending + c.Running }

func (s *Store) counts(ctx context.Context, q querier, runID int64) (Counts, error) {
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
	Counts Counts
	State  RunState
	// Closed: this call ended the run (done or failed); false when another
	// process had ended it, or work remains.
	Closed bool
	// Stamped: the watermark was stamped at the run's target, by this call
	// or, when Closed is false, by the process that ended the run.
	Stamped bool
	// StampedAt is when the watermark was stamped, nil if it was not.
	StampedAt *time.Time
}

// StampFunc hands the rollup over to the cron job at the run's watermark
// target; it reports false when there was nothing to stamp.
type StampFunc func(ctx context.Context, tx pgx.Tx, at time.Time) (bool, error)

// Finish closes the run if no slice is unfinished: done (stamping the
// watermark through stamp, exactly once) when every slice is done, failed
// when some failed. The run row is locked first, so when several processes
// finish together exactly one of them sees the last slice done and stamps.
// The transaction is fenced like a slice's (see Fenced): c's lock
// connection must still hold the cron lock, and the transaction holds it
// too, so the cron job cannot start beside the stamp.
func (s *Store) Finish(ctx context.Context, runID int64, c Claimant, stamp StampFunc) (Outcome, error) {
	var out Outcome
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var fence pgx.Batch
		s.queueFence(&fence, runID, c)
		if err := tx.SendBatch(ctx, &fence).Close(); err != nil && !errors.Is(err, ErrSuperseded) {
			return err
		}
		var target time.Time
		var planned bool
		err := tx.QueryRow(ctx, s.q(`SELECT state, watermark_target, watermark_stamped_at, planning_done FROM _SCHEMA_.run WHERE id = $1 FOR UPDATE`), runID).
			Scan(&out.State, &target, &out.StampedAt, &planned)
		if err != nil {
			return err
		}
		out.Stamped = out.StampedAt != nil
		if out.Counts, err = s.counts(ctx, tx, runID); err != nil {
			return err
		}
		// Slices of pieces not planned yet are unfinished work too.
		if out.State == StateDone || out.State == StateSuperseded || out.Counts.Unfinished() > 0 || !planned {
			return nil
		}
		out.Closed = true
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
		return tx.QueryRow(ctx, s.q(`UPDATE _SCHEMA_.run SET state = 'done', finished_at = now(), last_error = NULL,
			watermark_stamped_at = CASE WHEN $2 THEN now() END WHERE id = $1 RETURNING watermark_stamped_at`), runID, out.Stamped).
			Scan(&out.StampedAt)
	})
	if err != nil {
		return out, fmt.Errorf("finish run %d: %w", runID, err)
	}
	return out, nil
}

// SetState records a run state (running, interrupted) unless the run has
// already ended.
func (s *Store) SetState(ctx context.Context, runID int64, state RunState) error {
	_, err := s.db.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET state = $2
		WHERE id = $1 AND state NOT IN ('done', 'superseded', 'failed')`), runID, state)
	return err
}
