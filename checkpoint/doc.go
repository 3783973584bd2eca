// Package checkpoint keeps shardfill's progress in the target database, in a
// schema of its own: one row per run and one per slice ([Store]).
//
// Nothing important lives only in a process's memory. The planner writes
// slices straight from a query into the slice table ([Store.Start]; the
// slice list never passes through Go), workers claim them with FOR UPDATE
// SKIP LOCKED under a lease ([Store.Claim]), and a slice is marked done in
// the transaction that writes its rollup rows ([Store.Fenced] builds that
// transaction around the job's statements). So a process may die at any
// instant and a re-run, or another process sharing the run, continues from
// exactly what has committed.
//
// A claim is fenced twice. By (owner, attempts): a worker that stalled past
// its lease and was overtaken finds its claim gone when it tries to
// complete, and rolls back instead of committing stale work. And by the
// job's cron lock: the claimant's lock connection must still hold it, or the
// cron job could run beside the commit.
//
// The files follow the jobs: migrate.go and schema.sql (the tables),
// run.go (a run's life: plan, resume, finish), claim.go and claim_*.sql
// (taking work), fence.go (the committing transaction), lease.go (keeping
// and handing back claims) and status.go (what operators see). How the
// cron lock looks in pg_locks is package cronlock's.
package checkpoint
