package job

import (
	"time"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/shard"
)

// Lock is the advisory lock a job's processes hold while they work on a
// run, on a connection of their own, and how they hold it.
type Lock struct {
	// Key is the single-bigint advisory lock key.
	Key int64
	// Exclusive: one process at a time holds it (a second one of the same
	// run waits); otherwise every process holds it in shared mode, which
	// keeps out whoever takes it exclusively (a cron tick, a serial
	// command started by mistake).
	Exclusive bool
	// Fence is what each slice transaction checks of it.
	Fence checkpoint.Fence
	// Yield: a session that waits for the lock exclusively (the
	// application's own transactions) gets it for its turn, and the run
	// goes on after; otherwise it waits until the run ends.
	Yield bool
}

// PreviewOpts say what a preview covers.
type PreviewOpts struct {
	Largest      int        // how many of the largest slices to list
	RangeFrom    *time.Time // a plan by months: the lower time bound; nil = all history
	MaxSliceRows int64      // a plan by months: the most rows per window
}

// Preview is what a run would do, computed without writing anything.
type Preview struct {
	Slices  int64
	Rows    int64
	Largest []shard.Slice // biggest slices first
	// Summary is what the job's dry run reports, a table (nil: none).
	Summary *Table
}

// Table is a query's result as text, for the operator.
type Table struct {
	Columns []string
	Rows    [][]string
}
