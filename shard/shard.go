package shard

import (
	"fmt"
	"time"
)

// Slice is one unit of work: replace the rollup rows of Workspace whose
// bucket hour lies in [From, To) with the aggregate of the raw rows.
type Slice struct {
	RunID     int64
	ID        int64
	Workspace string // uuid in text form; a job file's shard value, if any
	From, To  time.Time
	// Lo and Hi bound a job file's slice: its key range [Lo, Hi) as text in
	// the key's type, nil at an open end.
	Lo, Hi *string
	// KeyRange: a job file's slice, bounded by Lo and Hi rather than by a
	// time window.
	KeyRange bool
	EstRows  int64     // raw rows counted when the run was planned
	ReadFrom time.Time // the job need not read data older than this; zero: read all
	Attempt  int       // claim counter; with the owner it fences a worker
	// WatermarkTarget is the run's: the dirty keys of the slice's buckets
	// queued before it are covered by the slice's read, and the slice drops
	// them. Zero outside a run (verify --repair): the queue is left alone.
	WatermarkTarget time.Time
}

// String names a slice the way operators read it in logs and errors.
func (s Slice) String() string {
	if s.KeyRange {
		return fmt.Sprintf("slice %d (%s%s)", s.ID, shardOf(s.Workspace), KeyPeriod(s.Lo, s.Hi))
	}
	return fmt.Sprintf("slice %d (workspace %s, %s)", s.ID, s.Workspace, Period(s.From, s.To))
}

func shardOf(v string) string {
	if v == "" {
		return ""
	}
	return "shard " + v + ", "
}

// KeyPeriod renders a key range [lo, hi), "…" at an open end.
func KeyPeriod(lo, hi *string) string {
	end := func(v *string) string {
		if v == nil {
			return "…"
		}
		return *v
	}
	return "[" + end(lo) + ", " + end(hi) + ")"
}

// Period renders [from, to) compactly: "2026-03" for a whole UTC month,
// otherwise both bounds in RFC 3339.
func Period(from, to time.Time) string {
	from, to = from.UTC(), to.UTC()
	if from.Equal(MonthStart(from)) && to.Equal(NextMonth(from)) {
		return from.Format("2006-01")
	}
	return from.Format(time.RFC3339) + ".." + to.Format(time.RFC3339)
}

// MonthStart is the start of t's calendar month in UTC. Months are cut in UTC
// so the session TimeZone never moves a row from one slice to another.
func MonthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// NextMonth is the start of the UTC month after t's.
func NextMonth(t time.Time) time.Time {
	return MonthStart(t).AddDate(0, 1, 0)
}

// MonthsBackStart is the first instant covered by --months-back n at now:
// the start of the UTC month n-1 months before now's, so n=1 is the current
// month alone.
func MonthsBackStart(now time.Time, n int) time.Time {
	return MonthStart(now).AddDate(0, -(n - 1), 0)
}
