package pgserver_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const leak = "s3cret-pw-DO-NOT-LEAK"

func TestServerSettings(t *testing.T) {
	t.Parallel()
	if pgtest.SharedServer(t).External() {
		t.Skip("settings are only ours on a private cluster")
	}
	conn := testenv.Conn(t, pgtest.NewDB(t))
	want := map[string]string{
		"fsync":               "off",
		"synchronous_commit":  "off",
		"full_page_writes":    "off",
		"max_connections":     "200",
		"shared_buffers":      "128MB",
		"listen_addresses":    "127.0.0.1",
		"password_encryption": "scram-sha-256",
	}
	for name, w := range want {
		var got string
		// SHOW takes no parameters; current_setting does.
		if err := conn.QueryRow(context.Background(), "SELECT current_setting($1)", name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != w {
			t.Errorf("%s = %q, want %q", name, got, w)
		}
	}
	var super bool
	if err := conn.QueryRow(context.Background(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Error("shardfill role is not a superuser")
	}
}

func TestWrongPasswordIsRejected(t *testing.T) {
	t.Parallel()
	s := pgtest.SharedServer(t)
	if s.External() {
		t.Skip("auth is only ours on a private cluster")
	}
	u, err := url.Parse(s.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("shardfill", "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u.String())
	if err == nil {
		conn.Close(ctx)
		t.Fatal("connected with a wrong password: host auth is not scram")
	}
	if !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("unexpected error: %v", err)
	}
}

func TestPasswordNotPrinted(t *testing.T) {
	t.Parallel()
	s := pgtest.SharedServer(t)
	if s.External() {
		t.Skip("the password is ours only on a private cluster")
	}
	if s.Password() != leak {
		t.Fatalf("unexpected password")
	}
	if !strings.Contains(s.AdminURL(), leak) {
		t.Fatal("AdminURL must carry the password")
	}
	out := fmt.Sprintf("%v %+v %#v %s", s, s, s, s)
	if strings.Contains(out, leak) {
		t.Fatal("printing a *pgserver.Server leaks the password")
	}
	// A failing CreateDatabase (duplicate) must not echo the URL.
	ctx := context.Background()
	_, err := s.CreateDatabase(ctx, "postgres")
	if err == nil {
		t.Fatal("creating database postgres twice succeeded")
	}
	if strings.Contains(err.Error(), leak) {
		t.Fatal("error leaks the password")
	}
}

// TestStopRestart is a fault test on its own cluster: the shared one must
// stay up for the parallel tests.
func TestStopRestart(t *testing.T) {
	t.Parallel()
	s := pgtest.PrivateServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dbURL, err := s.CreateDatabase(ctx, "fault")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	// synchronous_commit=off could lose the last commit on an immediate
	// stop; this row must survive, so commit it synchronously.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on; CREATE TABLE t (x int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	for _, mode := range []string{"immediate", "fast"} {
		if err := s.StopMode(mode); err != nil {
			t.Fatalf("StopMode(%s): %v", mode, err)
		}
		if err := conn.Ping(ctx); err == nil {
			t.Fatalf("connection still alive after StopMode(%s)", mode)
		}
		conn.Close(ctx)
		if err := s.Restart(ctx); err != nil {
			t.Fatalf("Restart after %s: %v", mode, err)
		}
		conn, err = pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatalf("connect after restart: %v", err)
		}
		var x int
		if err := conn.QueryRow(ctx, "SELECT x FROM t").Scan(&x); err != nil || x != 42 {
			t.Fatalf("after %s stop + restart: x=%d err=%v", mode, x, err)
		}
	}
	conn.Close(ctx)
	if err := s.DropDatabase(ctx, "fault"); err != nil {
		t.Fatal(err)
	}
}

// A failed start reports the tail of the server log, without the password.
func TestFailedStartShowsLogTail(t *testing.T) {
	t.Parallel()
	s := pgtest.PrivateServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Starting it a second time fails: the data dir is in use.
	err := s.Restart(ctx)
	if err == nil {
		t.Fatal("second start of a running cluster succeeded")
	}
	if !strings.Contains(err.Error(), "--- tail of") || !strings.Contains(err.Error(), "postgres.log") {
		t.Fatalf("error lacks the log tail: %v", err)
	}
	if strings.Contains(err.Error(), leak) {
		t.Fatal("error leaks the password")
	}
	t.Logf("error as reported:\n%v", err)
}

func TestStopAfterImmediateStop(t *testing.T) {
	t.Parallel()
	if pgtest.SharedServer(t).External() {
		t.Skip("fault tests need a private cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgserver.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StopMode("immediate"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop after StopMode: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestExternal points Start at the shared server through TEST_DATABASE_URL.
// Not parallel: it sets an environment variable.
func TestExternal(t *testing.T) {
	shared := pgtest.SharedServer(t)
	t.Setenv("TEST_DATABASE_URL", shared.AdminURL())
	ctx := context.Background()
	s, err := pgserver.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.External() {
		t.Fatal("External() = false with TEST_DATABASE_URL set")
	}
	for name, err := range map[string]error{
		"Stop":     s.Stop(),
		"StopMode": s.StopMode("fast"),
		"Restart":  s.Restart(ctx),
	} {
		if err == nil || !strings.Contains(err.Error(), "not supported with TEST_DATABASE_URL") {
			t.Errorf("%s: got %v, want not supported", name, err)
		}
	}
	dbURL, err := s.CreateDatabase(ctx, "external_check")
	if err != nil {
		t.Fatal(err)
	}
	conn := testenv.Conn(t, dbURL)
	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if name != "external_check" {
		t.Fatalf("connected to %q", name)
	}
	if err := s.DropDatabase(ctx, "external_check"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.String(), s.Password()) {
		t.Fatal("String() leaks the external password")
	}
}

// StartWith's settings reach the server, quoted: a value with a quote
// survives, and a name that could start another line is refused.
func TestStartWithSettings(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServerWith(t, pgserver.Options{Settings: map[string]string{
		"work_mem":          "7MB",
		"application_name":  "it's ours",
		"shardfill.example": "on",
	}})
	conn := testenv.Conn(t, srv.AdminURL())
	for name, want := range map[string]string{
		"work_mem":          "7MB",
		"application_name":  "it's ours",
		"shardfill.example": "on",
		"max_wal_senders":   "10", // a standby can always be made
	} {
		var got string
		if err := conn.QueryRow(context.Background(), "SELECT current_setting($1)", name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	_, err := pgserver.StartWith(context.Background(), pgserver.Options{Settings: map[string]string{"x = 1\nfsync": "on"}})
	if err == nil || !strings.Contains(err.Error(), "bad setting name") {
		t.Fatalf("a setting name with a line break: %v", err)
	}
}

// A missing component names the Debian package that provides it, which is
// what a failing test shows.
func TestMissingErrorNamesPackage(t *testing.T) {
	t.Parallel()
	err := error(&pgserver.MissingError{What: "pgbouncer", Package: "pgbouncer"})
	if !strings.Contains(err.Error(), "apt-get install pgbouncer") {
		t.Fatalf("error does not say what to install: %v", err)
	}
}
