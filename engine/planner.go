package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/shardfill/shardfill/checkpoint"
)

// planner plans the pieces of a run that are not planned yet, beside the
// workers: the run's first piece (its newest month) is planned when the run
// is created, so work starts at once, and the older months follow while
// the workers are busy. Every process working on the run plans: the pieces
// take turns per schema and each is planned once, by whichever process
// gets to it, so a run whose planner died is planned on by the others, or
// by the next process to resume it.
type planner struct {
	e     *Engine
	runID int64

	mu   sync.Mutex
	wake chan struct{} // closed and replaced when a piece is planned
}

func newPlanner(e *Engine, runID int64) *planner {
	return &planner{e: e, runID: runID, wake: make(chan struct{})}
}

// run plans pieces until the run is fully planned. A transient error is
// retried like a claim's; ErrSuperseded and ctx's end stop it.
func (p *planner) run(ctx context.Context) error {
	failures := 0
	for {
		done, err := p.e.store.PlanNext(ctx, p.runID, p.e.job.Pieces(p.e.cfg.PlanPieceRows), p.e.cfg.PlanTimeout)
		switch {
		case err == nil:
			failures = 0
			p.signal()
			if p.e.cfg.OnEvent != nil {
				if run, err := p.e.store.GetRun(ctx, p.runID); err == nil && run != nil {
					p.e.cfg.OnEvent(Event{Kind: PiecePlanned, Run: run})
				}
			}
			if done {
				return nil
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, checkpoint.ErrSuperseded) || !retryable(err) || failures+1 >= p.e.cfg.MaxAttempts:
			return err
		default:
			failures++
			p.e.cfg.Logger.Warn("planning failed; retrying", "attempt", failures, "err", err)
			if err := sleep(ctx, backoff(p.e.cfg.Backoff, failures)); err != nil {
				return err
			}
		}
	}
}

// signal wakes the workers waiting for slices: a piece was planned.
func (p *planner) signal() {
	p.mu.Lock()
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

// idle waits until the next piece is planned here, or d, or ctx's end:
// an idle worker waits for slices held elsewhere or not planned yet
// (planned by another process, it finds them after d). A nil planner (the
// run is fully planned) waits d.
func (p *planner) idle(ctx context.Context, d time.Duration) error {
	if p == nil {
		return sleep(ctx, d)
	}
	p.mu.Lock()
	wake := p.wake
	p.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wake:
		return nil
	case <-t.C:
		return nil
	}
}

// planAll plans every piece left, for --plan-only.
func (e *Engine) planAll(ctx context.Context, runID int64) error {
	return newPlanner(e, runID).run(ctx)
}
