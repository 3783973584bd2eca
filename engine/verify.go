package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
)

// Verifier is the optional part of a Job that can check its own output and
// mend it outside a run.
type Verifier interface {
	// Extent is the time the raw rows and the rollup cover: the earliest
	// and latest instants of either, nil when both are empty.
	Extent(ctx context.Context, q job.Querier) (first, last *time.Time, err error)
	Verify(ctx context.Context, q job.Querier, from, to time.Time) ([]job.Mismatch, error)
	Apply(ctx context.Context, tx pgx.Tx, s shard.Slice) (int64, error)
	// Verifies reports whether the job has a verify query at all.
	Verifies() bool
}

// VerifyResult lists the (workspace, month) pairs whose rollup differs from
// the raw rows.
type VerifyResult struct {
	Months     int
	Mismatches []job.Mismatch
	Repaired   int
	// Remaining are the mismatches found again after the repair.
	Remaining []job.Mismatch
}

// Verify recomputes the rollup from the raw rows month by month (one
// statement per month keeps each comparison bounded) and lists every
// mismatching (workspace, month). With repair, it re-runs those slices
// under the cron lock and checks them again.
func (e *Engine) Verify(ctx context.Context, repair bool) (*VerifyResult, error) {
	v, ok := e.job.(Verifier)
	if !ok || !v.Verifies() {
		return nil, fmt.Errorf("this job cannot verify its output")
	}
	check := e.noteReadOnly
	if repair {
		check = func(ctx context.Context) error { return e.requireWritable(ctx, "a repair, which writes the rollup,") }
	}
	if err := check(ctx); err != nil {
		return nil, err
	}
	if err := e.Preflight(ctx, repair); err != nil {
		return nil, err
	}
	first, last, err := v.Extent(ctx, e.db)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	res := &VerifyResult{}
	if first == nil {
		return res, nil
	}
	if e.cfg.MonthsBack > 0 {
		from, err := e.monthsBackStart(ctx)
		if err != nil {
			return nil, err
		}
		first = &from
	}
	for m := shard.MonthStart(*first); !m.After(*last); m = shard.NextMonth(m) {
		got, err := v.Verify(ctx, e.db, m, shard.NextMonth(m))
		if err != nil {
			return nil, err
		}
		res.Months++
		res.Mismatches = append(res.Mismatches, got...)
	}
	if !repair || len(res.Mismatches) == 0 {
		return res, nil
	}
	if err := e.repair(ctx, v, res.Mismatches); err != nil {
		return res, err
	}
	res.Repaired = len(res.Mismatches)
	// Check each repaired month again: a repair that did not take (rows
	// written meanwhile, say) is reported, not assumed.
	res.Remaining = nil
	checked := map[time.Time]bool{}
	for _, m := range res.Mismatches {
		if checked[m.Month] {
			continue
		}
		checked[m.Month] = true
		got, err := v.Verify(ctx, e.db, m.Month, shard.NextMonth(m.Month))
		if err != nil {
			return res, err
		}
		res.Remaining = append(res.Remaining, got...)
	}
	return res, nil
}

// repair replaces the rollup of each mismatching (workspace, month) while
// holding the cron lock, as a run would.
func (e *Engine) repair(ctx context.Context, v Verifier, bad []job.Mismatch) error {
	lock, err := acquireLock(ctx, e.db, e.job.Lock(), nil, e.cfg.Logger)
	if err != nil {
		return err
	}
	defer lock.Close()
	// A repair beside a live run would replace buckets under its feet; the
	// run's own slices repair what they write anyway.
	members, err := e.store.Members(ctx, 0)
	if err != nil {
		return err
	}
	if len(members) > 0 {
		return &ConfigError{fmt.Sprintf("refusing to repair while %d processes work on a run of this schema (lock backends %v): "+
			"let the run finish (it rewrites what it covers) or stop it, then repair", len(members), members)}
	}
	for _, m := range bad {
		sl := shard.Slice{Workspace: m.Workspace, From: m.Month, To: shard.NextMonth(m.Month)}
		err := pgx.BeginFunc(ctx, e.db, func(tx pgx.Tx) error {
			_, err := v.Apply(ctx, tx, sl)
			return err
		})
		if err != nil {
			return interrupted(ctx, fmt.Errorf("repair %s: %w", sl, err))
		}
		e.cfg.Logger.Info("repaired", "workspace", m.Workspace, "month", m.Month.UTC().Format("2006-01"))
	}
	return nil
}
