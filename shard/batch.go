package shard

import (
	"fmt"
	"sort"
	"time"
)

// Range is a half-open UTC time range [From, To).
type Range struct{ From, To time.Time }

// Batch is several slices of one workspace run as one transaction: tiny
// slices share the fixed costs (round trips, statement start, commit) while
// each keeps its own checkpoint row. The estimates let the job pick the
// cheaper access path for the batch.
type Batch struct {
	Workspace string
	Slices    []Slice // sorted by From
	// Rows is the raw rows of the batch's slices, estimated at planning.
	Rows int64
	// WorkspaceRows is the raw rows of the workspace from ReadFrom on: what
	// reading the batch through the workspace's tasks costs.
	WorkspaceRows int64
	// RangeRows is the raw rows of every workspace within the batch's
	// ranges (prorated for slices that overlap them in part).
	RangeRows int64
}

// NewBatch groups slices of one workspace; it sorts them by start.
func NewBatch(slices []Slice) (Batch, error) {
	if len(slices) == 0 {
		return Batch{}, fmt.Errorf("empty batch")
	}
	b := Batch{Workspace: slices[0].Workspace, Slices: append([]Slice(nil), slices...)}
	sort.Slice(b.Slices, func(i, j int) bool { return b.Slices[i].From.Before(b.Slices[j].From) })
	for _, s := range b.Slices {
		if s.Workspace != b.Workspace {
			return Batch{}, fmt.Errorf("batch mixes workspaces %s and %s", b.Workspace, s.Workspace)
		}
		b.Rows += s.EstRows
	}
	return b, nil
}

// Ranges merges the slices' ranges where one ends as the next begins, so a
// workspace whose months all landed in one batch is read in one sweep.
func (b Batch) Ranges() []Range {
	var out []Range
	for _, s := range b.Slices {
		if n := len(out); n > 0 && !s.From.After(out[n-1].To) {
			if s.To.After(out[n-1].To) {
				out[n-1].To = s.To
			}
			continue
		}
		out = append(out, Range{From: s.From, To: s.To})
	}
	return out
}

// ReadFrom is how far back the batch's statements must read: the earliest
// of its slices' bounds (a slice without one reads from its start).
func (b Batch) ReadFrom() time.Time {
	var at time.Time
	for i, s := range b.Slices {
		from := s.ReadFrom
		if from.IsZero() || from.After(s.From) {
			from = s.From
		}
		if i == 0 || from.Before(at) {
			at = from
		}
	}
	return at
}

// String names the batch for logs and errors.
func (b Batch) String() string {
	if len(b.Slices) == 1 {
		return b.Slices[0].String()
	}
	return fmt.Sprintf("%d slices of workspace %s (%s..%s)", len(b.Slices), b.Workspace,
		b.Slices[0].From.UTC().Format("2006-01-02"), b.Slices[len(b.Slices)-1].To.UTC().Format("2006-01-02"))
}
