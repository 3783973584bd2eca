package engine

import (
	"log/slog"
	"sync"
	"time"

	"github.com/shardfill/shardfill/shard"
)

// FailureSummaryEvery is how often the log sums up the slices that failed
// with a cause already logged. One cause can fail thousands of slices: the
// first of each cause is logged at once, the rest only counted.
const FailureSummaryEvery = 30 * time.Second

// failureLog logs permanent slice failures grouped by cause: the first
// slice of each cause as an ERROR line, then, at most every
// FailureSummaryEvery and when the pool stops, how many more failed with
// it.
type failureLog struct {
	log *slog.Logger

	mu       sync.Mutex
	groups   map[string]*failureGroup
	order    []string
	lastSum  time.Time
	everySum time.Duration
}

type failureGroup struct {
	total, unreported int64
	example           string
}

func newFailureLog(log *slog.Logger) *failureLog {
	return &failureLog{log: log, groups: map[string]*failureGroup{}, lastSum: time.Now(), everySum: FailureSummaryEvery}
}

// add records that sl failed permanently with cause (the error without the
// slice in it).
func (f *failureLog) add(sl shard.Slice, attempt int, cause error) {
	key := cause.Error()
	f.mu.Lock()
	g, seen := f.groups[key]
	if !seen {
		g = &failureGroup{example: sl.String()}
		f.groups[key] = g
		f.order = append(f.order, key)
	}
	g.total++
	if seen {
		g.unreported++
	}
	due := time.Since(f.lastSum) >= f.everySum
	f.mu.Unlock()
	if !seen {
		f.log.Error("slice failed; further slices failing with the same error are counted, not listed",
			"slice", sl.String(), "attempt", attempt, "err", key)
	}
	if due {
		f.flush()
	}
}

// flush logs, per cause, the failures not yet reported.
func (f *failureLog) flush() {
	f.mu.Lock()
	type line struct {
		cause, example string
		more, total    int64
	}
	var lines []line
	for _, key := range f.order {
		if g := f.groups[key]; g.unreported > 0 {
			lines = append(lines, line{key, g.example, g.unreported, g.total})
			g.unreported = 0
		}
	}
	f.lastSum = time.Now()
	f.mu.Unlock()
	for _, l := range lines {
		f.log.Error("more slices failed with the same error", "slices", l.more, "total_with_this_error", l.total,
			"first", l.example, "err", l.cause)
	}
}
