package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of /proc/<pid>/stat's CPU times (USER_HZ, 100
// on Linux).
const clockTicks = 100

// procStat reads a process's parent pid and its CPU times in ticks:
// utime + stime, and cutime + cstime (its reaped children's).
func procStat(pid int) (ppid int, own, children int64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// The command name is in parentheses and may hold spaces: the fields
	// after the last ')' start with the state (field 3).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
	// f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
	return int(num(1)), num(11) + num(12), num(13) + num(14), true
}

// ServerCPU is the CPU time spent so far by the server of db: the
// postmaster, its live children (backends, parallel workers, WAL writer,
// checkpointer, autovacuum) and, through the postmaster's cutime/cstime,
// every child that has exited. The difference of two readings is what the
// server spent in between. 0 when /proc cannot be read (an external server
// on another host).
func ServerCPU(ctx context.Context, db *DB) time.Duration {
	var backend int
	if err := db.Pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return 0
	}
	postmaster, _, _, ok := procStat(backend)
	if !ok {
		return 0
	}
	_, own, children, ok := procStat(postmaster)
	if !ok {
		return 0
	}
	ticks := own + children
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, own, _, ok := procStat(pid); ok && ppid == postmaster {
			ticks += own
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// waitBackendsGone waits (at most two seconds) until no other session is
// connected to db: the backends of a process that just exited end on
// their own time, and their CPU only counts once the postmaster reaped
// them.
func waitBackendsGone(ctx context.Context, db *DB) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type = 'client backend'
			  AND pid <> ALL (SELECT pg_backend_pid())
`).Scan(&n)
		if err != nil || int32(n) <= db.Pool.Stat().TotalConns()-1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the postmaster reaps them
}
