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
)

// One server per test binary, started on first use so that test binaries
// (or -run selections) that never touch the database pay nothing.
var (
	sharedOnce sync.Once
	shared     *Server
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
func SharedServer(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared, sharedErr = Start(ctx)
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
func PrivateServer(t testing.TB) *Server {
	t.Helper()
	if SharedServer(t).External() {
		t.Skip("tests that stop the server need a private cluster (TEST_DATABASE_URL is set)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: stop private server: %v", err)
		}
	})
	return s
}
