// Package checkpoint keeps shardfill's progress in the target database, in a
// schema of its own: one row per run and one per slice.
//
// Nothing important lives only in a process's memory. The planner writes
// slices straight from a query into the slice table (the slice list never
// passes through Go), workers claim them with FOR UPDATE SKIP LOCKED under a
// lease, and a slice is marked done in the transaction that writes its
// rollup rows ([Store.QueueFence] and [Store.QueueComplete] run inside it).
// So a process may die at any instant and a re-run, or another process
// sharing the run, continues from exactly what has committed.
//
// A claim is fenced by (owner, attempts): a worker that stalled past its
// lease and was overtaken finds its claim gone when it tries to complete,
// and rolls back instead of committing stale work.
package checkpoint
