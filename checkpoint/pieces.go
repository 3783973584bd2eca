package checkpoint

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Pieces plans a run's slices piece by piece, each piece in a transaction
// of its own that also moves the run's planning cursor: the first piece
// when the run is created, so work starts at once, the rest by PlanNext
// from whichever process gets to it. An interrupted plan goes on where it
// stopped. The implementations are this package's: how a job's slices are
// cut is a choice among them.
type Pieces interface {
	// begin records in the run row just inserted what planning needs.
	begin(ctx context.Context, s *Store, tx pgx.Tx, runID int64, spec PlanSpec) error
	// next plans the piece after the run's cursor and reports whether
	// the run is now fully planned.
	next(ctx context.Context, s *Store, tx pgx.Tx, runID int64) (bool, error)
}

// MonthPieces plans a job's (shard, time window) slices in pieces of
// whole UTC months, newest first: the job's plan and bounds queries, bound
// by the job to its own parameters.
type MonthPieces struct {
	// Plan lists the slices of [from, to), a piece of whole months (from
	// -infinity or the run's range for the oldest piece, to infinity for
	// the newest): columns shard (uuid), lo, hi (timestamptz), est_rows
	// and read_from; sliceRows is the most rows per window
	// (PlanSpec.MaxSliceRows).
	Plan func(from, to pgtype.Timestamptz, sliceRows int64) (sql string, args []any)
	// Bounds finds where planning in pieces starts and stops: from from
	// (the run's range, or -infinity) the UTC month starts of the oldest
	// and newest rows, NULL when there are none, the number of rows
	// counted up to pieceRows + 1, and an estimate of all rows. Nil: the
	// run is planned in one piece.
	Bounds func(from pgtype.Timestamptz, pieceRows int64) (sql string, args []any)
	// PieceRows: a history of at most this many rows is planned in one
	// piece (it takes a fraction of a second); a larger one in pieces of
	// whole months, newest first. Default DefaultPieceRows.
	PieceRows int64
}

// KeyRanges cuts the key space of Table.Column into contiguous ranges of
// about Rows rows each (counting only rows that match Where), which
// together cover every key: the first range is open below and the last
// open above, so a row inserted anywhere, even between the keys seen at
// planning, belongs to exactly one slice. The boundaries are read in key
// order from the column's index, one piece of ranges at a time: the first
// piece is small so work starts within moments on any table, the later
// ones larger.
type KeyRanges struct {
	Table, Column string // SQL identifiers, already quoted as needed
	Type          string // the column's type, as format_type names it
	Where         string // SQL condition on the table's rows; "" for all
	Args          []any  // Where's parameters ($1, …)
	Rows          int64
}

// Pieces of key ranges: FirstPieceSlices ranges in the first, then
// PieceSlices in each.
const (
	FirstPieceSlices = 16
	PieceSlices      = 256
)

// begin records the key type, which the slices' bounds are kept in.
func (k KeyRanges) begin(ctx context.Context, s *Store, tx pgx.Tx, runID int64, _ PlanSpec) error {
	_, err := tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET key_type = $2 WHERE id = $1`), runID, k.Type)
	return err
}

// next reads the keys after the cursor in order, as many as the piece's
// ranges hold plus one, and takes every Rows-th key as a boundary. The
// piece is the last when fewer keys are left: its last range is open above.
func (k KeyRanges) next(ctx context.Context, s *Store, tx pgx.Tx, runID int64) (bool, error) {
	var cursor *string
	var pieces int
	if err := tx.QueryRow(ctx, s.q(`SELECT plan_key, plan_pieces FROM _SCHEMA_.run WHERE id = $1`), runID).Scan(&cursor, &pieces); err != nil {
		return false, err
	}
	ranges := int64(PieceSlices)
	if pieces == 0 {
		ranges = FirstPieceSlices
	}
	where := "true"
	if k.Where != "" {
		where = "(" + k.Where + ")"
	}
	n := len(k.Args)
	if cursor != nil {
		// Two statements rather than "$1 IS NULL OR key >= $1", which a
		// generic plan could only answer by reading the whole table.
		where += " AND " + k.Column + " >= $" + strconv.Itoa(n+3) + "::" + k.Type
	}
	args := append(append([]any(nil), k.Args...), k.Rows, ranges*k.Rows+1)
	if cursor != nil {
		args = append(args, *cursor)
	}
	var seen int64
	var bounds []string
	var next *string // the least key above those read, when none of them could bound a range
	err := tx.QueryRow(ctx, fmt.Sprintf(`
		WITH keys AS (
		    SELECT %[1]s AS k FROM %[2]s WHERE %[1]s IS NOT NULL AND %[3]s ORDER BY %[1]s LIMIT $%[5]d
		), numbered AS (
		    SELECT k, row_number() OVER (ORDER BY k) AS i FROM keys
		), bounds AS (
		    SELECT DISTINCT k AS b FROM numbered WHERE i > 1 AND i %% $%[4]d = 1 AND k > (SELECT k FROM numbered WHERE i = 1)
		)
		SELECT (SELECT count(*) FROM keys),
		       ARRAY(SELECT b::text FROM bounds ORDER BY b),
		       CASE WHEN NOT EXISTS (SELECT FROM bounds) THEN
		           (SELECT %[1]s::text FROM %[2]s WHERE %[1]s > (SELECT k FROM keys ORDER BY k DESC LIMIT 1) AND %[6]s
		            ORDER BY %[1]s LIMIT 1) END`,
		k.Column, k.Table, where, n+1, n+2, whereAll(k)), args...).Scan(&seen, &bounds, &next)
	if err != nil {
		return false, fmt.Errorf("plan key ranges of %s.%s: %w", k.Table, k.Column, err)
	}
	last := seen < ranges*k.Rows+1
	if !last && len(bounds) == 0 {
		// Every key read is one value (a key that repeats more often than
		// a piece holds): the range ends at the next value, if any.
		if next == nil {
			last = true
		} else {
			bounds = []string{*next}
		}
	}
	los := append([]*string{cursor}, ptrs(bounds)...)
	his := append(ptrs(bounds), nil)
	if !last {
		// The last boundary starts the next piece.
		los, his = los[:len(los)-1], his[:len(his)-1]
	}
	est := make([]int64, len(los))
	for i := range est {
		est[i] = k.Rows
	}
	if last && len(est) > 0 {
		est[len(est)-1] = max(seen-int64(len(est)-1)*k.Rows, 0)
	}
	lastID, err := s.lastSliceID(ctx, tx, runID)
	if err != nil {
		return false, err
	}
	var slices, rows int64
	err = tx.QueryRow(ctx, s.q(`
		WITH stored AS (
		    INSERT INTO _SCHEMA_.slice (run_id, id, lo, hi, est_rows)
		    SELECT $1, $2 + r.n, r.lo, r.hi, r.est FROM unnest($3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS r(lo, hi, est, n)
		    RETURNING est_rows
		)
		SELECT count(*), coalesce(sum(est_rows), 0)::bigint FROM stored`), runID, lastID, los, his, est).Scan(&slices, &rows)
	if err != nil {
		return false, fmt.Errorf("store key ranges: %w", err)
	}
	var cursorNext *string
	if !last {
		cursorNext = his[len(his)-1]
	}
	return last, s.piecePlanned(ctx, tx, runID, slices, rows, last, cursorNext)
}

// whereAll is the ranges' filter for a query of its own (no cursor).
func whereAll(k KeyRanges) string {
	if k.Where == "" {
		return "true"
	}
	return "(" + k.Where + ")"
}

func ptrs(ss []string) []*string {
	out := make([]*string, len(ss))
	for i := range ss {
		out[i] = &ss[i]
	}
	return out
}

// Planned is a job that plans its own slices: Query returns one row per
// slice with the columns shard (when HasShard), lo, hi and est_rows. It is
// planned in one piece, and its slices are checked to be disjoint: two
// slices of one shard whose ranges overlap would write the same rows.
type Planned struct {
	Query     string
	Args      []any
	HasShard  bool
	KeyType   string // lo's and hi's type, as format_type names it
	ShardType string // shard's, "" without one
}

func (p Planned) begin(ctx context.Context, s *Store, tx pgx.Tx, runID int64, _ PlanSpec) error {
	_, err := tx.Exec(ctx, s.q(`UPDATE _SCHEMA_.run SET key_type = $2, shard_type = nullif($3, '') WHERE id = $1`), runID, p.KeyType, p.ShardType)
	return err
}

func (p Planned) next(ctx context.Context, s *Store, tx pgx.Tx, runID int64) (bool, error) {
	lastID, err := s.lastSliceID(ctx, tx, runID)
	if err != nil {
		return false, err
	}
	shard := "NULL::text"
	if p.HasShard {
		shard = "p.shard::text"
	}
	n := len(p.Args)
	var slices, rows int64
	err = tx.QueryRow(ctx, s.q(fmt.Sprintf(`
		WITH planned AS (
		    SELECT %s AS shard, p.lo::text AS lo, p.hi::text AS hi, p.est_rows::bigint AS est FROM (%s) p
		), stored AS (
		    INSERT INTO _SCHEMA_.slice (run_id, id, shard, lo, hi, est_rows)
		    SELECT $%d, $%d + row_number() OVER (ORDER BY est DESC, shard, lo), shard, lo, hi, coalesce(est, 0) FROM planned
		    RETURNING est_rows
		)
		SELECT count(*), coalesce(sum(est_rows), 0)::bigint FROM stored`, shard, p.Query, n+1, n+2)),
		append(append([]any(nil), p.Args...), runID, lastID)...).Scan(&slices, &rows)
	if err != nil {
		return false, fmt.Errorf("plan slices: %w", err)
	}
	if err := s.disjoint(ctx, tx, runID, p.KeyType); err != nil {
		return false, err
	}
	return true, s.piecePlanned(ctx, tx, runID, slices, rows, true, nil)
}

// disjoint refuses a plan whose slices of one shard overlap, or whose
// range is empty or reversed.
func (s *Store) disjoint(ctx context.Context, tx pgx.Tx, runID int64, keyType string) error {
	var a, b int64
	var why string
	err := tx.QueryRow(ctx, s.q(fmt.Sprintf(`
		SELECT id, prev_id, CASE WHEN lo >= hi THEN 'its range is empty or reversed' ELSE 'their ranges overlap' END
		FROM (SELECT id, lo::%[1]s AS lo, hi::%[1]s AS hi,
		             lag(id) OVER w AS prev_id, lag(hi::%[1]s) OVER w AS prev_hi, lag(id) OVER w IS NOT NULL AS has_prev
		      FROM _SCHEMA_.slice WHERE run_id = $1
		      WINDOW w AS (PARTITION BY shard ORDER BY lo::%[1]s NULLS FIRST, id)) x
		WHERE lo >= hi OR (has_prev AND (prev_hi IS NULL OR lo IS NULL OR lo < prev_hi))
		LIMIT 1`, keyType)), runID).Scan(&a, &b, &why)
	if err == pgx.ErrNoRows {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check that the planned slices are disjoint: %w", err)
	}
	return fmt.Errorf("the job's plan is refused: slices %d and %d (of one shard): %s; two slices must never write the same rows", b, a, why)
}

// lastSliceID is the run's largest slice id so far (0 for none).
func (s *Store) lastSliceID(ctx context.Context, tx pgx.Tx, runID int64) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, s.q(`SELECT coalesce(max(id), 0) FROM _SCHEMA_.slice WHERE run_id = $1`), runID).Scan(&id)
	return id, err
}

// piecePlanned refreshes the slice table's statistics and moves the run's
// totals and key cursor (next: where the next piece starts) past a piece.
func (s *Store) piecePlanned(ctx context.Context, tx pgx.Tx, runID, slices, rows int64, last bool, next *string) error {
	// The slice table just grew: without fresh statistics the planner
	// takes the run for a handful of rows and picks plans that are
	// quadratic in its size.
	if _, err := tx.Exec(ctx, s.q(`ANALYZE _SCHEMA_.slice`)); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.run SET plan_pieces = plan_pieces + 1, planning_done = $4,
		       planning_ended_at = CASE WHEN $4 THEN clock_timestamp() END,
		       slices_total = slices_total + $2, rows_total = rows_total + $3, plan_key = $5
		WHERE id = $1`), runID, slices, rows, last, next)
	return err
}

// CountSQL is the statement that counts the rows the ranges are cut
// from, and its arguments.
func (k KeyRanges) CountSQL() (string, []any) {
	where := "true"
	if k.Where != "" {
		where = "(" + k.Where + ")"
	}
	return fmt.Sprintf(`SELECT count(*) FROM %s WHERE %s`, k.Table, where), k.Args
}
