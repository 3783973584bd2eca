// Package pgserver runs throwaway PostgreSQL clusters, and what stands
// beside them in production (streaming standbys, PgBouncer, pg_cron), on
// loopback in temp directories, for tests, benchmarks and the demo.
//
// It is separate from the testing helpers of package pgtest
// (internal/pgtest, built on this one) so that the shipped binary, whose
// demo starts a cluster, does not link package testing.
//
// Why a private cluster instead of a shared, pre-installed database:
//
//   - Isolation: every test gets its own freshly created database, so tests
//     can run in parallel and never see each other's rows or advisory
//     locks (PostgreSQL scopes advisory locks to the database).
//   - Fault tests: the engine must survive the server going away. Tests can
//     stop the cluster ([Server.StopMode] "fast" or "immediate") and bring it
//     back on the same port and data directory ([Server.Restart]), which is
//     impossible against a database someone else owns.
//   - Real deployments: a standby ([Server.StartStandby]), a transaction
//     pooler ([StartPgBouncer]) and the real pg_cron ([Options].CronDatabase)
//     behave in ways no mock does (read-only transactions, session state
//     that does not survive a transaction, a scheduler in a background
//     worker).
//   - Speed: the cluster is tuned for disposable data (fsync=off,
//     synchronous_commit=off, full_page_writes=off) and created with
//     initdb --no-sync.
//   - Realism: clients connect over TCP with scram-sha-256 and a real
//     password, like production, so the "no password in any output" rule is
//     exercised for real. The password is a fixed, recognisable string so
//     tests can grep output for it.
//
// PostgreSQL and PgBouncer refuse to run as root. When the process is root
// (CI, the dev container) every server binary is run through
// `runuser -u postgres --` and the temporary directories are handed to the
// postgres user; as a normal user the binaries are run directly.
//
// Every component is torn down by its Stop. For the exits that never reach
// Stop (a panic in a test goroutine, a binary killed by `go test -timeout`)
// each one also launches a tiny detached watchdog shell that waits for this
// process to exit and then stops the component and deletes its directory,
// so no postgres or pgbouncer processes are left behind.
//
// A missing program or library is a [*MissingError] naming the Debian
// package that provides it (.ci/run installs them).
//
// Setting TEST_DATABASE_URL makes [Start] use that server instead of starting
// one (it must allow CREATE DATABASE). Stop, StopMode, Restart, standbys and
// poolers then return an error and such tests should skip.
package pgserver
