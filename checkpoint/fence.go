package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/shard"
)

// ErrLostClaim fails a fenced transaction when a slice is no longer this
// claimant's: its lease expired and another worker took it over.
var ErrLostClaim = errors.New("claim lost: the slice was taken over by another worker")

// ErrNotProtected fails a fenced transaction when the claimant's lock
// connection no longer holds the cron lock: committing now could race the
// cron job.
var ErrNotProtected = errors.New("the cron lock is no longer held by this process")

// ErrLockContended fails a fenced transaction when it cannot take the cron
// lock in shared mode although the claimant holds it: another session is
// queued for it exclusively (a cron tick, or the serial command started by
// mistake). It is transient: the queue drains.
var ErrLockContended = errors.New("a session is waiting for the cron lock exclusively")

// Fenced returns the transaction that commits a claimed batch, as one
// pgx.Batch to send (a single round trip but for the COMMIT): BEGIN, the
// transaction-local settings, the fence, the job's statements (queued by
// work), and the done marks of the batch's slices. The order is the
// invariant, and this is the one place that keeps it:
//
//   - The fence comes first. It checks that c's lock connection still
//     holds the cron lock and takes the lock in shared mode for the
//     transaction itself, so if the lock connection dies while this
//     transaction writes, the cron job still cannot start until it ends.
//   - The done marks come last, with the rollup rows (invariant 1). They
//     lock the slice rows, and checking the claim at the end rather than
//     the start keeps those locks short. A worker that lost its claim while
//     it wrote rolls back everything ([ErrLostClaim]); whoever took the
//     slice over writes the same buckets from the raw rows (the unique key
//     makes the two writes wait for each other).
func (s *Store) Fenced(batch shard.Batch, c Claimant, settings map[string]string, work func(*pgx.Batch)) *pgx.Batch {
	var tx pgx.Batch
	tx.BeginTx(pgx.TxOptions{})
	queueSettings(&tx, settings)
	s.queueFence(&tx, batch.Slices[0].RunID, c)
	work(&tx)
	s.queueDone(&tx, batch, c)
	return &tx
}

// queueSettings appends the transaction-local settings.
func queueSettings(tx *pgx.Batch, settings map[string]string) {
	if len(settings) == 0 {
		return
	}
	names := slices.Sorted(maps.Keys(settings))
	values := make([]string, len(names))
	for i, n := range names {
		values[i] = settings[n]
	}
	tx.Queue(`SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)`, names, values)
}

// queueFence appends the fence: the run is not superseded, c's lock
// connection holds the cron lock, and this transaction takes it in shared
// mode. The run's state is read without a lock: a run superseded just after
// the check commits one more batch, which the new run replaces in turn
// (concurrent replaces of one bucket wait for each other on the unique
// key, and the loser retries).
func (s *Store) queueFence(tx *pgx.Batch, runID int64, c Claimant) {
	held, shared := s.lock.HeldBy("$1"), "pg_try_advisory_xact_lock_shared($2)"
	switch s.fence {
	case FenceHeld:
		shared = "$2::bigint IS NOT NULL"
	case FenceNone:
		held, shared = "$1::int IS NOT NULL", "$2::bigint IS NOT NULL"
	}
	tx.Queue(s.q(`SELECT `+held+`, `+shared+`,
		(SELECT state = 'superseded' FROM _SCHEMA_.run WHERE id = $3)`), c.PID, int64(s.lock), runID).QueryRow(func(row pgx.Row) error {
		var held, shared, superseded bool
		if err := row.Scan(&held, &shared, &superseded); err != nil {
			return err
		}
		if superseded {
			return fmt.Errorf("run %d: %w", runID, ErrSuperseded)
		}
		if !held {
			return fmt.Errorf("cron lock %d: %w", int64(s.lock), ErrNotProtected)
		}
		if !shared {
			return fmt.Errorf("cron lock %d: %w", int64(s.lock), ErrLockContended)
		}
		return nil
	})
}

// queueDone appends the done marks of batch's slices, failing with
// ErrLostClaim unless every slice is still c's claim (same owner, same
// attempt, still running). The slices are found by primary key from the
// id array alone, and the attempts compared on the rows it returns: joined
// to an unnest of (id, attempt) pairs, the update's plan depends on the
// statistics of the running slices, which are never fresh (the slice
// table is analyzed when pieces are planned, with nothing running), and a
// nested loop over both lists took up to a second a batch at 1 500 slices.
// A slice returned at another attempt fails the transaction, which rolls
// its mark back with everything else.
func (s *Store) queueDone(tx *pgx.Batch, batch shard.Batch, c Claimant) {
	ids, attempts := claimKeys(batch)
	want := make(map[int64]int32, len(ids))
	for i, id := range ids {
		want[id] = attempts[i]
	}
	tx.Queue(s.q(`
		UPDATE _SCHEMA_.slice s
		SET state = 'done', finished_at = clock_timestamp(), lease_until = NULL, error = NULL
		WHERE s.run_id = $1 AND s.id = ANY ($3::bigint[]) AND s.owner = $2 AND s.state = 'running'
		RETURNING s.id, s.attempts`), batch.Slices[0].RunID, c.Owner, ids).Query(func(rows pgx.Rows) error {
		marked := 0
		for rows.Next() {
			var id int64
			var attempt int32
			if err := rows.Scan(&id, &attempt); err != nil {
				return err
			}
			if a, ok := want[id]; !ok || a != attempt {
				return ErrLostClaim
			}
			marked++
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if marked != len(ids) {
			return ErrLostClaim
		}
		return nil
	})
}

// claimKeys are the fencing tokens of a batch's slices: their ids and the
// attempt each was claimed at.
func claimKeys(batch shard.Batch) (ids []int64, attempts []int32) {
	ids, attempts = make([]int64, len(batch.Slices)), make([]int32, len(batch.Slices))
	for i, sl := range batch.Slices {
		ids[i], attempts[i] = sl.ID, int32(sl.Attempt)
	}
	return ids, attempts
}

// Verdict is what a slice's work found: done, or to be tried again later.
type Verdict struct {
	// Done: the slice's work is complete and it is marked done.
	Done bool
	// Otherwise what the work changed commits all the same, and the slice
	// goes back to pending, claimed again after a pause: rows it must
	// change were locked by other sessions. Progress says that this pass
	// changed rows; MaxStalls passes in a row without progress fail the
	// slice with Why.
	Progress  bool
	Why       string
	MaxStalls int
}

// ErrStalled is the cause stored with a slice whose passes made no
// progress MaxStalls times in a row.
var ErrStalled = errors.New("no progress")

// RunFenced runs one slice's work as the fenced transaction that Fenced
// builds, for work that needs the results of its own statements (a
// statement repeated until it changes no row): BEGIN, the settings and the
// fence in one round trip, then work, then the slice's mark as v says. It
// reports whether the slice was failed by the stall guard.
func (s *Store) RunFenced(ctx context.Context, sl shard.Slice, c Claimant, settings map[string]string, work func(pgx.Tx) (Verdict, error)) (stalled bool, err error) {
	batch, err := shard.NewBatch([]shard.Slice{sl})
	if err != nil {
		return false, err
	}
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var head pgx.Batch
		queueSettings(&head, settings)
		s.queueFence(&head, sl.RunID, c)
		if err := tx.SendBatch(ctx, &head).Close(); err != nil {
			return err
		}
		v, err := work(tx)
		if err != nil {
			return err
		}
		var tail pgx.Batch
		if v.Done {
			s.queueDone(&tail, batch, c)
			return tx.SendBatch(ctx, &tail).Close()
		}
		stalled, err = s.requeue(ctx, tx, sl, c, v)
		return err
	})
	return stalled, err
}

// requeue hands a slice whose rows were partly locked back as pending,
// to be claimed again after a pause that doubles with each pass without
// progress (1 s, 2 s, … 32 s), or fails it once MaxStalls such passes
// came in a row.
func (s *Store) requeue(ctx context.Context, tx pgx.Tx, sl shard.Slice, c Claimant, v Verdict) (bool, error) {
	var state RunState
	err := tx.QueryRow(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET stalls = CASE WHEN $5 THEN 0 ELSE stalls + 1 END,
		    state = CASE WHEN NOT $5 AND stalls + 1 >= $6 THEN 'failed' ELSE 'pending' END,
		    retry_at = now() + least(power(2, CASE WHEN $5 THEN 0 ELSE stalls END), 32) * interval '1 second',
		    error = CASE WHEN NOT $5 AND stalls + 1 >= $6 THEN format('%s passes in a row made no progress: %s', stalls + 1, $7::text) ELSE $7 END,
		    cause = CASE WHEN NOT $5 AND stalls + 1 >= $6 THEN $8 END,
		    finished_at = CASE WHEN NOT $5 AND stalls + 1 >= $6 THEN now() END,
		    owner = NULL, owner_pid = NULL, lease_until = NULL
		WHERE run_id = $1 AND id = $2 AND owner = $3 AND attempts = $4 AND state = 'running'
		RETURNING state`), sl.RunID, sl.ID, c.Owner, sl.Attempt, v.Progress, max(v.MaxStalls, 1), v.Why,
		ErrStalled.Error()+": "+v.Why).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, ErrLostClaim
	}
	return state == StateFailed, err
}
