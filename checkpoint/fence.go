package checkpoint

import (
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
	if len(settings) > 0 {
		names := slices.Sorted(maps.Keys(settings))
		values := make([]string, len(names))
		for i, n := range names {
			values[i] = settings[n]
		}
		tx.Queue(`SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)`, names, values)
	}
	s.queueFence(&tx, batch.Slices[0].RunID, c)
	work(&tx)
	s.queueDone(&tx, batch, c)
	return &tx
}

// queueFence appends the fence: the run is not superseded, c's lock
// connection holds the cron lock, and this transaction takes it in shared
// mode. The run's state is read without a lock: a run superseded just after
// the check commits one more batch, which the new run replaces in turn
// (concurrent replaces of one bucket wait for each other on the unique
// key, and the loser retries).
func (s *Store) queueFence(tx *pgx.Batch, runID int64, c Claimant) {
	tx.Queue(s.q(`SELECT `+s.lock.HeldBy("$1")+`, pg_try_advisory_xact_lock_shared($2),
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
