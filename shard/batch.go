package shard

import (
	"fmt"
	"sort"
	"time"
)

// Span is one workspace's half-open UTC time range [From, To) in a batch.
type Span struct {
	Workspace string
	From, To  time.Time
}

// Batch is several slices run as one transaction and one statement: tiny
// slices share the fixed costs (round trips, statement start, commit) while
// each keeps its own checkpoint row. Claims fill a batch with slices of one
// time window; any set of slices is a valid batch. The estimates let the
// job pick the cheaper access path.
type Batch struct {
	Slices []Slice // sorted by workspace, then start
	// Rows is the raw rows of the batch's slices, estimated at planning.
	Rows int64
	// WorkspaceRows is the raw rows of the batch's workspaces over the
	// whole run: what reading through their tasks costs.
	WorkspaceRows int64
	// WindowRows is the raw rows of every workspace in the batch's
	// windows: what reading through time costs. 0 when not known.
	WindowRows int64
}

// NewBatch groups slices; it sorts them by workspace and start.
func NewBatch(slices []Slice) (Batch, error) {
	if len(slices) == 0 {
		return Batch{}, fmt.Errorf("empty batch")
	}
	b := Batch{Slices: append([]Slice(nil), slices...)}
	sort.Slice(b.Slices, func(i, j int) bool {
		si, sj := b.Slices[i], b.Slices[j]
		if si.Workspace != sj.Workspace {
			return si.Workspace < sj.Workspace
		}
		return si.From.Before(sj.From)
	})
	for _, s := range b.Slices {
		b.Rows += s.EstRows
	}
	return b, nil
}

// Spans merges the slices of each workspace where one ends as the next
// begins, so a workspace whose months all landed in one batch is read in
// one sweep.
func (b Batch) Spans() []Span {
	var out []Span
	for _, s := range b.Slices {
		if n := len(out); n > 0 && out[n-1].Workspace == s.Workspace && !s.From.After(out[n-1].To) {
			if s.To.After(out[n-1].To) {
				out[n-1].To = s.To
			}
			continue
		}
		out = append(out, Span{Workspace: s.Workspace, From: s.From, To: s.To})
	}
	return out
}

// Bounds is the time the batch covers: from its earliest start to its
// latest end.
func (b Batch) Bounds() (from, to time.Time) {
	for i, s := range b.Slices {
		if i == 0 || s.From.Before(from) {
			from = s.From
		}
		if i == 0 || s.To.After(to) {
			to = s.To
		}
	}
	return from, to
}

// ReadFrom is how far back the batch's statements must read: the earliest
// of its slices' bounds. A slice without a bound (zero) makes it zero: read
// all history.
func (b Batch) ReadFrom() time.Time {
	var at time.Time
	for i, s := range b.Slices {
		if s.ReadFrom.IsZero() {
			return time.Time{}
		}
		from := s.ReadFrom
		if from.After(s.From) {
			from = s.From
		}
		if i == 0 || from.Before(at) {
			at = from
		}
	}
	return at
}

// WatermarkTarget is the earliest of its slices' (all slices of one run
// share it); zero when any slice has none.
func (b Batch) WatermarkTarget() time.Time {
	var at time.Time
	for i, s := range b.Slices {
		if s.WatermarkTarget.IsZero() {
			return time.Time{}
		}
		if i == 0 || s.WatermarkTarget.Before(at) {
			at = s.WatermarkTarget
		}
	}
	return at
}

// Workspaces counts the distinct workspaces of the batch.
func (b Batch) Workspaces() int {
	n := 0
	for i, s := range b.Slices {
		if i == 0 || s.Workspace != b.Slices[i-1].Workspace {
			n++
		}
	}
	return n
}

// String names the batch for logs and errors.
func (b Batch) String() string {
	if len(b.Slices) == 1 {
		return b.Slices[0].String()
	}
	from, to := b.Bounds()
	if n := b.Workspaces(); n > 1 {
		return fmt.Sprintf("%d slices of %d workspaces (%s)", len(b.Slices), n, Period(from, to))
	}
	return fmt.Sprintf("%d slices of workspace %s (%s)", len(b.Slices), b.Slices[0].Workspace, Period(from, to))
}
