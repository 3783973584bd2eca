package throttle_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/throttle"
)

// A standby whose replay is paused while the primary writes: replay_lag
// alone goes stale, the stalled replay position turns the signal red
// after D and to hold after 2 D; resumed, it is green again.
func TestReplicaLagPausedReplay(t *testing.T) {
	t.Parallel()
	// Standbys report their replay position every
	// wal_receiver_status_interval (10 s by default): the test's D of 2 s
	// needs fresher reports (the standby inherits the setting).
	primary := pgtest.PrivateServerWith(t, pgserver.Options{Settings: map[string]string{"wal_receiver_status_interval": "1s"}})
	st := pgtest.Standby(t, primary, pgserver.StandbyOptions{})
	p := testenv.Conn(t, primary.AdminURL())
	s := testenv.Conn(t, st.AdminURL())
	const d = 2 * time.Second
	m := monitor(t, throttle.Config{MaxReplicaLag: d})

	exec(t, p, `CREATE TABLE w (x int)`)
	if r := poll(t, m, p); r.State != throttle.Green || r.Unreadable {
		t.Fatalf("streaming standby: %+v, want green", r)
	}

	exec(t, s, `SELECT pg_wal_replay_pause()`)
	exec(t, p, `SET synchronous_commit = on`)
	exec(t, p, `INSERT INTO w SELECT generate_series(1, 1000)`)
	written := time.Now()
	red, before := pollUntil(t, m, p, d+5*time.Second, "red", func(r throttle.Reading) bool { return r.State != throttle.Green })
	requireState(t, red, throttle.Red)
	if since := time.Since(written); since < d-200*time.Millisecond {
		t.Fatalf("red %v after the write, before D = %v: %+v", since, d, red)
	}
	// PostgreSQL extrapolates replay_lag for a stuck replay while the
	// standby keeps replying; either measure may be the larger.
	if !strings.Contains(red.Reason, "on standby walreceiver") || !strings.Contains(red.Reason, "> 2s") {
		t.Fatalf("reason %q does not name the standby and the limit", red.Reason)
	}
	t.Logf("red after %v (%d green polls): %s", time.Since(written).Round(time.Millisecond), len(before), red.Reason)
	hold, _ := pollUntil(t, m, p, d+5*time.Second, "hold", state(throttle.Hold))
	if hold.Value <= 2*d.Seconds() {
		t.Fatalf("hold at %vs, not over 2 D", hold.Value)
	}

	exec(t, s, `SELECT pg_wal_replay_resume()`)
	pollUntil(t, m, p, 15*time.Second, "green after resume", state(throttle.Green))
}

// A physical slot nobody consumes: red over the limit, hold over twice
// it, green once dropped.
func TestSlotWAL(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServer(t)
	c := testenv.Conn(t, srv.AdminURL())
	exec(t, c, `SELECT pg_create_physical_replication_slot('forgotten', true)`)
	const limit = 1 << 20
	m := monitor(t, throttle.Config{MaxSlotWAL: limit})
	requireState(t, poll(t, m, c), throttle.Green)

	exec(t, c, `CREATE TABLE w AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 30000) g`)
	hold := poll(t, m, c)
	requireState(t, hold, throttle.Hold)
	if hold.Value <= 2*limit || !strings.Contains(hold.Reason, "slot forgotten (physical, inactive) retains") || !strings.Contains(hold.Reason, "> 2 × 1MB") {
		t.Fatalf("hold reading %+v: want over 2MB, naming the slot and the limit", hold)
	}
	// Between the limit and twice it: red. The server writes WAL of its
	// own (a checkpoint record, say) between two readings, so the limit is
	// set from the reading just before, and a reading that left the band
	// [limit, 2 × limit] meanwhile is taken again.
	for attempt := 1; ; attempt++ {
		limit := int64(poll(t, m, c).Value * 0.8)
		red := poll(t, monitor(t, throttle.Config{MaxSlotWAL: limit}), c)
		if red.Value > float64(limit) && red.Value <= 2*float64(limit) {
			requireState(t, red, throttle.Red)
			break
		}
		if attempt == 5 {
			t.Fatalf("the retained WAL never stayed between a limit and twice it: last %+v against %d", red, limit)
		}
	}

	exec(t, c, `SELECT pg_drop_replication_slot('forgotten')`)
	requireState(t, poll(t, m, c), throttle.Green)
}

// VACUUM of a table shardfill writes holds until it ends; a vacuum of
// another table does not.
func TestVacuumHolds(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t, nil)
	c := testenv.Conn(t, dbURL)
	for _, table := range []string{"task_usage_hourly", "task_usage"} {
		exec(t, c, fmt.Sprintf(`ALTER TABLE %s SET (autovacuum_enabled = false)`, table))
	}
	exec(t, c, `INSERT INTO task_usage_hourly (bucket_hour, workspace_id, runtime_id, agent_id, provider, model)
		SELECT '2026-01-01'::timestamptz + g * interval '1 hour', gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'p', 'm'
		FROM generate_series(1, 100) g`)
	exec(t, c, `DELETE FROM task_usage_hourly`)
	exec(t, c, `CREATE TABLE other (x int) WITH (autovacuum_enabled = false)`)
	exec(t, c, `INSERT INTO other SELECT generate_series(1, 20000)`)
	exec(t, c, `DELETE FROM other`)

	m := monitor(t, throttle.Config{HoldOnVacuum: throttle.VacuumAll, Tables: []string{"task_usage_hourly"}})
	requireState(t, poll(t, m, c), throttle.Green)

	// slowVacuum vacuums table at the slowest cost-based pace, on its own
	// connection, and reports when it ends.
	slowVacuum := func(table string) (pid uint32, done <-chan error) {
		v := testenv.Conn(t, dbURL)
		exec(t, v, `SET vacuum_cost_delay = 100; SET vacuum_cost_limit = 1`)
		ch := make(chan error, 1)
		go func() {
			_, err := v.Exec(context.Background(), "VACUUM "+table)
			ch <- err
		}()
		return v.PgConn().PID(), ch
	}
	waitProgress := func(pid uint32) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var n int
			if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_progress_vacuum WHERE pid = $1`, pid).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("vacuum pid %d never shows in pg_stat_progress_vacuum", pid)
			}
		}
	}

	otherPid, otherDone := slowVacuum("other")
	waitProgress(otherPid)
	requireState(t, poll(t, m, c), throttle.Green)
	exec(t, c, `SELECT pg_cancel_backend($1)`, otherPid)
	<-otherDone

	pid, done := slowVacuum("task_usage_hourly")
	waitProgress(pid)
	hold := poll(t, m, c)
	requireState(t, hold, throttle.Hold)
	if !strings.Contains(hold.Reason, "VACUUM of task_usage_hourly in progress") {
		t.Fatalf("reason %q does not name the vacuum", hold.Reason)
	}
	polls := 1
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("VACUUM: %v", err)
			}
			requireState(t, poll(t, m, c), throttle.Green)
			t.Logf("held over %d polls until the VACUUM ended", polls)
			return
		case <-time.After(200 * time.Millisecond):
			if r := poll(t, m, c); r.State != throttle.Hold {
				// The view can drop the vacuum a moment before Exec returns.
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
					requireState(t, r, throttle.Green)
					return
				case <-time.After(time.Second):
					t.Fatalf("not held while the VACUUM runs: %+v", r)
				}
			}
			polls++
		}
	}
}

// A session waiting on a row lock of a shardfill backend: red past the
// limit, hold past twice it, green once the lock is released. Waits on
// other holders' locks do not count.
func TestBlocked(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t, nil)
	prefix := fmt.Sprintf("shardfill-blocked-test-%d", os.Getpid())
	const limit = time.Second
	m := monitor(t, throttle.Config{MaxBlocked: limit, ApplicationName: prefix})
	c := testenv.Conn(t, dbURL)
	exec(t, c, `CREATE TABLE r (id int PRIMARY KEY, x int); INSERT INTO r VALUES (1, 0), (2, 0)`)

	// waitOn makes a fresh session update row id, and returns when it
	// waits (or fails the test).
	waitOn := func(id int) <-chan error {
		w := testenv.Conn(t, dbURL)
		ch := make(chan error, 1)
		go func() {
			_, err := w.Exec(context.Background(), `UPDATE r SET x = x + 1 WHERE id = $1`, id)
			ch <- err
		}()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var waiting bool
			if err := c.QueryRow(context.Background(), `SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $1`, w.PgConn().PID()).Scan(&waiting); err != nil {
				t.Fatal(err)
			}
			if waiting {
				return ch
			}
			if time.Now().After(deadline) {
				t.Fatal("the waiting session never waits")
			}
		}
	}

	// Not shardfill's lock: green however long.
	other := testenv.Conn(t, dbURL)
	exec(t, other, `BEGIN; UPDATE r SET x = 1 WHERE id = 2`)
	otherDone := waitOn(2)
	time.Sleep(limit + 500*time.Millisecond)
	requireState(t, poll(t, m, c), throttle.Green)
	exec(t, other, `ROLLBACK`)
	if err := <-otherDone; err != nil {
		t.Fatal(err)
	}

	holder := testenv.Conn(t, withParam(t, dbURL, "application_name", prefix+"-worker-1"))
	exec(t, holder, `BEGIN; UPDATE r SET x = 1 WHERE id = 1`)
	done := waitOn(1)
	waiting := time.Now()
	red, _ := pollUntil(t, m, c, limit+5*time.Second, "red", func(r throttle.Reading) bool { return r.State != throttle.Green })
	requireState(t, red, throttle.Red)
	if since := time.Since(waiting); since < limit-100*time.Millisecond {
		t.Fatalf("red after %v of waiting, before the limit %v", since, limit)
	}
	if want := fmt.Sprintf("held by shardfill's pid %d (%s-worker-1)", holder.PgConn().PID(), prefix); !strings.Contains(red.Reason, want) {
		t.Fatalf("reason %q does not contain %q", red.Reason, want)
	}
	pollUntil(t, m, c, limit+5*time.Second, "hold", state(throttle.Hold))

	exec(t, holder, `ROLLBACK`)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	requireState(t, poll(t, m, c), throttle.Green)
}

// The operator's query: a non-NULL result is red and is the reason; NULL
// (or no row) is green; an error, a timeout or an attempt to write is
// unreadable, so a hold.
func TestThrottleQuery(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t, nil)
	c := testenv.Conn(t, dbURL)
	exec(t, c, `CREATE TABLE flag (reason text); INSERT INTO flag VALUES (NULL)`)
	m := monitor(t, throttle.Config{ThrottleQuery: `SELECT reason FROM flag`})

	requireState(t, poll(t, m, c), throttle.Green)
	exec(t, c, `UPDATE flag SET reason = 'month-end close: go slow'`)
	r := poll(t, m, c)
	requireState(t, r, throttle.Red)
	if r.Reason != "throttle query: month-end close: go slow" {
		t.Fatalf("reason %q, want the query's text", r.Reason)
	}
	exec(t, c, `UPDATE flag SET reason = NULL`)
	requireState(t, poll(t, m, c), throttle.Green)
	exec(t, c, `DELETE FROM flag`)
	requireState(t, poll(t, m, c), throttle.Green) // no row: nothing to say

	for query, want := range map[string]string{
		`SELECT nosuchcolumn FROM flag`:                  "nosuchcolumn",
		`SELECT pg_sleep(5)::text`:                       "statement timeout",
		`INSERT INTO flag VALUES ('x') RETURNING reason`: "read-only transaction",
	} {
		m := monitor(t, throttle.Config{ThrottleQuery: query, ThrottleQueryTimeout: 200 * time.Millisecond})
		r := poll(t, m, c)
		if r.State != throttle.Hold || !r.Unreadable || !strings.Contains(r.Reason, want) {
			t.Errorf("%s: %+v, want an unreadable hold mentioning %q", query, r, want)
		}
	}
	var n int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM flag`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the throttle query wrote: %d rows, %v", n, err)
	}
}

// WAL the archiver cannot archive piles up as .ready files: red over the
// limit, hold over twice it. With archiving off the signal is green.
func TestArchiveBacklog(t *testing.T) {
	t.Parallel()
	t.Run("off", func(t *testing.T) {
		t.Parallel()
		// Even a role that may not list the archiver's directory: with
		// archiving off there is nothing to hide.
		dbURL := pgtest.NewDB(t)
		admin := testenv.Conn(t, dbURL)
		role := fmt.Sprintf("plain_archive_%d", os.Getpid())
		exec(t, admin, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'pw'`, role))
		t.Cleanup(func() { admin.Exec(context.Background(), `DROP ROLE `+role) })
		c := testenv.Conn(t, asUser(t, dbURL, role, "pw"))
		r := poll(t, monitor(t, throttle.Config{MaxArchiveBacklog: 1}), c)
		if r.State != throttle.Green || r.Unreadable {
			t.Fatalf("archive_mode off: %+v, want green", r)
		}
		c.Close(context.Background()) // before DROP ROLE
	})
	t.Run("failing", func(t *testing.T) {
		t.Parallel()
		srv := pgtest.PrivateServerWith(t, pgserver.Options{Settings: map[string]string{
			"archive_mode": "on", "archive_command": "false",
		}})
		c := testenv.Conn(t, srv.AdminURL())
		exec(t, c, `CREATE TABLE w (x int)`)
		const limit = 2
		m := monitor(t, throttle.Config{MaxArchiveBacklog: limit})
		switchWAL := func(n int) {
			for i := 0; i < n; i++ {
				exec(t, c, `INSERT INTO w VALUES (1)`)
				exec(t, c, `SELECT pg_switch_wal()`)
			}
		}
		start := poll(t, m, c).Value
		switchWAL(limit + 1 - int(start))
		red, _ := pollUntil(t, m, c, 10*time.Second, "red", func(r throttle.Reading) bool { return r.State != throttle.Green })
		requireState(t, red, throttle.Red)
		if !strings.Contains(red.Reason, "WAL segments wait for the archiver") || !strings.Contains(red.Reason, "archive_command is failing") {
			t.Fatalf("reason %q", red.Reason)
		}
		switchWAL(limit + 1)
		pollUntil(t, m, c, 10*time.Second, "hold", state(throttle.Hold))
	})
}

// A role without pg_monitor: no standby, nothing to hide, green, though
// Preflight refuses the flag set explicitly; with a standby it sees WAL
// senders but not their positions, so the signal holds naming the grant,
// and Preflight refuses it when the flag was set explicitly. Granted pg_monitor, all is readable.
func TestUnprivilegedRoleFailsClosed(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServer(t)
	admin := testenv.Conn(t, srv.AdminURL())
	exec(t, admin, `CREATE ROLE plain LOGIN PASSWORD 'plain-pw'`)
	plain := testenv.Conn(t, asUser(t, srv.AdminURL(), "plain", "plain-pw"))
	ctx := context.Background()
	cfg := throttle.DefaultConfig()
	cfg.MaxSlotWAL, cfg.MaxArchiveBacklog, cfg.MaxBlocked = 0, 0, 0

	lagOnly := monitor(t, throttle.Config{MaxReplicaLag: 30 * time.Second})
	requireState(t, poll(t, lagOnly, plain), throttle.Green) // no standby: nothing unseen
	// Set explicitly, the guard is refused even so (README): it would be
	// blind to the first standby that attaches.
	if _, err := lagOnly.Preflight(ctx, plain, map[throttle.Signal]bool{throttle.ReplicaLag: true}); !errors.As(err, new(*throttle.UnreadableError)) {
		t.Fatalf("Preflight with --max-replica-lag explicit and no standby: %v, want *UnreadableError", err)
	}

	pgtest.Standby(t, srv, pgserver.StandbyOptions{})
	r := poll(t, lagOnly, plain)
	if r.State != throttle.Hold || !r.Unreadable || !strings.Contains(r.Reason, "GRANT pg_monitor TO plain") {
		t.Fatalf("unprivileged with a standby: %+v, want an unreadable hold naming the grant", r)
	}

	m := monitor(t, cfg)
	warned, err := m.Preflight(ctx, plain, map[throttle.Signal]bool{throttle.ReplicaLag: true})
	var unreadable *throttle.UnreadableError
	if !errors.As(err, &unreadable) {
		t.Fatalf("Preflight with --max-replica-lag explicit: %v, want *UnreadableError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "--max-replica-lag") || !strings.Contains(msg, "GRANT pg_monitor TO plain") || strings.Contains(msg, "vacuum") {
		t.Fatalf("Preflight error %q: want the flag and the grant, and not the default vacuum signal", msg)
	}
	if len(warned) != 1 || warned[0].Signal != throttle.Vacuum || !strings.Contains(warned[0].Reason, "GRANT pg_monitor TO plain") {
		t.Fatalf("Preflight warnings %+v: want the default vacuum signal, naming the grant", warned)
	}

	warned, err = m.Preflight(ctx, plain, nil)
	if err != nil || len(warned) != 2 {
		t.Fatalf("Preflight with defaults only: %v, %+v; want no error and two unreadable readings", err, warned)
	}
	readings, err := m.Poll(ctx, plain)
	if err != nil || throttle.Worst(readings) != throttle.Hold || !strings.Contains(readings[0].Reason, "GRANT pg_monitor TO plain") {
		t.Fatalf("Poll with defaults: %+v, %v; want a hold naming the grant", readings, err)
	}

	exec(t, admin, `GRANT pg_monitor TO plain`)
	if warned, err := m.Preflight(ctx, plain, map[throttle.Signal]bool{throttle.ReplicaLag: true, throttle.Vacuum: true}); err != nil || len(warned) != 0 {
		t.Fatalf("Preflight with pg_monitor: %+v, %v; want all readable", warned, err)
	}
	if readings, err := m.Poll(ctx, plain); err != nil || throttle.Worst(readings) != throttle.Green {
		t.Fatalf("Poll with pg_monitor: %+v, %v; want green", readings, err)
	}
	if d := m.LastPollDuration(); d <= 0 || d > 5*time.Second {
		t.Fatalf("LastPollDuration = %v", d)
	}
}

// By default only an autovacuum that runs to prevent wraparound holds:
// an ordinary autovacuum of a table shardfill writes (the kind a long
// backfill's own inserts start) does not, unless every vacuum is asked
// to hold (--hold-on-vacuum=all). Both are real autovacuums, slowed to a
// crawl by their tables' cost settings: one started by inserts, one by a
// table whose transaction ID age passed its tiny freeze maximum.
func TestVacuumHoldsForWraparoundByDefault(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServerWith(t, pgserver.Options{Settings: map[string]string{"autovacuum_naptime": "1s"}})
	c := testenv.Conn(t, srv.AdminURL())
	slow := `autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1`
	// wrapped: no autovacuum but the one to prevent wraparound, which runs
	// whatever autovacuum_enabled says once the table's age passes
	// autovacuum_freeze_max_age (100 000, the least it may be).
	exec(t, c, `CREATE TABLE wrapped (x int, pad text) WITH (autovacuum_enabled = false, autovacuum_freeze_max_age = 100000, `+slow+`)`)
	exec(t, c, `INSERT INTO wrapped SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g`)
	exec(t, c, `CREATE TABLE inserted (x int, pad text) WITH (autovacuum_vacuum_insert_threshold = 100, `+slow+`)`)

	tables := []string{"wrapped", "inserted"}
	byDefault := monitor(t, throttle.Config{HoldOnVacuum: throttle.DefaultHoldOnVacuum, Tables: tables})
	all := monitor(t, throttle.Config{HoldOnVacuum: throttle.VacuumAll, Tables: tables})
	autovacuumOf := func(table string) string {
		t.Helper()
		var query string
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			err := c.QueryRow(context.Background(), `SELECT a.query FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a USING (pid)
				WHERE v.relid = $1::regclass AND a.backend_type = 'autovacuum worker'`, table).Scan(&query)
			if err == nil {
				return query
			}
			if time.Now().After(deadline) {
				t.Fatalf("no autovacuum of %s started", table)
			}
		}
	}

	exec(t, c, `INSERT INTO inserted SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g`)
	if q := autovacuumOf("inserted"); strings.Contains(q, "wraparound") {
		t.Fatalf("the insert-driven autovacuum is %q", q)
	}
	requireState(t, poll(t, byDefault, c), throttle.Green)
	if r := poll(t, all, c); r.State != throttle.Hold || !strings.Contains(r.Reason, "VACUUM of inserted") {
		t.Fatalf("--hold-on-vacuum=all during an ordinary autovacuum: %+v, want hold", r)
	}

	// Age wrapped past its freeze maximum: a transaction ID per commit.
	exec(t, c, `DO $$ BEGIN FOR i IN 1..110000 LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$`)
	if q := autovacuumOf("wrapped"); !strings.Contains(q, "(to prevent wraparound)") {
		t.Fatalf("the autovacuum of wrapped is %q, want one to prevent wraparound", q)
	}
	hold := poll(t, byDefault, c)
	if hold.State != throttle.Hold || !strings.Contains(hold.Reason, "autovacuum to prevent wraparound of wrapped") || hold.Value != 1 {
		t.Fatalf("by default, during an anti-wraparound autovacuum: %+v, want a hold naming it (and not the ordinary one)", hold)
	}
}
