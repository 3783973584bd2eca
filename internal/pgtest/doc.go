// Package pgtest runs a throwaway PostgreSQL cluster for tests, benchmarks
// and the demo.
//
// Why a private cluster instead of a shared, pre-installed database:
//
//   - Isolation: every test gets its own freshly created database (NewDB), so
//     tests can run with t.Parallel() and never see each other's rows or
//     advisory locks (PostgreSQL scopes advisory locks to the database).
//   - Fault tests: the engine must survive the server going away. Tests can
//     stop the cluster (StopMode "fast" or "immediate") and bring it back on
//     the same port and data directory (Restart), which is impossible against
//     a database someone else owns.
//   - Speed: the cluster is tuned for disposable data (fsync=off,
//     synchronous_commit=off, full_page_writes=off) and created with
//     initdb --no-sync.
//   - Realism: clients connect over TCP with scram-sha-256 and a real
//     password, like production, so the "no password in any output" rule is
//     exercised for real. The password is a fixed, recognisable string so
//     tests can grep output for it.
//
// PostgreSQL refuses to run as root. When the process is root (CI, the dev
// container) every server binary is run through `runuser -u postgres --`
// and the temporary directory is handed to the postgres user; as a normal
// user the binaries are run directly.
//
// One server per test binary: Main (from TestMain) and the lazily started
// SharedServer. Main stops the cluster when the tests finish, even when
// m.Run panics. A test that panics inside its own goroutine, or a binary
// killed by `go test -timeout`, never returns to Main; for that case Start
// also launches a tiny detached watchdog shell that waits for this process
// to exit and then stops the cluster and deletes its directory, so no
// postgres processes are left behind.
//
// Setting TEST_DATABASE_URL makes Start use that server instead of starting
// one (it must allow CREATE DATABASE). Stop, StopMode and Restart then return
// an error and fault tests should skip (see External).
package pgtest
