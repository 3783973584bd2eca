package checkpoint

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/shard"
)

var (
	//go:embed claim_pending.sql
	claimPendingSQL string
	//go:embed claim_abandoned.sql
	claimAbandonedSQL string
	//go:embed claim_set.sql
	claimSetSQL string
	//go:embed claim_smallest.sql
	claimSmallestSQL string
)

// Claimant is who claims slices: a process, named in the slice rows, and
// the backend of its cron-lock connection, whose lock tells others it lives.
type Claimant struct {
	Owner string
	PID   int
}

// BatchLimits bound what one claim takes.
type BatchLimits struct {
	Rows   int64 // estimated raw rows; a single larger slice is still taken alone
	Slices int
	// Smallest takes one slice, the pending one with the largest id (the
	// smallest of the newest piece planned): a worker's first claim, so
	// the run's first commit comes quickly at any size.
	Smallest bool
}

// Claim takes a batch for c, or returns nil when there is nothing to take.
// The batch starts with the first pending slice in id order (largest
// first) and fills up, largest first and within limits, with pending slices
// of other workspaces in the same time window, which the job can read in
// one sweep. When nothing is pending it takes over one slice whose owner is
// gone: lease expired, or its lock connection neither holds the cron lock
// nor waits for it (a process that yields the lock waits for it).
func (s *Store) Claim(ctx context.Context, runID int64, c Claimant, limits BatchLimits, lease time.Duration) (*shard.Batch, error) {
	var got []shard.Slice
	var cost readCost
	var err error
	if limits.Smallest {
		got, cost, err = s.claim(ctx, claimSmallestSQL+claimSetSQL, true, runID, c, lease)
	} else {
		got, cost, err = s.claim(ctx, claimPendingSQL+claimSetSQL, limits.Slices <= 1, runID, c, lease, limits.Rows, max(limits.Slices-1, 0))
	}
	if err == nil && len(got) == 0 {
		abandoned := strings.Replace(claimAbandonedSQL, "/*owner_holds_cron_lock*/", s.lock.HeldOrAwaitedBy("_SCHEMA_.slice.owner_pid"), 1)
		got, cost, err = s.claim(ctx, abandoned+claimSetSQL, true, runID, c, lease)
	}
	if err != nil || len(got) == 0 {
		return nil, err
	}
	batch, err := shard.NewBatch(got)
	if err != nil {
		return nil, err
	}
	batch.WorkspaceRows, batch.WindowRows = cost.workspaceRows, cost.windowRows
	return &batch, nil
}

// readCost is what reading a batch costs on each access path, in raw rows
// as planned.
type readCost struct {
	// workspaceRows: the rows of the batch's workspaces over the whole run,
	// summed (the workspace path visits every task of a workspace's agents;
	// read_from only spares the usage lookups of older ones).
	workspaceRows int64
	// windowRows: the rows of every workspace in the batch's windows,
	// summed (the window path reads them all and keeps the batch's). A
	// claimed batch lies in one window.
	windowRows int64
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
func (s *Store) claim(ctx context.Context, sql string, single bool, runID int64, c Claimant, lease time.Duration, extra ...any) ([]shard.Slice, readCost, error) {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return nil, readCost{}, fmt.Errorf("claim slices: %w", err)
	}
	defer conn.Release()
	var stmts pgx.Batch
	stmts.Queue(`BEGIN`)
	if !single {
		stmts.Queue(turnSQL, s.turn("claim", runID)...)
	}
	// A run replaced by a newer one hands out nothing: its processes stop
	// rather than write beside the new run.
	stmts.Queue(s.q(`SELECT state FROM _SCHEMA_.run WHERE id = $1`), runID).QueryRow(func(row pgx.Row) error {
		var state RunState
		if err := row.Scan(&state); err != nil {
			return err
		}
		if state == StateSuperseded {
			return fmt.Errorf("run %d: %w", runID, ErrSuperseded)
		}
		return nil
	})
	var got []shard.Slice
	var cost readCost
	stmts.Queue(s.q(sql), append([]any{runID, c.Owner, c.PID, lease.Milliseconds()}, extra...)...).Query(func(rows pgx.Rows) error {
		var cerr error
		got, cost, cerr = collectClaimed(rows)
		return cerr
	})
	stmts.Queue(`COMMIT`)
	if err := conn.SendBatch(ctx, &stmts).Close(); err != nil {
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
		var ws *string
		var from, to, readFrom *time.Time
		var wsRows, windowRows int64
		err := r.Scan(&sl.RunID, &sl.ID, &ws, &from, &to, &sl.Lo, &sl.Hi, &sl.EstRows, &sl.Attempt, &readFrom,
			&wsRows, &windowRows, &sl.WatermarkTarget)
		if ws != nil {
			sl.Workspace = *ws
		}
		if from != nil && to != nil {
			sl.From, sl.To = *from, *to
		} else {
			sl.KeyRange = true
		}
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
		cost.windowRows += n
	}
	return got, cost, nil
}
