package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgserver"
)

// One server per test binary, started on first use so that test binaries
// (or -run selections) that never touch the database pay nothing.
var (
	sharedOnce sync.Once
	shared     *pgserver.Server
	sharedErr  error
	dbCounter  atomic.Int64
)

// Main runs the tests and then stops the shared server, if one was started.
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests is separate from Main so the deferred stop runs before os.Exit
// (which skips defers), including when m.Run panics.
func runTests(m *testing.M) int {
	defer stopShared()
	return m.Run()
}

func stopShared() {
	if shared == nil || shared.External() {
		return
	}
	if err := shared.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stopping shared server: %v\n", err)
	}
}

// SharedServer returns the test binary's server, starting it on first use.
// A failed start fails every test that asks for it.
func SharedServer(t testing.TB) *pgserver.Server {
	t.Helper()
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared, sharedErr = pgserver.Start(ctx)
	})
	if sharedErr != nil {
		t.Fatalf("pgtest: %v", sharedErr)
	}
	return shared
}

// NewDB creates a fresh, empty database on the shared server and returns
// its URL; the database is dropped when the test ends. Safe with
// t.Parallel(). The URL contains the password: do not log it.
func NewDB(t testing.TB) string {
	t.Helper()
	s := SharedServer(t)
	name := dbName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := s.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return url
}

// dbName builds a unique, readable database name: the test name (for
// debugging a leftover database), the pid (several test binaries may share
// one TEST_DATABASE_URL server) and a counter, within PostgreSQL's 63 bytes.
func dbName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	base := b.String()
	if len(base) > 36 {
		base = base[:36]
	}
	return fmt.Sprintf("t_%s_%d_%d", base, os.Getpid(), dbCounter.Add(1))
}

// PrivateServer starts a cluster of the test's own, stopped when the test
// ends: for tests that stop or restart the server, which must not disturb
// the shared one. It skips the test when TEST_DATABASE_URL names a server.
func PrivateServer(t testing.TB) *pgserver.Server {
	t.Helper()
	skipExternal(t, "tests that stop the server need a private cluster")
	return startFor(t, "private server", 2*time.Minute, func(ctx context.Context) (*pgserver.Server, error) {
		return pgserver.Start(ctx)
	})
}

// PrivateServerWith starts a cluster of the test's own shaped by opts (e.g.
// pg_cron preloaded), stopped when the test ends. It skips the test when
// TEST_DATABASE_URL names a server: the options are settings an external
// server would not have.
func PrivateServerWith(t testing.TB, opts pgserver.Options) *pgserver.Server {
	t.Helper()
	skipExternal(t, "tests that configure the server need a private cluster")
	return startFor(t, "private server", 2*time.Minute, func(ctx context.Context) (*pgserver.Server, error) {
		return pgserver.StartWith(ctx, opts)
	})
}

// Standby starts a streaming hot standby of srv (see
// [pgserver.Server.StartStandby]), stopped when the test ends, before srv
// if srv is the test's own. It skips the test for an external server.
func Standby(t testing.TB, srv *pgserver.Server, opts pgserver.StandbyOptions) *pgserver.Standby {
	t.Helper()
	if srv.External() {
		t.Skip("a standby needs a private cluster (TEST_DATABASE_URL is set)")
	}
	return startFor(t, "standby", 2*time.Minute, func(ctx context.Context) (*pgserver.Standby, error) {
		return srv.StartStandby(ctx, opts)
	})
}

// PgBouncer starts pgbouncer in front of srv with the given pool_mode
// ("transaction" or "session"), stopped when the test ends. It skips the
// test for an external server; when pgbouncer is not installed the test
// fails, naming the Debian package.
func PgBouncer(t testing.TB, srv *pgserver.Server, poolMode string) *pgserver.PgBouncer {
	t.Helper()
	if srv.External() {
		t.Skip("pgbouncer needs a private cluster (TEST_DATABASE_URL is set)")
	}
	return startFor(t, "pgbouncer", time.Minute, func(ctx context.Context) (*pgserver.PgBouncer, error) {
		return pgserver.StartPgBouncer(ctx, srv, pgserver.PgBouncerOptions{PoolMode: poolMode})
	})
}

// startFor starts a component within timeout, failing the test if it
// cannot (a missing program's error names its Debian package), and stops
// it when the test ends; cleanups run last first, so a component stops
// before what it was started beside.
func startFor[C interface{ Stop() error }](t testing.TB, what string, timeout time.Duration, start func(context.Context) (C, error)) C {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("pgtest: stop %s: %v", what, err)
		}
	})
	return c
}

// skipExternal skips the test when TEST_DATABASE_URL names a server,
// without starting the shared server to find out.
func skipExternal(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("TEST_DATABASE_URL") != "" {
		t.Skip(why + " (TEST_DATABASE_URL is set)")
	}
}
