package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/cronlock"
)

// cronLock holds the cron job's advisory lock in shared mode on a connection
// of its own. The connection never goes back to a pool: closing it is the
// only way the lock is given up, so no exit path can leak it to a pooled
// session that lives on. A yield (yield.go) hands the lock over to a fresh
// connection, which then takes the old one's place.
type cronLock struct {
	key int64           // the job's cron lock key
	cfg *pgx.ConnConfig // how to open a fresh lock connection
	log *slog.Logger

	// conn is used by the watcher alone (and by Close once the watcher is
	// gone); a yield replaces it.
	conn *pgx.Conn

	// session is held shared by every claim and slice transaction, and
	// exclusively by a yield while it moves the lock to a new connection:
	// a fence checks pid, which is only valid once the new connection's
	// lock is granted.
	session sync.RWMutex
	pid     int // backend pid of conn, recorded with claims so others can tell we live

	yieldMu  sync.Mutex
	yieldEnd chan struct{} // closed when the current (or next) yield ends
}

// acquireLock opens the dedicated connection and takes the shared lock. If
// someone holds it exclusively (a cron tick, or the serial backfill command
// started by mistake) it says who and waits.
func acquireLock(ctx context.Context, db *pgxpool.Pool, key int64, log *slog.Logger) (*cronLock, error) {
	conn, err := pgx.ConnectConfig(ctx, db.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("open lock connection: %w", err)
	}
	l := &cronLock{conn: conn, key: key, cfg: db.Config().ConnConfig.Copy(), log: log, yieldEnd: make(chan struct{})}
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&l.pid); err != nil {
		l.Close()
		return nil, fmt.Errorf("open lock connection: %w", err)
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock_shared($1)`, key).Scan(&got); err != nil {
		l.Close()
		return nil, fmt.Errorf("take cron lock %d: %w", key, err)
	}
	if got {
		return l, nil
	}
	var holder string
	_ = conn.QueryRow(ctx, `
		SELECT coalesce(string_agg(format('pid %s (%s, %s)', a.pid, coalesce(nullif(a.application_name, ''), 'no application_name'),
		                                  left(a.query, 60)), '; '), 'unknown')
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE `+cronlock.Key(key).Is("l")+`
		  AND l.granted AND l.mode = 'ExclusiveLock' AND a.datname = current_database()`).Scan(&holder)
	log.Warn("waiting for the cron lock: another session holds it exclusively (the cron tick, or the serial backfill command?)",
		"lock", key, "holder", holder)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock_shared($1)`, key); err != nil {
		l.Close()
		return nil, fmt.Errorf("take cron lock %d: %w", key, err)
	}
	return l, nil
}

// watch checks the lock connection every second until ctx ends. If it
// died the work is cancelled with ErrLockLost, since the cron job could now
// run alongside. If a session waits for the lock exclusively (the
// application's workspace delete, a serial backfill) the lock is yielded
// to it (yield.go). A yield in progress when ctx ends is seen through
// unless run, the run's own context, ends too: the watermark stamp after
// the work needs the lock.
func (l *cronLock) watch(ctx context.Context, cancel context.CancelCauseFunc, run context.Context, repoint repointFunc) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w, err := l.waiter()
		if err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("%w (cron lock %d): %w", ErrLockLost, l.key, err))
			return
		}
		if w == nil {
			continue
		}
		if err := l.yield(run, *w, repoint); err != nil && run.Err() == nil {
			cancel(fmt.Errorf("%w (cron lock %d): %w", ErrLockLost, l.key, err))
			return
		}
	}
}

// lockQuery runs a query on the lock connection with a context of its own:
// pgx closes a connection whose context is cancelled mid-query, and this
// one carries the lock the watermark stamp still needs when the workers
// finish.
func (l *cronLock) lockQuery(sql string, args []any, dest ...any) error {
	qctx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	return l.conn.QueryRow(qctx, sql, args...).Scan(dest...)
}

// Close ends the lock connection, which releases the lock.
func (l *cronLock) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Unlock first: closing alone releases the lock only once the server
	// has noticed the disconnect, a moment after this process moved on.
	_, _ = l.conn.Exec(ctx, `SELECT pg_advisory_unlock_all()`)
	_ = l.conn.Close(ctx)
}
