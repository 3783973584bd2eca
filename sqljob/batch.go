package sqljob

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/jobs"
	"github.com/shardfill/shardfill/shard"
)

// Batched is a job with batch forms, planned by months (the rollup is
// one): its batches send all their statements in one round trip
// (engine.Queuer); its runs may be limited to recent history, and its
// output is verified month by month and mended a slice at a time.
type Batched struct{ *Job }

// Sliced is a job with a slice section: its slices run statement by
// statement (engine.SliceRunner).
type Sliced struct{ *Job }

// Engine is j as the engine runs it: a *Batched when the file has batch
// forms, else a *Sliced.
func (j *Job) Engine() any {
	if len(j.f.Batches) > 0 {
		return &Batched{j}
	}
	return &Sliced{j}
}

// Of returns the job file behind a job the engine runs, if it is one.
func Of(j any) (*Job, bool) {
	switch x := j.(type) {
	case *Batched:
		return x.Job, true
	case *Sliced:
		return x.Job, true
	case *Job:
		return x, true
	}
	return nil, false
}

// rangeCost weighs a row read through time against one read through a
// shard: a batch read through time reads every shard's rows in its span
// and keeps its own, so it pays for rows it does not keep; the factor
// leaves small shards' batches on the by-shard path.
const rangeCost = 2

// pathOf picks the batch form for b from the planner's row counts: through
// its shards (what they hold over the run) or through time (what every
// shard holds in the batch's windows), and, through time, without the
// join to the ranges when every slice covers the whole span, one per
// shard.
func pathOf(b shard.Batch) string {
	if b.WindowRows == 0 || rangeCost*b.WindowRows >= b.WorkspaceRows {
		return "by-shard"
	}
	lo, hi := b.Bounds()
	spans := b.Spans()
	for i, s := range spans {
		if !s.From.Equal(lo) || !s.To.Equal(hi) || (i > 0 && spans[i-1].Workspace == s.Workspace) {
			return "by-range"
		}
	}
	return "by-window"
}

// Queue appends to tx the statements of the batch form the batch's cost
// picks; *written receives the rows its INSERT and UPDATE statements
// affect. The engine's names: @shards, @los, @his (the batch's ranges,
// a shard's adjacent slices merged), @lo, @hi (their span), @read_from
// (the least of the slices' read_from; all history when one has none)
// and @watermark (the run's watermark target; NULL outside a run).
func (b *Batched) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	spans := batch.Spans()
	shards := make([]string, len(spans))
	los, his := make([]time.Time, len(spans)), make([]time.Time, len(spans))
	for i, s := range spans {
		shards[i], los[i], his[i] = s.Workspace, s.From, s.To
	}
	lo, hi := batch.Bounds()
	var watermark *time.Time
	if at := batch.WatermarkTarget(); !at.IsZero() {
		watermark = &at
	}
	names := map[string]any{"shards": shards, "los": los, "his": his, "lo": lo, "hi": hi,
		"read_from": batch.ReadFrom(), "watermark": watermark}
	count := func(ct pgconn.CommandTag) error {
		*written += ct.RowsAffected()
		return nil
	}
	for _, st := range b.batches[pathOf(batch)] {
		q := tx.Queue(st.SQL, b.bind(st.Compiled, names)...)
		if st.writes {
			q.Exec(count)
		}
	}
}

// batchStatement is a compiled statement of a batch form, and whether
// the rows it affects are rows it wrote (INSERT or UPDATE; a DELETE only
// clears the way).
type batchStatement struct {
	jobfile.Compiled
	writes bool
}

// bind binds c's names: the engine's from names, the rest the job's
// parameters.
func (j *Job) bind(c jobfile.Compiled, names map[string]any) []any {
	out := make([]any, len(c.Names))
	for i, name := range c.Names {
		if v, ok := names[name]; ok {
			out[i] = v
			continue
		}
		if v := j.values[name]; v != nil {
			out[i] = *v
		}
	}
	return out
}

// Apply replaces one slice's output inside tx, outside any run (verify
// --repair, benchmarks): the slice as a batch of its own. It returns the
// rows written.
func (b *Batched) Apply(ctx context.Context, tx pgx.Tx, s shard.Slice) (int64, error) {
	batch, err := shard.NewBatch([]shard.Slice{s})
	if err != nil {
		return 0, err
	}
	var stmts pgx.Batch
	var written int64
	b.Queue(&stmts, batch, &written)
	if err := tx.SendBatch(ctx, &stmts).Close(); err != nil {
		return 0, fmt.Errorf("%s: %w", s, err)
	}
	return written, nil
}

// months compiles a statement of a month-planned section with the facts
// the preflight learnt (false before it: every fact is known from Open
// on, and the file was checked when it was parsed).
func (j *Job) months(sec *jobfile.Section) jobfile.Compiled {
	c, err := j.f.CompileFacts(sec.Statements[0], jobfile.Timestamptz, j.shardType, jobfile.Scope{Whole: true}, j.facts)
	if err != nil {
		panic(fmt.Sprintf("sqljob: %s of a parsed file does not compile: %v", sec.Name, err))
	}
	return c
}

// monthPieces plans the job piece by piece over whole months with its
// plan and bounds queries.
func (j *Job) monthPieces(pieceRows int64) checkpoint.MonthPieces {
	plan, bounds := j.months(j.f.Plan), j.months(j.f.Bounds)
	return checkpoint.MonthPieces{
		Plan: func(from, to pgtype.Timestamptz, sliceRows int64) (string, []any) {
			return plan.SQL, j.bind(plan, map[string]any{"from": from, "to": to, "slice_rows": sliceRows})
		},
		Bounds: func(from pgtype.Timestamptz, pieceRows int64) (string, []any) {
			return bounds.SQL, j.bind(bounds, map[string]any{"from": from, "piece_rows": pieceRows})
		},
		PieceRows: pieceRows,
	}
}

// HasRowsBefore reports whether the job's rows reach back before at, a
// month start: history a run limited to start at at would leave out (the
// bounds query's first column, the oldest month, from all history).
func (b *Batched) HasRowsBefore(ctx context.Context, q job.Querier, at time.Time) (bool, error) {
	sql, args := b.monthPieces(0).Bounds(checkpoint.LowerBound(nil), 0)
	bounds, err := checkpoint.ReadBounds(ctx, q, sql, args)
	if err != nil {
		return false, fmt.Errorf("look for rows before %s: %w", at.Format(time.DateOnly), err)
	}
	return bounds.First != nil && bounds.First.Before(at), nil
}

// Extent is the time the job's data cover (the extent query): nil when
// there is none.
func (b *Batched) Extent(ctx context.Context, q job.Querier) (first, last *time.Time, err error) {
	c := b.months(b.f.Extent)
	if err := q.QueryRow(ctx, c.SQL, b.bind(c, nil)...).Scan(&first, &last); err != nil {
		return nil, nil, fmt.Errorf("extent (%s:%d): %w", b.f.Path, c.Line, err)
	}
	return first, last, nil
}

// Verify runs the verify query over [from, to), a month: every shard
// whose output differs, with the differing rows.
func (b *Batched) Verify(ctx context.Context, q job.Querier, from, to time.Time) ([]job.Mismatch, error) {
	c := b.months(b.f.Verify)
	rows, err := q.Query(ctx, c.SQL, b.bind(c, map[string]any{"from": from, "to": to})...)
	if err != nil {
		return nil, fmt.Errorf("verify %s (%s:%d): %w", shard.Period(from, to), b.f.Path, c.Line, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[job.Mismatch])
	if err != nil {
		return nil, fmt.Errorf("verify %s (%s:%d): %w", shard.Period(from, to), b.f.Path, c.Line, err)
	}
	return out, nil
}

// Verifies reports whether the job can check its output month by month.
func (b *Batched) Verifies() bool { return b.f.Verify != nil }

// compileBatches compiles every batch form for every path, with the facts.
func (j *Job) compileBatches() error {
	j.batches = map[string][]batchStatement{}
	for _, path := range jobfile.BatchPaths {
		var out []batchStatement
		for _, st := range j.f.Batch(path) {
			c, err := j.f.CompileFacts(st, jobfile.Timestamptz, j.shardType, jobfile.Scope{}, j.facts)
			if err != nil {
				return err
			}
			verb := jobfile.Verb(c.SQL)
			out = append(out, batchStatement{c, verb == "INSERT" || verb == "UPDATE"})
		}
		j.batches[path] = out
	}
	return nil
}

// missing runs the check query: everything the database lacks, each a
// row of text.
func (j *Job) missing(ctx context.Context, q job.Querier) error {
	if j.f.Check == nil {
		return nil
	}
	c, err := j.f.Compile(j.f.Check.Statements[0], "", "", jobfile.Scope{Whole: true})
	if err != nil {
		return err
	}
	rows, err := q.Query(ctx, c.SQL, j.bind(c, nil)...)
	if err != nil {
		return j.statementErr("check", c, err)
	}
	what, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return j.statementErr("check", c, err)
	}
	if len(what) > 0 {
		return &job.MissingError{Job: j.f.Name, Missing: what}
	}
	return nil
}

// askFacts asks the database the job's facts.
func (j *Job) askFacts(ctx context.Context, q job.Querier) error {
	facts := map[string]bool{}
	for _, sec := range j.f.Facts {
		c, err := j.f.Compile(sec.Statements[0], "", "", jobfile.Scope{Whole: true})
		if err != nil {
			return err
		}
		var holds *bool
		if err := q.QueryRow(ctx, c.SQL, j.bind(c, nil)...).Scan(&holds); err != nil {
			return j.statementErr(sec.Name, c, err)
		}
		facts[strings.TrimPrefix(sec.Name, "fact ")] = holds != nil && *holds
	}
	j.facts = facts
	return nil
}

// OpenShipped opens a job shipped with shardfill (package jobs) by name.
func OpenShipped(ctx context.Context, db *pgxpool.Pool, name string, params map[string]string) (*Job, error) {
	path, src, ok := jobs.Source(name)
	if !ok {
		return nil, fmt.Errorf("no shipped job %s", name)
	}
	f, err := jobfile.Parse(path, src)
	if err != nil {
		return nil, err
	}
	return Open(ctx, db, f, params)
}

// Default opens the default job (checkpoint.DefaultJob, the rollup), which
// takes no parameters.
func Default(ctx context.Context, db *pgxpool.Pool) (*Batched, error) {
	j, err := OpenShipped(ctx, db, checkpoint.DefaultJob, nil)
	if err != nil {
		return nil, err
	}
	b, ok := j.Engine().(*Batched)
	if !ok {
		return nil, fmt.Errorf("the default job %s has no batch forms", checkpoint.DefaultJob)
	}
	return b, nil
}
