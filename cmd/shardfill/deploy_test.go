package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// cliSplit is cli with stdout and stderr apart, for commands whose
// stdout is parsed.
func cliSplit(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// A hot standby as target: every command that writes (run, run
// --plan-only, run --new-run, verify --repair) exits 2 naming the standby
// and the primary, even when the latest run is done; the read-only ones
// (status, plan, run --dry-run, verify) work and say their view may lag,
// status --json with read_only_replica. On the primary nothing says so.
func TestStandbyTarget(t *testing.T) {
	t.Parallel()
	primary := pgtest.PrivateServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	appURL, err := primary.CreateDatabase(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, appURL)
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.Generate(ctx, pool, testenv.Small); err != nil {
		t.Fatal(err)
	}
	st := pgtest.Standby(t, primary, pgserver.StandbyOptions{})

	if code, out := cli(t, "run", "--no-progress", "--database-url", appURL); code != 0 {
		t.Fatalf("run on the primary: exit %d\n%s", code, out)
	}
	code, stdout, stderr := cliSplit(t, "status", "--json", "--database-url", appURL)
	if code != 0 || strings.Contains(stderr, "lag") || !strings.Contains(stdout, `"read_only_replica": false`) {
		t.Fatalf("status on the primary: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// The cluster commits asynchronously; one synchronous commit flushes
	// everything before it, so CatchUp waits for all of it.
	if _, err := pool.Exec(ctx, `SET synchronous_commit = on; CREATE TABLE flushed ()`); err != nil {
		t.Fatal(err)
	}
	if err := st.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	standbyURL := st.URL("app")

	for _, args := range [][]string{
		{"run", "--no-progress"},
		{"run", "--plan-only"},
		{"run", "--new-run", "--no-progress"},
		{"verify", "--repair"},
	} {
		code, out := cli(t, append(args, "--database-url", standbyURL)...)
		if code != 2 || !strings.Contains(out, "hot standby") || !strings.Contains(out, "primary") ||
			strings.Contains(out, "25006") || strings.Contains(out, "read-only transaction") {
			t.Errorf("%v on the standby: exit %d, want 2 naming the standby and the primary\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{
		{"status"},
		{"plan"},
		{"run", "--dry-run"},
		{"verify"},
	} {
		code, out := cli(t, append(args, "--database-url", standbyURL)...)
		if code != 0 || !strings.Contains(out, "hot standby") || !strings.Contains(out, "lag the primary") {
			t.Errorf("%v on the standby: exit %d, want 0 with a note that it may lag\n%s", args, code, out)
		}
	}
	code, stdout, stderr = cliSplit(t, "status", "--json", "--database-url", standbyURL)
	var status struct {
		State    string `json:"state"`
		ReadOnly bool   `json:"read_only_replica"`
	}
	if err := json.Unmarshal([]byte(stdout), &status); code != 0 || err != nil || !status.ReadOnly || status.State != "done" {
		t.Fatalf("status --json on the standby: exit %d, %+v (%v)\n%s\n%s", code, status, err, stdout, stderr)
	}
}

var roleCounter atomic.Int64

// newRoles creates plain LOGIN roles (not superuser) on srv, named after
// the test, and drops them when the test ends. Call it before the test's
// databases are made: cleanups run last first, so the databases (and what
// the roles own in them) are dropped before the roles.
func newRoles(t *testing.T, srv *pgserver.Server, names ...string) (roles []string, password string) {
	t.Helper()
	password = "r0le-pw-" + t.Name()
	admin := testenv.Conn(t, srv.AdminURL())
	n := roleCounter.Add(1)
	for _, name := range names {
		role := fmt.Sprintf("sf_%s_%d_%d", name, os.Getpid(), n)
		if _, err := admin.Exec(context.Background(), `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+
			` LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD `+quoteLiteral(password)); err != nil {
			t.Fatal(err)
		}
		roles = append(roles, role)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), srv.AdminURL())
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(context.Background())
		for _, role := range roles {
			if _, err := conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize()); err != nil {
				t.Errorf("drop role %s: %v", role, err)
			}
		}
	})
	return roles, password
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// asRole is dbURL with another role's credentials (over the same scram
// TCP connection the superuser uses).
func asRole(t *testing.T, dbURL, role, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, password)
	return u.String()
}

// The README's least-privilege grants, exactly: the run role backfills
// into a checkpoint schema created for it (no CREATE on the database,
// no TEMP), the status role reads it; a checkpoint schema, or a table in
// it, that another role controls is refused with exit 2 before anything
// is written into it.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	srv := pgtest.SharedServer(t)
	if srv.External() {
		t.Skip("creates roles on the server (TEST_DATABASE_URL is set)")
	}
	roles, pw := newRoles(t, srv, "run", "status", "other")
	runRole, statusRole, other := roles[0], roles[1], roles[2]
	dbURL := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, dbURL)
	ctx := context.Background()
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	id := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	run, status, dbID := id(runRole), id(statusRole), id(db)
	grants := []string{
		// Nothing from PUBLIC: no TEMP, no CREATE, not even CONNECT.
		`REVOKE ALL ON DATABASE ` + dbID + ` FROM PUBLIC`,
		// The run role (README, "Deployment: roles and grants").
		`GRANT CONNECT ON DATABASE ` + dbID + ` TO ` + run,
		`GRANT SELECT ON workspace, agent, issue, agent_task_queue, task_usage TO ` + run,
		`GRANT SELECT, INSERT, DELETE ON task_usage_hourly TO ` + run,
		`GRANT SELECT, UPDATE ON task_usage_hourly_rollup_state TO ` + run,
		`GRANT SELECT, UPDATE, DELETE ON task_usage_hourly_dirty TO ` + run,
		`CREATE SCHEMA shardfill AUTHORIZATION ` + run,
		// The status role.
		`GRANT CONNECT ON DATABASE ` + dbID + ` TO ` + status,
		`GRANT USAGE ON SCHEMA shardfill TO ` + status,
		`ALTER DEFAULT PRIVILEGES FOR ROLE ` + run + ` IN SCHEMA shardfill GRANT SELECT ON TABLES TO ` + status,
		// Schemas the run role must refuse: one owned by another role, one
		// its own but holding a table of another role's.
		`CREATE SCHEMA foreign_cp AUTHORIZATION ` + id(other),
		`GRANT USAGE, CREATE ON SCHEMA foreign_cp TO ` + run,
		`CREATE SCHEMA planted AUTHORIZATION ` + run,
		`CREATE TABLE planted.run (id bigint)`,
		`ALTER TABLE planted.run OWNER TO ` + id(other),
	}
	for _, g := range grants {
		if _, err := pool.Exec(ctx, g); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	runURL, statusURL := asRole(t, dbURL, runRole, pw), asRole(t, dbURL, statusRole, pw)

	for _, schema := range []string{"foreign_cp", "planted"} {
		code, out := cli(t, "run", "--no-progress", "--schema", schema, "--database-url", runURL)
		if code != 2 || !strings.Contains(out, "--schema") || !strings.Contains(out, "owned by "+other) {
			t.Errorf("run into schema %s controlled by another role: exit %d, want 2 naming its owner\n%s", schema, code, out)
		}
		var created bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema+".slice").Scan(&created); err != nil || created {
			t.Errorf("schema %s: slice table created (%v, %v)", schema, created, err)
		}
	}

	if code, out := cli(t, "run", "--no-progress", "--concurrency", "2", "--database-url", runURL); code != 0 {
		t.Fatalf("run as the run role: exit %d\n%s", code, out)
	}
	testenv.RequireOracle(t, pool)
	var stamped bool
	if err := pool.QueryRow(ctx, `SELECT watermark_at > '2000-01-01' FROM task_usage_hourly_rollup_state`).Scan(&stamped); err != nil || !stamped {
		t.Fatalf("watermark not stamped by the run role (%v)", err)
	}
	code, stdout, stderr := cliSplit(t, "status", "--json", "--database-url", statusURL)
	var st struct {
		State       string `json:"state"`
		WatermarkAt any    `json:"watermark_at"`
	}
	if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || st.State != "done" || st.WatermarkAt == nil {
		t.Fatalf("status as the status role: exit %d, %+v (%v)\n%s%s", code, st, err, stdout, stderr)
	}
	// The status role reads and nothing more.
	if code, out := cli(t, "run", "--no-progress", "--new-run", "--database-url", statusURL); code == 0 {
		t.Fatalf("run as the status role succeeded\n%s", out)
	}
	// A trigger on the run role's own table that calls another role's
	// function (a role granted TRIGGER could add it) is refused too.
	for _, q := range []string{
		`CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$`,
		`ALTER FUNCTION public.planted() OWNER TO ` + id(other),
		`CREATE TRIGGER planted BEFORE UPDATE ON shardfill.slice FOR EACH ROW EXECUTE FUNCTION public.planted()`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if code, out := cli(t, "run", "--no-progress", "--new-run", "--database-url", runURL); code != 2 || !strings.Contains(out, "trigger planted") {
		t.Fatalf("run beside another role's trigger: exit %d, want 2 naming the trigger\n%s", code, out)
	}
}

// A database-level statement_timeout far below what planning takes does
// not kill planning (--plan-timeout defaults to none); slices keep to
// --statement-timeout. An explicit --plan-timeout below the plan's time
// does kill it.
func TestDatabaseStatementTimeoutSparesPlanning(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t, &timeoutHistory)
	pool := testenv.Pool(t, dbURL)
	ctx := context.Background()
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	// Planning this history must take longer than the timeout, or the test
	// proves nothing.
	started := time.Now()
	plan := testenv.Rollup(t, pool).Pieces(0).(checkpoint.MonthPieces).Plan
	planSQL, planArgs := plan(checkpoint.LowerBound(nil), checkpoint.UpperBound(), int64(engine.DefaultMaxSliceRows))
	if _, err := pool.Exec(ctx, `SELECT count(*) FROM (`+planSQL+`) p`, planArgs...); err != nil {
		t.Fatal(err)
	}
	// The timeout is a fraction of what the plan query took here, so that
	// it stays well below planning's time on a fast or a warm server too.
	took := time.Since(started)
	dbTimeout := max(took/planOverTimeout, time.Millisecond)
	if took < 2*dbTimeout {
		t.Fatalf("the plan query took %s: not enough above the %s timeout to tell", took, dbTimeout)
	}
	t.Logf("the plan query takes %s; the database's statement_timeout is %s", took, dbTimeout)
	if _, err := pool.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET statement_timeout = `+
		quoteLiteral(fmt.Sprint(dbTimeout.Milliseconds())+"ms")); err != nil {
		t.Fatal(err)
	}
	if code, out := cli(t, "plan", "--plan-timeout", "1ms", "--database-url", dbURL); code != 1 || !strings.Contains(out, "statement timeout") {
		t.Fatalf("plan --plan-timeout 1ms: exit %d, want 1 on a statement timeout\n%s", code, out)
	}
	for _, args := range [][]string{
		{"plan"},
		{"run", "--no-progress", "--statement-timeout", "1m"},
	} {
		if code, out := cli(t, append(args, "--database-url", dbURL)...); code != 0 {
			t.Fatalf("%v with statement_timeout %s on the database: exit %d\n%s", args, dbTimeout, code, out)
		}
	}
	testenv.RequireOracle(t, pool)
}

// timeoutHistory is a history whose planning takes well over a few
// milliseconds, the least timeout the test sets.
var (
	timeoutHistory                = fixture.Config{Seed: 11, Workspaces: 200, Months: 12, Rows: 80_000, Skew: 1.1}
	planOverTimeout time.Duration = 5 // the plan query's time over the database's statement_timeout
)
