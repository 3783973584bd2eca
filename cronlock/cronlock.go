// Package cronlock describes the advisory lock a rollup's cron job takes, as
// PostgreSQL's pg_locks shows it. The job owns the key ([Key]); the engine
// holds the lock in shared mode while it works, and the checkpoint store's
// fence and liveness checks look for it. This is the one place that spells
// out how pg_locks stores it.
package cronlock

import "fmt"

// Key is an advisory lock key taken with the single-bigint form
// (pg_advisory_lock(key)): pg_locks stores it as classid (high 32 bits),
// objid (low 32 bits) and objsubid 1.
type Key int64

// Is is the SQL condition that the pg_locks row alias is this lock, in any
// mode, granted or awaited, in any database.
func (k Key) Is(alias string) string {
	return fmt.Sprintf(`%[1]s.locktype = 'advisory' AND %[1]s.classid = %[2]d AND %[1]s.objid = %[3]d AND %[1]s.objsubid = 1`,
		alias, uint32(uint64(k)>>32), uint32(k))
}

// HeldOrAwaitedBy is the SQL condition that backend pid (an SQL
// expression) holds this lock or waits for it, in any mode: the backend of
// a process that yields the lock (its new request queued behind the
// session it yields to) is alive.
func (k Key) HeldOrAwaitedBy(pid string) string {
	return fmt.Sprintf(`EXISTS (SELECT 1 FROM pg_locks l WHERE %s AND l.pid = %s)`, k.Is("l"), pid)
}

// HeldBy is the SQL condition that backend pid (an SQL expression) holds
// this lock, in any mode.
func (k Key) HeldBy(pid string) string {
	return fmt.Sprintf(`EXISTS (SELECT 1 FROM pg_locks l WHERE %s AND l.granted AND l.pid = %s)`, k.Is("l"), pid)
}
