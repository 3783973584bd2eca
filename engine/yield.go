package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/cronlock"
)

// Yielding the cron lock.
//
// The application takes the cron lock exclusively for short work of its
// own (its workspace delete: pg_advisory_xact_lock under a 10 s
// lock_timeout); a serial backfill command takes it for its whole run.
// Holding the lock shared for a whole run would make every such session
// time out, and while one waits our own fences fail (the shared try-lock
// queues behind the waiter). So each process steps aside:
//
//  1. The watcher sees an exclusive waiter in pg_locks (within a second).
//  2. Claims and slice transactions stop: the yield takes session
//     exclusively once those in flight have ended (fences that meet the
//     waiter fail with checkpoint.ErrLockContended and wait, uncounted).
//  3. A fresh connection asks for the lock in shared mode, blocking. Never
//     the old connection: a second request of the holding session is
//     granted at once and only raises its hold count.
//  4. The old connection watches pg_locks until that request is there,
//     queued behind the waiter (or granted, if the waiter is gone).
//  5. The process's running slices, and its registry row, are re-pointed
//     to the new backend, so other processes do not take them for
//     abandoned and status still lists the process. From here on its
//     acknowledgements name the new backend (they never wait for the
//     yield: the process stays steerable throughout).
//  6. Only now is the old lock released and its connection closed.
//  7. The waiter gets the lock, does its work and ends; PostgreSQL grants
//     the queued shared requests in the same step. If the waiter gives up
//     (lock_timeout) they are granted at that moment.
//  8. The new connection is the lock connection; claims and fences resume
//     with its pid.
//
// The cron tick (pg_try_advisory_xact_lock) cannot slip in: until step 6
// our old lock is held; from step 4 on our new request is queued, and a
// lock with waiters is granted to them in queue order before a newcomer,
// so from the instant the waiter takes the lock to the instant our queued
// request is granted the lock is always held by someone. Releasing before
// the new request is visibly queued leaves a gap (measured: a try-lock
// loop got in tens of thousands of times; with this order, never in about
// three million tries, also with three processes yielding together).

// repointFunc records pid as the backend of this process's lock connection
// on the slices it has claimed and in its registry row.
type repointFunc func(ctx context.Context, pid int) error

// waiter is a session waiting for the cron lock exclusively.
type waiter struct {
	pid int
	app string
}

// queuedPoll is how often a yield looks for its new request in pg_locks,
// and queuedWithin how long it waits for it there before it gives up
// (keeping the old lock).
const (
	queuedPoll   = 2 * time.Millisecond
	queuedWithin = 10 * time.Second
)

// contendedPause is how long a slice whose fence met an exclusive waiter
// waits for the yield it causes before it tries again.
const contendedPause = 2 * time.Second

// waiter returns a session of this database that waits for the cron lock
// exclusively, or nil. It runs on the idle lock connection, which also
// proves that connection alive.
func (l *cronLock) waiter() (*waiter, error) {
	var w waiter
	err := l.lockQuery(`
		SELECT l.pid, coalesce(a.application_name, '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE `+cronlock.Key(l.key).Is("l")+`
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.mode = 'ExclusiveLock' AND NOT l.granted
		ORDER BY l.pid LIMIT 1`, nil, &w.pid, &w.app)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &w, nil
}

// enter waits out a yield in progress and returns the pid a claim records
// and a fence checks; call leave once the claim or the slice transaction
// has ended.
func (l *cronLock) enter() (pid int, leave func()) {
	l.session.RLock()
	return l.pid, l.session.RUnlock
}

// backend is the pid of the current lock connection's backend, after any
// yield in progress.
func (l *cronLock) backend() int {
	pid, leave := l.enter()
	leave()
	return pid
}

// naming calls write with the backend the registry names as this
// process's lock holder (see named); a yield does not move it meanwhile.
// It never waits for a yield: only for a registry write or a re-point.
func (l *cronLock) naming(write func(pid int) error) error {
	l.nameMu.Lock()
	defer l.nameMu.Unlock()
	return write(l.named)
}

// yieldingTo is the session a yield in progress serves, or nil.
func (l *cronLock) yieldingTo() *waiter { return l.yielding.Load() }

// enter is the workers' side of lock.enter: who claims or fences now.
func (w *workers) enter() (checkpoint.Claimant, func()) {
	c := w.claimant
	pid, leave := w.lock.enter()
	c.PID = pid
	return c, leave
}

// errHeldMeanwhile is a claim given up because the gate was held (a
// pause, a throttle) while the claim waited out a yield: a pause applied
// during a yield holds from the instant work resumes.
var errHeldMeanwhile = errors.New("held while waiting out a yield")

// contended waits after a fence met an exclusive waiter: until the yield it
// causes has ended, or contendedPause if none does (the waiter may be gone
// already). Lock contention never fails a slice.
func (l *cronLock) contended(ctx context.Context) error {
	l.yieldMu.Lock()
	end := l.yieldEnd
	l.yieldMu.Unlock()
	t := time.NewTimer(contendedPause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-end:
	case <-t.C:
	}
	return nil
}

// yielded wakes the slices waiting in contended.
func (l *cronLock) yielded() {
	l.yieldMu.Lock()
	defer l.yieldMu.Unlock()
	close(l.yieldEnd)
	l.yieldEnd = make(chan struct{})
}

// yield hands the lock over to a fresh connection with a waiter served in
// between (see the steps above). It returns an error only when the lock is
// lost; a yield that cannot start keeps the old lock and says so. ctx is
// the run's: cancelling it cuts the wait for the new lock short.
func (l *cronLock) yield(ctx context.Context, to waiter, repoint repointFunc) error {
	start := time.Now()
	l.log.Info("yielding the cron lock", "lock", l.key, "to_pid", to.pid, "to_application_name", to.app)
	l.yielding.Store(&to)
	l.session.Lock() // step 2
	defer func() {
		l.session.Unlock()
		l.yielding.Store(nil)
		l.yielded()
	}()
	req, err := l.request(ctx) // step 3
	if err != nil {
		l.log.Warn("cannot yield the cron lock; keeping it", "lock", l.key, "err", err)
		return nil
	}
	if err := l.awaitQueued(req); err != nil { // step 4
		req.abort()
		if errors.Is(err, errLockConn) {
			return err
		}
		l.log.Warn("cannot yield the cron lock; keeping it", "lock", l.key, "err", err)
		return nil
	}
	rctx, done := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err = l.naming(func(int) error { // step 5
		l.named = req.pid // the registry's too, from here on
		return repoint(rctx, req.pid)
	})
	done()
	if err != nil {
		l.log.Warn("could not re-point claimed slices to the new lock connection; others may take them over", "err", err)
	}
	l.release() // step 6
	l.conn = req.conn
	if err := req.wait(); err != nil { // step 7
		return fmt.Errorf("take the cron lock again on a new connection: %w", err)
	}
	l.pid = req.pid // step 8
	l.log.Info("yield over; working again", "lock", l.key, "to_pid", to.pid, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// lockRequest is a blocking shared request for the cron lock on a fresh
// connection.
type lockRequest struct {
	conn     *pgx.Conn
	pid      int
	cancel   context.CancelFunc // ends the request, and with it the connection
	done     chan error
	finished bool
	err      error
}

// request opens a fresh lock connection (its transaction begun, join's
// lock taken) and asks for the cron lock on it in the background.
// Cancelling a queued request closes its connection (pgx), so a cancelled
// request leaves nothing behind.
func (l *cronLock) request(ctx context.Context) (*lockRequest, error) {
	cctx, done := context.WithTimeout(ctx, 10*time.Second)
	conn, pid, err := l.open(cctx)
	done()
	if err != nil {
		return nil, fmt.Errorf("open a new lock connection: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	req := &lockRequest{conn: conn, pid: pid, cancel: cancel, done: make(chan error, 1)}
	go func() {
		_, err := conn.Exec(rctx, `SELECT pg_advisory_xact_lock_shared($1)`, l.key)
		req.done <- err
	}()
	return req, nil
}

// wait returns once the request was granted (nil) or failed.
func (r *lockRequest) wait() error {
	if !r.finished {
		r.err, r.finished = <-r.done, true
	}
	if r.err != nil {
		r.cancel()
		_ = r.conn.Close(context.Background())
	}
	return r.err
}

// abort ends the request and its connection, granted or not.
func (r *lockRequest) abort() {
	r.cancel()
	if !r.finished {
		r.err, r.finished = <-r.done, true
	}
	_ = r.conn.Close(context.Background())
}

// errLockConn marks a failure of the old lock connection while yielding:
// the lock is lost with it.
var errLockConn = errors.New("the lock connection failed")

// awaitQueued polls pg_locks from the old (idle) lock connection until the
// new request is there, queued or already granted.
func (l *cronLock) awaitQueued(req *lockRequest) error {
	deadline := time.Now().Add(queuedWithin)
	for {
		select {
		case err := <-req.done: // granted at once: the waiter is gone
			req.err, req.finished = err, true
			return err
		default:
		}
		var granted bool
		err := l.lockQuery(`SELECT l.granted FROM pg_locks l WHERE `+cronlock.Key(l.key).Is("l")+` AND l.pid = $1 AND l.mode = 'ShareLock'`,
			[]any{req.pid}, &granted)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("%w: %w", errLockConn, err)
		case time.Now().After(deadline):
			return fmt.Errorf("the new lock request did not show in pg_locks within %s", queuedWithin)
		}
		time.Sleep(queuedPoll)
	}
}

// release gives up the old connection's lock and closes it.
func (l *cronLock) release() { endLockConn(l.conn) }
