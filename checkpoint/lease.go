package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shardfill/shardfill/shard"
)

// Fail records a slice's permanent error. It does nothing if the claim was
// lost meanwhile: the slice belongs to someone else now. The error's
// unwrapped cause (without the slice it names) is stored apart, so that
// status can group failures by cause.
func (s *Store) Fail(ctx context.Context, sl shard.Slice, owner string, failure error) error {
	cause := failure
	if u := errors.Unwrap(failure); u != nil {
		cause = u
	}
	_, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET state = 'failed', error = $5, cause = $6, finished_at = now(), lease_until = NULL
		WHERE run_id = $1 AND id = $2 AND owner = $3 AND attempts = $4 AND state = 'running'`),
		sl.RunID, sl.ID, owner, sl.Attempt, failure.Error(), cause.Error())
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

// ReleaseBatch hands back the slices of batch that are still this claim's
// (owner and attempt unchanged) after part of the batch was taken over:
// without it they would stay claimed by a live process that has dropped
// them, and be renewed forever.
func (s *Store) ReleaseBatch(ctx context.Context, batch shard.Batch, owner string) error {
	ids, attempts := claimKeys(batch)
	_, err := s.db.Exec(ctx, s.q(`
		UPDATE _SCHEMA_.slice
		SET state = 'pending', owner = NULL, owner_pid = NULL, lease_until = NULL
		WHERE run_id = $1 AND owner = $2 AND state = 'running'
		  AND (id, attempts) IN (SELECT * FROM unnest($3::bigint[], $4::integer[]))`),
		batch.Slices[0].RunID, owner, ids, attempts)
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

// Repoint records pid as the lock connection of owner's running slices of
// run: a process that yields the cron lock moves it to a new connection,
// and its slices must not look abandoned under the old one's pid, nor the
// process itself gone from the registry (status, metrics).
func (s *Store) Repoint(ctx context.Context, runID int64, owner string, pid int) error {
	_, err := s.db.Exec(ctx, s.q(`
		WITH registry AS (
		    UPDATE _SCHEMA_.process SET lock_pid = $3 WHERE run_id = $1 AND owner = $2 AND state <> 'exited'
		)
		UPDATE _SCHEMA_.slice SET owner_pid = $3
		WHERE run_id = $1 AND owner = $2 AND state = 'running'`), runID, owner, pid)
	if err != nil {
		return fmt.Errorf("re-point claims to lock connection %d: %w", pid, err)
	}
	return nil
}

// WorkElsewhere reports whether run has slices that are neither done nor
// failed and not held by owner: pending ones, or ones other processes are
// working on (which may yet be abandoned to owner), or ones still to be
// planned (planning is not done); ErrSuperseded when the run was replaced
// by a newer one. Cheap on any run size: the slice conditions are
// partial-index lookups.
func (s *Store) WorkElsewhere(ctx context.Context, runID int64, owner string) (bool, error) {
	var any, superseded bool
	err := s.db.QueryRow(ctx, s.q(`
		SELECT EXISTS (SELECT 1 FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'pending')
		    OR EXISTS (SELECT 1 FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'running' AND owner <> $2)
		    OR (SELECT NOT planning_done FROM _SCHEMA_.run WHERE id = $1),
		       (SELECT state = 'superseded' FROM _SCHEMA_.run WHERE id = $1)`),
		runID, owner).Scan(&any, &superseded)
	if err == nil && superseded {
		return false, fmt.Errorf("run %d: %w", runID, ErrSuperseded)
	}
	return any, err
}

// OthersActive reports whether a process other than owner still works on
// run: it claims a slice, or it is registered (a paused process claims
// nothing), and its lock connection is still alive (holds the cron lock,
// or waits for it while yielding).
func (s *Store) OthersActive(ctx context.Context, runID int64, owner string) (bool, error) {
	var active bool
	err := s.db.QueryRow(ctx, s.q(`
		SELECT EXISTS (SELECT 1 FROM _SCHEMA_.slice s
		       WHERE s.run_id = $1 AND s.state = 'running' AND s.owner <> $2
		         AND `+s.lock.HeldOrAwaitedBy("s.owner_pid")+`)
		    OR EXISTS (SELECT 1 FROM _SCHEMA_.process p
		       WHERE p.run_id = $1 AND p.owner <> $2 AND p.state <> 'exited'
		         AND `+s.lock.HeldOrAwaitedBy("p.lock_pid")+`)`), runID, owner).Scan(&active)
	return active, err
}
