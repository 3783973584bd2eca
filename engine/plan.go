package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
)

// Plan is what a run would do, computed without writing anything.
type Plan struct {
	job.Preview
	RangeFrom *time.Time // --months-back lower bound; nil = all history
	// Resume is the unfinished run that `run` would resume instead of
	// planning (nil when it would plan a new one).
	Resume *checkpoint.Run
	// Counts are Resume's slices by state.
	Counts checkpoint.Counts
}

// Plan reports the slices a run would have. It only reads: it neither
// creates the checkpoint schema nor takes any lock.
func (e *Engine) Plan(ctx context.Context, largest int) (*Plan, error) {
	if err := e.noteReadOnly(ctx); err != nil {
		return nil, err
	}
	if err := e.job.Preflight(ctx, e.db); err != nil {
		return nil, err
	}
	from, err := e.rangeFrom(ctx)
	if err != nil {
		return nil, err
	}
	p := &Plan{RangeFrom: from}
	if err := e.resumable(ctx, p); err != nil {
		return nil, err
	}
	// One pass, nothing written, in a read-only transaction (which a
	// standby takes too), under PlanTimeout rather than the role's
	// statement_timeout.
	err = pgx.BeginTxFunc(ctx, e.db, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, checkpoint.TimeoutSQL, checkpoint.TimeoutSetting(e.cfg.PlanTimeout)); err != nil {
			return err
		}
		p.Preview, err = e.job.Preview(ctx, tx, job.PreviewOpts{Largest: largest, RangeFrom: from, MaxSliceRows: e.cfg.MaxSliceRows})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return p, nil
}

// resumable fills in the unfinished run that `run` would resume, if any.
func (e *Engine) resumable(ctx context.Context, p *Plan) error {
	if e.cfg.NewRun {
		return nil
	}
	installed, err := e.store.Installed(ctx)
	if err != nil || !installed {
		return err
	}
	run, err := e.store.LatestRun(ctx)
	if err != nil || run == nil || run.Finished() {
		return err
	}
	p.Resume = run
	p.Counts, err = e.store.Counts(ctx, run.ID)
	return err
}
