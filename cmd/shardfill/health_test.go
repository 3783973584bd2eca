package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// healthFixture is small enough that a rate-limited run lasts seconds.
var healthFixture = fixture.Config{Seed: 11, Workspaces: 10, Months: 6, Rows: 1500, Skew: 1.1}

var healthDBs atomic.Int64

// loadedDB makes a database on srv holding the target schema and the
// health tests' history.
func loadedDB(t *testing.T, srv *pgserver.Server) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := srv.CreateDatabase(ctx, fmt.Sprintf("health_%d", healthDBs.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, url)
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.Generate(ctx, pool, healthFixture); err != nil {
		t.Fatal(err)
	}
	return url
}

// inproc is `shardfill run` running in-process in the background.
type inproc struct {
	out    testenv.Output
	code   chan int
	cancel context.CancelFunc
}

func startRun(t *testing.T, args ...string) *inproc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inproc{code: make(chan int, 1), cancel: cancel}
	go func() { p.code <- execute(ctx, append([]string{"run", "--no-progress"}, args...), &p.out, &p.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.code:
		case <-time.After(30 * time.Second):
		}
	})
	return p
}

// wait returns the exit code, failing the test after timeout.
func (p *inproc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case code := <-p.code:
		p.code <- code
		return code
	case <-time.After(timeout):
		t.Fatalf("run still going after %s:\n%s", timeout, p.out.String())
		return -1
	}
}

// healthStatus is status --json as the health tests read it.
type healthStatus struct {
	State          string  `json:"state"`
	SlicesTotal    int64   `json:"slices_total"`
	SlicesDone     int64   `json:"slices_done"`
	ThrottleReason *string `json:"throttle_reason"`
	Processes      []struct {
		State                string   `json:"state"`
		Reason               *string  `json:"reason"`
		Concurrency          int      `json:"concurrency"`
		Rate                 float64  `json:"rate"`
		EffectiveConcurrency *int     `json:"effective_concurrency"`
		EffectiveRate        *float64 `json:"effective_rate"`
	} `json:"processes"`
}

func healthStatusOf(t *testing.T, url string) healthStatus {
	t.Helper()
	var out, errOut testenv.Output
	code := execute(context.Background(), []string{"status", "--json", "--database-url", url}, &out, &errOut)
	var st healthStatus
	if code != 0 {
		return st // no run yet
	}
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil {
		t.Fatalf("status --json: %v\n%s%s", err, out.String(), errOut.String())
	}
	return st
}

// heldBy waits until status names want in throttle_reason with a held
// process, then checks that the run claims nothing more for a while.
func heldBy(t *testing.T, url string, p *inproc, within time.Duration, want string) healthStatus {
	t.Helper()
	var st healthStatus
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		st = healthStatusOf(t, url)
		if st.ThrottleReason != nil && strings.Contains(*st.ThrottleReason, want) &&
			len(st.Processes) == 1 && st.Processes[0].State == "held" {
			break
		}
		if time.Now().After(deadline) {
			r := "null"
			if st.ThrottleReason != nil {
				r = *st.ThrottleReason
			}
			t.Fatalf("not held within %s naming %q: throttle_reason %s, %+v\n%s", within, want, r, st, p.out.String())
		}
	}
	time.Sleep(500 * time.Millisecond) // batches in flight finish
	before := healthStatusOf(t, url).SlicesDone
	time.Sleep(2500 * time.Millisecond)
	if after := healthStatusOf(t, url); after.SlicesDone != before || after.ThrottleReason == nil {
		t.Fatalf("held, yet %d more slices were done (reason now %v)\n%s", after.SlicesDone-before, after.ThrottleReason, p.out.String())
	}
	return st
}

func mustExec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func waitDone(t *testing.T, url string, min int64, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); healthStatusOf(t, url).SlicesDone < min; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d slices done within %s", min, within)
		}
	}
}

// A streaming standby whose replay is paused while the run writes: the
// run stops claiming within seconds and status names the standby; resumed,
// it picks up and finishes, equal to the oracle.
func TestRunHeldByPausedStandby(t *testing.T) {
	t.Parallel()
	primary := pgtest.PrivateServerWith(t, pgserver.Options{Settings: map[string]string{"wal_receiver_status_interval": "1s"}})
	url := loadedDB(t, primary)
	st := pgtest.Standby(t, primary, pgserver.StandbyOptions{})
	standby := testenv.Conn(t, st.AdminURL())

	p := startRun(t, "--database-url", url, "--concurrency", "2", "--rate", "6", "--max-replica-lag", "1s")
	waitDone(t, url, 3, 20*time.Second)
	mustExec(t, standby, `SELECT pg_wal_replay_pause()`)
	paused := time.Now()
	held := heldBy(t, url, p, 20*time.Second, "on standby walreceiver")
	t.Logf("held %s after the replay paused: %s", time.Since(paused).Round(100*time.Millisecond), *held.ThrottleReason)
	if held.SlicesDone >= held.SlicesTotal {
		t.Fatalf("the run was over before it was held: %+v", held)
	}

	mustExec(t, standby, `SELECT pg_wal_replay_resume()`)
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("run after the replay resumed: exit %d\n%s", code, p.out.String())
	}
	out := p.out.String()
	if !strings.Contains(out, "health: holding") || !strings.Contains(out, "replica_lag") {
		t.Fatalf("no log record of the hold:\n%s", out)
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// A physical replication slot nobody consumes, retaining more WAL than
// --max-slot-wal: the run is held; the slot dropped, it finishes.
func TestRunHeldBySlot(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServer(t)
	url := loadedDB(t, srv)
	c := testenv.Conn(t, url)
	mustExec(t, c, `SELECT pg_create_physical_replication_slot('forgotten', true)`)
	mustExec(t, c, `CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 30000) g`)

	p := startRun(t, "--database-url", url, "--max-slot-wal", "1MB", "--metrics-addr", "127.0.0.1:0",
		"--log-format", "json", "--progress-interval", "500ms")
	st := heldBy(t, url, p, 20*time.Second, "slot forgotten (physical, inactive) retains")
	if st.SlicesDone != 0 {
		t.Fatalf("%d slices done on a database held from the start", st.SlicesDone)
	}
	// Its connections say whose they are (the blocked signal tells
	// shardfill's backends by it): the lock connection and the pool's.
	var named int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'shardfill'`).Scan(&named); err != nil || named < 2 {
		t.Errorf("%d backends named shardfill (%v), want the lock connection's and the pool's", named, err)
	}
	// The metrics and the progress records say why.
	m := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("no metrics address logged:\n%s", p.out.String())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`shardfill_throttled{reason="slot_wal"} 1`,
		`shardfill_health_threshold{signal="slot_wal"} 1.048576e+06`,
		`shardfill_health_signal{signal="replica_lag"} 0`,
		`shardfill_health_threshold{signal="vacuum"} 0`,
		`shardfill_effective_concurrency `,
		`shardfill_health_poll_seconds `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if v := regexp.MustCompile(`shardfill_health_signal\{signal="slot_wal"\} (\S+)`).FindSubmatch(body); v == nil || string(v[1]) == "0" {
		t.Errorf("/metrics: slot_wal signal %q, want the WAL retained", v)
	}
	if !regexp.MustCompile(`"msg":"progress".*"throttle_reason":"slot forgotten`).MatchString(p.out.String()) {
		t.Errorf("no progress record names the slot:\n%s", p.out.String())
	}
	mustExec(t, c, `SELECT pg_drop_replication_slot('forgotten')`)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("run after the slot was dropped: exit %d\n%s", code, p.out.String())
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// An ordinary VACUUM of the rollup in progress does not hold a run by
// default (only an anti-wraparound autovacuum does); with
// --hold-on-vacuum=all it holds the run until it ends.
func TestRunHeldByVacuum(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &healthFixture)
	c := testenv.Conn(t, url)
	mustExec(t, c, `ALTER TABLE task_usage_hourly SET (autovacuum_enabled = false)`)
	// Dead rows for the VACUUM to work through, slowly.
	mustExec(t, c, `INSERT INTO task_usage_hourly (bucket_hour, workspace_id, runtime_id, agent_id, provider, model)
		SELECT '2020-01-01'::timestamptz + g * interval '1 hour', gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'p', 'm'
		FROM generate_series(1, 2000) g`)
	mustExec(t, c, `DELETE FROM task_usage_hourly`)
	v := testenv.Conn(t, url)
	mustExec(t, v, `SET vacuum_cost_delay = 100; SET vacuum_cost_limit = 1`)
	vacuumed := make(chan error, 1)
	go func() { _, err := v.Exec(context.Background(), `VACUUM task_usage_hourly`); vacuumed <- err }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var n int
		if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_progress_vacuum WHERE pid = $1`, v.PgConn().PID()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VACUUM never shows in pg_stat_progress_vacuum")
		}
	}

	if code, out := cli(t, "run", "--no-progress", "--database-url", url); code != 0 {
		t.Fatalf("run with the default --hold-on-vacuum beside an ordinary VACUUM: exit %d\n%s", code, out)
	}
	p := startRun(t, "--database-url", url, "--new-run", "--hold-on-vacuum=all")
	st := heldBy(t, url, p, 20*time.Second, "VACUUM of task_usage_hourly in progress")
	if st.SlicesDone != 0 {
		t.Fatalf("%d slices done while the rollup was being vacuumed", st.SlicesDone)
	}
	select {
	case err := <-vacuumed:
		t.Fatalf("the VACUUM ended (%v) before the test ended it", err)
	default:
	}
	mustExec(t, c, `SELECT pg_cancel_backend($1)`, v.PgConn().PID()) // the VACUUM ends
	<-vacuumed
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("run after the VACUUM: exit %d\n%s", code, p.out.String())
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// --throttle-query: a reason slows the run down (half the workers and
// rate) and status shows it; NULL lets it recover and finish.
func TestRunThrottleQuery(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &healthFixture)
	c := testenv.Conn(t, url)
	mustExec(t, c, `CREATE TABLE ops_flag (reason text); INSERT INTO ops_flag VALUES (NULL)`)
	p := startRun(t, "--database-url", url, "--concurrency", "4", "--rate", "6",
		"--throttle-query", "SELECT reason FROM ops_flag")
	waitDone(t, url, 2, 20*time.Second)
	mustExec(t, c, `UPDATE ops_flag SET reason = 'month-end close'`)
	var st healthStatus
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st = healthStatusOf(t, url)
		if st.ThrottleReason != nil && *st.ThrottleReason == "throttle query: month-end close" &&
			len(st.Processes) == 1 && st.Processes[0].EffectiveConcurrency != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status does not show the throttle query's reason: %+v\n%s", st, p.out.String())
		}
	}
	proc := st.Processes[0]
	if proc.State != "working" || *proc.EffectiveConcurrency != 2 || proc.Concurrency != 4 ||
		proc.EffectiveRate == nil || *proc.EffectiveRate != 3 || proc.Rate != 6 {
		t.Fatalf("red: process %+v (effective %d workers, %v/s), want working at 2 of 4 workers and 3 of 6 slices/s",
			proc, *proc.EffectiveConcurrency, *proc.EffectiveRate)
	}
	if code, text := cli(t, "status", "--database-url", url); code != 0 || !strings.Contains(text, "concurrency 2 of 4") ||
		!strings.Contains(text, "held back: throttle query: month-end close") {
		t.Fatalf("status text: exit %d\n%s", code, text)
	}

	mustExec(t, c, `UPDATE ops_flag SET reason = NULL`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st = healthStatusOf(t, url)
		if st.State == "done" || st.ThrottleReason == nil || !strings.Contains(*st.ThrottleReason, "month-end close") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reason stays after the query returned NULL: %+v", st)
		}
	}
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, p.out.String())
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// A role without pg_monitor, with a standby attached: --max-replica-lag
// set explicitly refuses the run (exit 2, naming the grant, nothing
// written); left at its default the run is held, naming the grant, never
// running blind; granted pg_monitor, it finishes.
func TestRunUnprivilegedReplicaLag(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServer(t)
	url := loadedDB(t, srv)
	// A plain role (the private server goes with the test, the role too).
	role, pw := "plain_run", "plain-pw"
	mustExec(t, testenv.Conn(t, srv.AdminURL()), `CREATE ROLE plain_run LOGIN NOINHERIT PASSWORD 'plain-pw'`)
	pgtest.Standby(t, srv, pgserver.StandbyOptions{})
	admin := testenv.Conn(t, url)
	id := pgx.Identifier{role}.Sanitize()
	for _, g := range []string{
		`GRANT SELECT ON workspace, agent, issue, agent_task_queue, task_usage TO ` + id,
		`GRANT SELECT, INSERT, DELETE ON task_usage_hourly TO ` + id,
		`GRANT SELECT, UPDATE ON task_usage_hourly_rollup_state TO ` + id,
		`GRANT SELECT, UPDATE, DELETE ON task_usage_hourly_dirty TO ` + id,
		`CREATE SCHEMA shardfill AUTHORIZATION ` + id,
	} {
		mustExec(t, admin, g)
	}
	runURL := asRole(t, url, role, pw)

	code, out := cli(t, "run", "--no-progress", "--database-url", runURL, "--max-replica-lag", "30s")
	if code != 2 || !strings.Contains(out, "--max-replica-lag") || !strings.Contains(out, "GRANT pg_monitor TO "+role) {
		t.Fatalf("explicit --max-replica-lag without pg_monitor: exit %d, want 2 naming the grant\n%s", code, out)
	}
	var tables int
	if err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = 'shardfill'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("the refused run wrote checkpoint tables (%d, %v)", tables, err)
	}

	p := startRun(t, "--database-url", runURL)
	st := heldBy(t, url, p, 20*time.Second, "GRANT pg_monitor TO "+role)
	if st.SlicesDone != 0 {
		t.Fatalf("%d slices done blind", st.SlicesDone)
	}
	// Granted pg_monitor's privileges apply to an INHERIT role.
	mustExec(t, admin, `GRANT pg_monitor TO `+id)
	mustExec(t, admin, `ALTER ROLE `+id+` INHERIT`)
	if code := p.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("run once granted pg_monitor: exit %d\n%s", code, p.out.String())
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}

// Bad health flags are usage errors, refused before connecting.
func TestHealthFlagsUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"run", "--max-slot-wal", "10XB"},
		{"run", "--max-slot-wal", "-1GB"},
		{"run", "--max-replica-lag", "-1s"},
		{"run", "--max-blocked", "-5s"},
		{"run", "--max-archive-backlog", "-1"},
		{"run", "--hold-on-vacuum=maybe"},
	} {
		code, out := cli(t, append(args, "--database-url", "postgres://nobody@127.0.0.1:1/none")...)
		if code != 2 || !strings.Contains(out, args[1][:strings.IndexAny(args[1]+"=", "=")]) {
			t.Errorf("%v: exit %d, want 2 naming the flag\n%s", args, code, out)
		}
	}
}
