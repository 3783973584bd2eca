package job

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/shard"
)

// Lock is the advisory lock a job's processes hold while they work on a
// run, on a connection of their own, and how they hold it.
type Lock struct {
	// Key is the single-bigint advisory lock key.
	Key int64
	// Exclusive: one process at a time holds it (a second one of the same
	// run waits); otherwise every process holds it in shared mode, which
	// keeps out whoever takes it exclusively (a cron tick, a serial
	// command started by mistake).
	Exclusive bool
	// Fence is what each slice transaction checks of it.
	Fence checkpoint.Fence
	// Yield: a session that waits for the lock exclusively (the
	// application's own transactions) gets it for its turn, and the run
	// goes on after; otherwise it waits until the run ends.
	Yield bool
}

// Lock is the rollup's: the cron entry's key, in shared mode, checked by
// every slice transaction and yielded to the application's exclusive
// waiters.
func (*Hourly) Lock() Lock {
	return Lock{Key: CronLockKey, Fence: checkpoint.FenceShared, Yield: true}
}

// Tables are the tables the rollup writes.
func (*Hourly) Tables() []string {
	return []string{"task_usage_hourly", "task_usage_hourly_dirty", "task_usage_hourly_rollup_state"}
}

// Name is the rollup job's name.
func (*Hourly) Name() string { return checkpoint.DefaultJob }

// Pieces plans the rollup in pieces of whole months, newest first; a
// history of at most pieceRows raw rows (0: the default) in one.
func (h *Hourly) Pieces(pieceRows int64) checkpoint.Pieces {
	return checkpoint.MonthPieces{SourceSQL: planSQL, BoundsSQL: planBoundsSQL, PieceRows: pieceRows}
}

// PreviewOpts say what a preview covers.
type PreviewOpts struct {
	Largest      int        // how many of the largest slices to list
	RangeFrom    *time.Time // the rollup's lower time bound; nil = all history
	MaxSliceRows int64      // the rollup's most raw rows per window
}

// Preview is what a run would do, computed without writing anything.
type Preview struct {
	Slices  int64
	Rows    int64
	Largest []shard.Slice // biggest slices first
	// Summary is what the job's dry run reports, a table (nil: none).
	Summary *Table
}

// Table is a query's result as text, for the operator.
type Table struct {
	Columns []string
	Rows    [][]string
}

// Preview lists the rollup's slices in one pass over the whole history:
// a run plans the same slices piece by piece (a month's windows depend on
// its days only). The totals ride along on the largest slices as window
// aggregates (computed before the LIMIT).
func (*Hourly) Preview(ctx context.Context, tx pgx.Tx, opts PreviewOpts) (Preview, error) {
	var p Preview
	rows, err := tx.Query(ctx, `SELECT workspace_id::text, from_ts, to_ts, est_rows,
		count(*) OVER (), sum(est_rows) OVER ()::bigint FROM (`+planSQL+`) src
		ORDER BY est_rows DESC, workspace_id, from_ts LIMIT $4`,
		checkpoint.LowerBound(opts.RangeFrom), opts.MaxSliceRows, checkpoint.UpperBound(), opts.Largest)
	if err != nil {
		return p, err
	}
	p.Largest, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard.Slice, error) {
		var s shard.Slice
		err := r.Scan(&s.Workspace, &s.From, &s.To, &s.EstRows, &p.Slices, &p.Rows)
		return s, err
	})
	return p, err
}
