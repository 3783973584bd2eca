// Package pgtest gives tests the throwaway PostgreSQL of [pgserver]: one
// shared cluster per test binary and a fresh database per test, plus
// private clusters, standbys and poolers that are torn down when the test
// ends.
//
// One server per test binary: Main (from TestMain) and the lazily started
// SharedServer. Main stops the cluster when the tests finish, even when
// m.Run panics; pgserver's watchdog covers the exits that never return to
// Main. NewDB gives each test its own database on it, so tests can call
// t.Parallel().
//
// Tests that stop, restart or reconfigure a server take one of their own
// (PrivateServer, PrivateServerWith); Standby and PgBouncer put a streaming
// standby or a pooler beside a server. All of them register t.Cleanup for
// teardown. With TEST_DATABASE_URL set they skip the test, since the
// external server is not ours to stop or reconfigure; without it, a
// missing program fails the test with the Debian package to install.
//
// This package imports testing, so only tests may import it; the demo and
// the benchmarks use pgserver directly.
package pgtest
