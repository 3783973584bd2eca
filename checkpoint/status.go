package checkpoint

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// FailedSlice is a slice that ended with a permanent error.
type FailedSlice struct {
	ID        int64     `json:"id"`
	Workspace string    `json:"workspace_id"`
	From      time.Time `json:"from"`
	To        time.Time `json:"to"`
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error"`
}

// Status is a run as operators see it; the JSON names are part of the CLI
// contract (status --json).
type Status struct {
	RunID int64 `json:"run_id"`
	// State is one of the contract's planned|running|done|failed|
	// interrupted; a run replaced by --new-run reads interrupted, with
	// Superseded set.
	State           RunState      `json:"state"`
	Superseded      bool          `json:"superseded"`
	PlannedAt       time.Time     `json:"planned_at"`
	StartedAt       *time.Time    `json:"started_at"`
	FinishedAt      *time.Time    `json:"finished_at"`
	SlicesTotal     int64         `json:"slices_total"`
	SlicesDone      int64         `json:"slices_done"`
	SlicesFailed    int64         `json:"slices_failed"`
	SlicesPending   int64         `json:"slices_pending"`
	SlicesRunning   int64         `json:"slices_running"`
	RowsTotal       int64         `json:"rows_total"`
	RowsDone        int64         `json:"rows_done"`
	RowsPerSecond   float64       `json:"rows_per_second"`
	ETASeconds      *float64      `json:"eta_seconds"`
	Owners          []string      `json:"owners"`
	WatermarkTarget time.Time     `json:"watermark_target"`
	WatermarkAt     *time.Time    `json:"watermark_at"` // when this run stamped; null until then
	LastError       *string       `json:"last_error"`
	FailedSlices    []FailedSlice `json:"failed_slices"`

	// Planning: the run is still being planned piece by piece, so the
	// totals (slices_total, rows_total) count the pieces planned so far,
	// and the ETA is that of those.
	Planning bool `json:"planning"`
}

// Status reads run's progress. The rate is measured over the slices
// finished in the last minute, so it reflects the current pace of every
// process working on the run.
func (s *Store) Status(ctx context.Context, run *Run) (*Status, error) {
	c, err := s.Counts(ctx, run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st := &Status{
		RunID: run.ID, State: run.State, PlannedAt: run.PlannedAt, StartedAt: run.StartedAt, FinishedAt: run.FinishedAt,
		SlicesTotal: c.Total, SlicesDone: c.Done, SlicesFailed: c.Failed, SlicesPending: c.Pending, SlicesRunning: c.Running,
		RowsTotal: run.RowsTotal, RowsDone: c.RowsDone, WatermarkTarget: run.WatermarkTarget, LastError: run.LastError,
		FailedSlices: []FailedSlice{}, Owners: []string{},
	}
	st.Planning = !run.PlanningDone && !run.Finished()
	if run.StampedAt != nil {
		st.WatermarkAt = &run.WatermarkTarget
	}
	if run.State == StateSuperseded {
		st.State, st.Superseded = StateInterrupted, true
	}
	if run.State == StateRunning {
		// A process that was killed could not say so. Every process that
		// works on one of this schema's runs holds the schema's membership
		// lock; if none does, nobody is working and the run is interrupted.
		// (The cron lock alone would count another schema's run, a repair,
		// or any other session that holds it.)
		members, err := s.Members(ctx, 0)
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		if len(members) == 0 {
			st.State = StateInterrupted
		}
	}
	var recent int64
	err = s.db.QueryRow(ctx, s.q(`
		SELECT coalesce(sum(est_rows), 0)::bigint FROM _SCHEMA_.slice
		WHERE run_id = $1 AND state = 'done' AND finished_at > now() - interval '1 minute'`), run.ID).Scan(&recent)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st.RowsPerSecond = float64(recent) / 60
	if left := run.RowsTotal - c.RowsDone; st.RowsPerSecond > 0 && c.Unfinished() > 0 {
		eta := float64(left) / st.RowsPerSecond
		st.ETASeconds = &eta
	}
	rows, err := s.db.Query(ctx, s.q(`SELECT DISTINCT owner FROM _SCHEMA_.slice
		WHERE run_id = $1 AND state = 'running' ORDER BY 1`), run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if st.Owners, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	rows, err = s.db.Query(ctx, s.q(`
		SELECT id, workspace_id::text, from_ts, to_ts, attempts, coalesce(error, '')
		FROM _SCHEMA_.slice WHERE run_id = $1 AND state = 'failed' ORDER BY id LIMIT 1000`), run.ID)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	st.FailedSlices, err = pgx.CollectRows(rows, pgx.RowToStructByPos[FailedSlice])
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return st, nil
}
