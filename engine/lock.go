package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/cronlock"
	"github.com/shardfill/shardfill/job"
)

// cronLock holds the cron job's advisory lock in shared mode on a connection
// of its own, for as long as the process works on a run.
//
// The lock is transaction-level, held by a transaction that the lock
// connection opens first and never commits: ending the transaction (or the
// connection) is the only way it is given up. That makes it safe behind
// any pooler. A transaction pins its server connection even under
// PgBouncer's transaction pooling, so the lock lives exactly as long as
// this process's connection, is never left behind on a pooled server
// backend after the process exits, and giving it up (a ROLLBACK of our own
// transaction) can never release another client's lock, as
// pg_advisory_unlock_all() on a pooled backend did. The transaction takes
// no snapshot between statements and writes nothing, so it holds back
// neither vacuum nor anything else; it shows in pg_stat_activity as idle in
// transaction for the whole run.
//
// A yield (yield.go) hands the lock over to a fresh connection, which then
// takes the old one's place.
type cronLock struct {
	key  int64           // the job's lock key
	spec job.Lock        // how it is held
	cfg  *pgx.ConnConfig // how to open a fresh lock connection
	log  *slog.Logger
	// join, when set, is taken on every lock connection before the cron
	// lock (the checkpoint schema's membership lock, see checkpoint.Join).
	join func(ctx context.Context, conn *pgx.Conn) error

	// conn is used by the watcher alone (and by Close once the watcher is
	// gone); a yield replaces it.
	conn *pgx.Conn

	// session is held shared by every claim and slice transaction, and
	// exclusively by a yield while it moves the lock to a new connection:
	// a fence checks pid, which is only valid once the new connection's
	// lock is granted.
	session sync.RWMutex
	pid     int // backend pid of conn, recorded with claims so others can tell we live

	// named is the backend that holds this process's lock or queues for
	// it, as the registry names it: during a yield it moves to the new
	// connection as soon as its request is queued (step 5), where pid
	// waits for the grant. It is read apart from session, which a yield
	// holds for as long as the session it yields to keeps the lock: the
	// process must stay visible and steerable meanwhile. nameMu keeps a
	// registry write from putting back the backend a yield just moved
	// away from.
	nameMu   sync.Mutex
	named    int
	yielding atomic.Pointer[waiter] // the session a yield in progress serves; nil otherwise

	yieldMu  sync.Mutex
	yieldEnd chan struct{} // closed when the current (or next) yield ends
}

// acquireLock opens the dedicated connection and takes the shared lock
// there (after join's lock, if any). If someone holds it exclusively (a cron
// tick, or the serial backfill command started by mistake) it says who and
// waits.
//
// A job whose lock is exclusive takes it exclusively instead, and a second
// process waits the same way.
func acquireLock(ctx context.Context, db *pgxpool.Pool, spec job.Lock, join func(context.Context, *pgx.Conn) error, log *slog.Logger) (*cronLock, error) {
	key := spec.Key
	l := &cronLock{key: key, spec: spec, cfg: db.Config().ConnConfig.Copy(), log: log, join: join, yieldEnd: make(chan struct{})}
	conn, pid, err := l.open(ctx)
	if err != nil {
		return nil, err
	}
	l.conn, l.pid, l.named = conn, pid, pid
	try, take, mode := `SELECT pg_try_advisory_xact_lock_shared($1)`, `SELECT pg_advisory_xact_lock_shared($1)`, "exclusively"
	if spec.Exclusive {
		try, take, mode = `SELECT pg_try_advisory_xact_lock($1)`, `SELECT pg_advisory_xact_lock($1)`, "(another process of this run, or a session)"
	}
	var got bool
	if err := conn.QueryRow(ctx, try, key).Scan(&got); err != nil {
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
		  AND l.granted AND a.pid <> pg_backend_pid() AND a.datname = current_database()`).Scan(&holder)
	log.Warn("waiting for the job's lock: another session holds it "+mode+" (the cron tick, or a serial backfill command?)",
		"lock", key, "holder", holder)
	if _, err := conn.Exec(ctx, take, key); err != nil {
		l.Close()
		return nil, fmt.Errorf("take cron lock %d: %w", key, err)
	}
	return l, nil
}

// open connects afresh and begins the transaction that will hold the locks,
// with no timeout of the role or database able to end it (the watcher's
// statements are its only activity), then takes join's lock in it.
func (l *cronLock) open(ctx context.Context) (*pgx.Conn, int, error) {
	conn, err := pgx.ConnectConfig(ctx, l.cfg.Copy())
	if err != nil {
		return nil, 0, fmt.Errorf("open lock connection: %w", err)
	}
	var pid int
	_, err = conn.Exec(ctx, `BEGIN`)
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT pg_backend_pid(),
			set_config('idle_in_transaction_session_timeout', '0', true),
			set_config('statement_timeout', '0', true), set_config('lock_timeout', '0', true)`).Scan(&pid, nil, nil, nil)
	}
	if err == nil && l.join != nil {
		err = l.join(ctx, conn)
	}
	if err != nil {
		_ = conn.Close(context.Background())
		return nil, 0, fmt.Errorf("open lock connection: %w", err)
	}
	return conn, pid, nil
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
		if w == nil || !l.spec.Yield {
			continue // a lock that is not yielded is only watched
		}
		if err := l.yield(run, *w, repoint); err != nil && run.Err() == nil {
			cancel(fmt.Errorf("%w (cron lock %d): %w", ErrLockLost, l.key, err))
			return
		}
	}
}

// watching runs watch in the background until the returned stop is called;
// stop returns once the watcher is gone, so the lock connection is free to
// close.
func (l *cronLock) watching(ctx context.Context, cancel context.CancelCauseFunc, run context.Context, repoint repointFunc) (stop func()) {
	wctx, end := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.watch(wctx, cancel, run, repoint)
	}()
	return func() {
		end()
		<-done
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

// Close gives the lock up and ends the lock connection.
func (l *cronLock) Close() { endLockConn(l.conn) }

// endLockConn rolls back a lock connection's transaction, which releases
// its locks at once (closing alone releases them only once the server has
// noticed the disconnect, a moment after this process moved on), and
// closes it.
func endLockConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, `ROLLBACK`)
	_ = conn.Close(ctx)
}
