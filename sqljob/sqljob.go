// Package sqljob runs a job file (package jobfile) under the engine: it
// binds the operator's parameters, learns from the database what the
// file leaves to it (the lock's key, the key's and shard's types, the
// answers to its facts), checks every statement and privilege before
// anything runs, and does a slice's work statement by statement
// ([Sliced]) or a batch's in one round trip ([Batched], the rollup).
package sqljob

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/shard"
)

// Job is a job file bound to its parameters and a database: what every
// job does for the engine (engine.Job). [Job.Engine] adds how it does its
// slices' work.
type Job struct {
	f         *jobfile.File
	db        *pgxpool.Pool
	values    map[string]*string
	lock      job.Lock
	keyType   jobfile.Type // the type slices' bounds are kept in
	shardType jobfile.Type // "" without a shard
	hasShard  bool
	// slice, then and remaining by scope (open below, open above).
	slice, then, remaining map[jobfile.Scope][]jobfile.Compiled
	// keyset: the repeated slice statement of a split job returns the keys
	// it changed (RETURNING, the key first), so each pass starts after the
	// last key the one before changed instead of at the slice's start.
	keyset bool
	// facts are the answers to the file's facts: false until Preflight
	// asks the database (a fact not confirmed does not hold).
	facts map[string]bool
	// batches are the batch forms by path, compiled with the facts.
	batches map[string][]batchStatement
}

// returning finds a RETURNING clause.
var returning = regexp.MustCompile(`(?i)\bRETURNING\b`)

// keysetSQL wraps a slice statement that returns its keys: how many rows
// it changed, and the greatest key among them (as text, in the key's
// order; no max() is needed, which uuid lacks).
func keysetSQL(stmt string) string {
	return `WITH changed AS (` + stmt + `) SELECT count(*), (SELECT k::text FROM changed AS c(k) ORDER BY 1 DESC LIMIT 1) FROM changed`
}

// maxPasses bounds a repeated slice statement: one that still changes
// rows after this many passes cannot have a predicate that excludes the
// rows it changed, and would never end.
const maxPasses = 100_000

// Open binds f to the operator's parameters (name → text) and to db: it
// validates the parameters, evaluates the lock's key and learns the key's
// type (split jobs: from the catalog; planned jobs: from the plan's result
// columns). Errors in what the operator gave or the file says are
// *jobfile.Error or *jobfile.ParamError.
func Open(ctx context.Context, db *pgxpool.Pool, f *jobfile.File, params map[string]string) (*Job, error) {
	var now time.Time
	if err := db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return nil, fmt.Errorf("job %s: %w", f.Name, err)
	}
	values, err := f.Values(params, now)
	if err != nil {
		return nil, err
	}
	j := &Job{f: f, db: db, values: values, facts: map[string]bool{}}
	for _, sec := range f.Facts {
		j.facts[strings.TrimPrefix(sec.Name, "fact ")] = false
	}
	if err := j.bindLock(ctx); err != nil {
		return nil, err
	}
	if f.Split != nil {
		err = j.splitType(ctx)
	} else {
		err = j.planTypes(ctx)
	}
	if err != nil {
		return nil, err
	}
	j.keyset = f.Repeat && f.Split != nil && returning.MatchString(f.Slice.Statements[0].SQL)
	return j, j.compile()
}

// LockOf is the lock f's runs hold, bound to its key: what reading and
// steering its runs needs, without the parameters a run needs.
func LockOf(ctx context.Context, db *pgxpool.Pool, f *jobfile.File) (job.Lock, error) {
	j := &Job{f: f, db: db}
	err := j.bindLock(ctx)
	return j.lock, err
}

// fileErr is an error of the job file at a line of a section.
func (j *Job) fileErr(section string, line int, format string, args ...any) error {
	return &jobfile.Error{Path: j.f.Path, Section: section, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// bindLock evaluates the lock's key; a job without a lock line holds one
// keyed by its name, which keeps two runs of it apart but nobody else out.
func (j *Job) bindLock(ctx context.Context) error {
	l := j.f.Lock
	if l == nil {
		err := j.db.QueryRow(ctx, `SELECT hashtextextended('shardfill:' || $1, 0)`, j.f.Name).Scan(&j.lock.Key)
		j.lock.Fence = checkpoint.FenceNone
		return err
	}
	if err := j.db.QueryRow(ctx, `SELECT (`+l.Key+`)::bigint`).Scan(&j.lock.Key); err != nil {
		return j.fileErr("", l.Line, "lock key %s: %s", l.Key, pgMessage(err))
	}
	j.lock.Exclusive = l.Exclusive
	j.lock.Yield = l.Yield && !l.Exclusive
	switch {
	case !l.Check:
		j.lock.Fence = checkpoint.FenceNone
	case l.Exclusive || !l.Yield:
		// The transaction cannot take a shared lock beside an exclusive
		// holder, nor wait for a waiter it never yields to.
		j.lock.Fence = checkpoint.FenceHeld
	default:
		j.lock.Fence = checkpoint.FenceShared
	}
	return nil
}

// splitTypes reads the split column's type, which must be NOT NULL (a
// NULL key lies in no range) and ordered the way ranges need.
func (j *Job) splitType(ctx context.Context) error {
	s := j.f.Split
	var typ *string
	var notNull *bool
	err := j.db.QueryRow(ctx, `
		SELECT t.typname::text, a.attnotnull
		FROM (SELECT to_regclass($1) AS rel) r
		LEFT JOIN pg_attribute a ON a.attrelid = r.rel AND a.attname = $2 AND NOT a.attisdropped
		LEFT JOIN pg_type t ON t.oid = a.atttypid`,
		s.Table, s.Column).Scan(&typ, &notNull)
	switch {
	case err != nil:
		return j.fileErr("", s.Line, "split %s.%s: %s", s.Table, s.Column, pgMessage(err))
	case typ == nil:
		return j.fileErr("", s.Line, "split %s.%s: no such table or column (run the application's migrations first?)", s.Table, s.Column)
	case !*notNull:
		return j.fileErr("", s.Line, "split %s.%s: the column may be NULL, and a NULL key lies in no slice; split on a NOT NULL column", s.Table, s.Column)
	}
	switch *typ { // pg_type's names
	case "int8", "int4", "int2":
		j.keyType = jobfile.Bigint
	case "uuid":
		j.keyType = jobfile.UUID
	case "timestamptz":
		j.keyType = jobfile.Timestamptz
	default:
		return j.fileErr("", s.Line, "split %s.%s: the column is %s; a key column is bigint, integer, uuid or timestamptz", s.Table, s.Column, *typ)
	}
	return nil
}

// planTypes prepares the plan statement and reads its columns' types.
func (j *Job) planTypes(ctx context.Context) error {
	st := j.f.Plan.Statements[0]
	c, err := j.f.Compile(st, "", "", jobfile.Scope{Whole: true})
	if err != nil {
		return err
	}
	fields, err := j.describe(ctx, c)
	if err != nil {
		return j.statementErr("plan", c, err)
	}
	types := map[string]string{}
	for _, f := range fields {
		types[f.name] = f.typ
	}
	for _, col := range []string{"lo", "hi", "est_rows"} {
		if _, ok := types[col]; !ok {
			return j.fileErr("plan", st.Line, "the plan returns no column %s (it returns shard, lo, hi, est_rows)", col)
		}
	}
	if types["lo"] != types["hi"] {
		return j.fileErr("plan", st.Line, "the plan's lo is %s but its hi %s: both bound one key", types["lo"], types["hi"])
	}
	j.keyType = jobfile.Type(types["lo"])
	if t, ok := types["shard"]; ok {
		j.hasShard, j.shardType = true, jobfile.Type(t)
	}
	if j.f.PlanMonths {
		// Its slices are kept as (shard, time window), the model batches
		// and window claims are built on.
		want := map[string]string{"shard": "uuid", "lo": "timestamp with time zone", "read_from": "timestamp with time zone"}
		for _, col := range []string{"shard", "lo", "read_from"} {
			if types[col] != want[col] {
				return j.fileErr("plan", st.Line, "a plan by months returns shard uuid, lo and hi timestamptz, est_rows and read_from timestamptz (its %s is %q)", col, types[col])
			}
		}
		j.keyType = jobfile.Timestamptz
	}
	return nil
}

type field struct{ name, typ string }

// describe prepares c on a connection of its own, without running it, and
// returns its result columns.
func (j *Job) describe(ctx context.Context, c jobfile.Compiled) ([]field, error) {
	conn, err := j.db.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	sd, err := conn.Conn().Prepare(ctx, "", c.SQL)
	if err != nil {
		return nil, err
	}
	out := make([]field, len(sd.Fields))
	for i, f := range sd.Fields {
		out[i].name = f.Name
		if err := conn.QueryRow(ctx, `SELECT format_type($1, NULL)`, f.DataTypeOID).Scan(&out[i].typ); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// statementErr says where in the file a statement failed to prepare.
func (j *Job) statementErr(section string, c jobfile.Compiled, err error) error {
	line := c.Line
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Position > 0 {
		line = c.LineAt(int(pg.Position))
	}
	return j.fileErr(section, line, "%s", pgMessage(err))
}

// pgMessage is a database error as an operator reads it.
func pgMessage(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		msg := pg.Message
		if pg.Hint != "" {
			msg += " (" + pg.Hint + ")"
		}
		return msg
	}
	return err.Error()
}

// scopes are the shapes of slice a statement is compiled for.
var scopes = []jobfile.Scope{{}, {LoOpen: true}, {HiOpen: true}, {LoOpen: true, HiOpen: true}}

// compile compiles the slice statements once per scope: an open end is
// left out of the statement rather than bound as NULL, so each variant
// keeps the plan of a plain range.
func (j *Job) compile() error {
	j.slice, j.then, j.remaining = map[jobfile.Scope][]jobfile.Compiled{}, map[jobfile.Scope][]jobfile.Compiled{}, map[jobfile.Scope][]jobfile.Compiled{}
	for _, sc := range scopes {
		for _, part := range []struct {
			sec *jobfile.Section
			to  map[jobfile.Scope][]jobfile.Compiled
		}{{&j.f.Slice, j.slice}, {j.f.Then, j.then}, {j.f.Remaining, j.remaining}} {
			if part.sec == nil {
				continue
			}
			for _, st := range part.sec.Statements {
				c, err := j.f.CompileFacts(st, j.keyType, j.shardType, sc, j.facts)
				if err != nil {
					return err
				}
				part.to[sc] = append(part.to[sc], c)
			}
		}
	}
	return j.compileBatches()
}

// args binds c's names for slice sl (nil: the whole job).
func (j *Job) args(c jobfile.Compiled, sl *shard.Slice) []any {
	out := make([]any, len(c.Names))
	for i, name := range c.Names {
		var v *string
		switch {
		case name == "lo" && sl != nil:
			v = sl.Lo
		case name == "hi" && sl != nil:
			v = sl.Hi
		case name == "shard" && sl != nil && j.hasShard:
			v = &sl.Workspace
		case name == "lo" || name == "hi" || name == "shard":
		default:
			v = j.values[name]
		}
		if v == nil {
			out[i] = nil
		} else {
			out[i] = *v
		}
	}
	return out
}

// Name is the job file's name.
func (j *Job) Name() string { return j.f.Name }

// Version is the job file's: a hash of its statements.
func (j *Job) Version() string { return j.f.Version }

// Lock is the job file's lock, bound to its key.
func (j *Job) Lock() job.Lock { return j.lock }

// Tables are the tables the file says the job writes.
func (j *Job) Tables() []string { return j.f.Tables }

// Params are the operator's parameters, normalised.
func (j *Job) Params() map[string]*string { return j.values }

// File is the job file.
func (j *Job) File() *jobfile.File { return j.f }

// Pieces cuts the split column's key space into ranges, or runs the
// job's plan.
func (j *Job) Pieces(pieceRows int64) checkpoint.Pieces {
	if j.f.PlanMonths {
		return j.monthPieces(pieceRows)
	}
	if s := j.f.Split; s != nil {
		k := checkpoint.KeyRanges{Table: s.Table, Column: s.Column, Type: string(j.keyType), Rows: s.Rows}
		if s.Where != "" {
			c, err := j.f.Compile(jobfile.Statement{SQL: s.Where, Line: s.Line}, j.keyType, "", jobfile.Scope{Whole: true})
			if err == nil { // checked by Open's compile of the same text
				k.Where, k.Args = c.SQL, j.args(c, nil)
			}
		}
		return k
	}
	c, _ := j.f.Compile(j.f.Plan.Statements[0], "", "", jobfile.Scope{Whole: true})
	return checkpoint.Planned{Query: c.SQL, Args: j.args(c, nil), HasShard: j.hasShard, KeyType: string(j.keyType), ShardType: string(j.shardType)}
}

// RunSlice runs the slice statement (again and again with repeat, until
// it changes no row), then the then statements, in tx. A repeated slice
// is done when remaining finds nothing left of it; otherwise rows it must
// change were locked by other sessions (SKIP LOCKED passed them over), and
// it is handed back for later.
func (j *Sliced) RunSlice(ctx context.Context, tx pgx.Tx, sl shard.Slice) (checkpoint.Verdict, int64, error) {
	sc := jobfile.Scope{LoOpen: sl.Lo == nil, HiOpen: sl.Hi == nil}
	var rows int64
	at := sl // the range a pass covers: with a keyset, from the last key changed on
	for pass := 1; ; pass++ {
		n, last, err := j.pass(ctx, tx, &at)
		if err != nil {
			return checkpoint.Verdict{}, rows, err
		}
		rows += n
		if !j.f.Repeat || n == 0 {
			break
		}
		if pass == maxPasses {
			return checkpoint.Verdict{}, rows, fmt.Errorf("the slice statement (%s:%d) still changes rows after %d passes: its predicate must exclude the rows it has changed",
				j.f.Path, j.f.Slice.Statements[0].Line, pass)
		}
		if last != nil {
			// Rows before it that this pass skipped (locked) are found by
			// remaining, over the whole slice, and hand it back.
			at.Lo = last
		}
	}
	for _, c := range j.then[sc] {
		if _, err := tx.Exec(ctx, c.SQL, j.args(c, &sl)...); err != nil {
			return checkpoint.Verdict{}, rows, err
		}
	}
	if !j.f.Repeat {
		return checkpoint.Verdict{Done: true}, rows, nil
	}
	left, err := j.count(ctx, tx, j.remaining[sc][0], &sl)
	if err != nil || left == 0 {
		return checkpoint.Verdict{Done: true}, rows, err
	}
	return checkpoint.Verdict{Progress: rows > 0, MaxStalls: j.f.MaxStalls,
		Why: fmt.Sprintf("%d rows still to do (remaining), none of which the slice statement could change: locked by other sessions, or the two statements disagree", left)}, rows, nil
}

// pass runs the slice statement once over sl's range: the rows it changed,
// and with a keyset the greatest key among them.
func (j *Job) pass(ctx context.Context, tx pgx.Tx, sl *shard.Slice) (int64, *string, error) {
	stmt := j.slice[jobfile.Scope{LoOpen: sl.Lo == nil, HiOpen: sl.Hi == nil}][0]
	if !j.keyset {
		tag, err := tx.Exec(ctx, stmt.SQL, j.args(stmt, sl)...)
		return tag.RowsAffected(), nil, err
	}
	var n int64
	var last *string
	err := tx.QueryRow(ctx, keysetSQL(stmt.SQL), j.args(stmt, sl)...).Scan(&n, &last)
	return n, last, err
}

// count runs a remaining query.
func (j *Job) count(ctx context.Context, q job.Querier, c jobfile.Compiled, sl *shard.Slice) (int64, error) {
	var n *int64
	if err := q.QueryRow(ctx, c.SQL, j.args(c, sl)...).Scan(&n); err != nil {
		return 0, fmt.Errorf("remaining (%s:%d): %w", j.f.Path, c.Line, err)
	}
	if n == nil {
		return 0, nil
	}
	return *n, nil
}

// Stamp runs the finish statements, once, in the fenced transaction that
// closes the run.
func (j *Job) Stamp(ctx context.Context, tx job.Querier, at time.Time, from *time.Time) (bool, error) {
	if j.f.Finish == nil {
		return true, nil
	}
	names := map[string]any{"watermark": at, "from": checkpoint.LowerBound(from)}
	for i, st := range j.f.Finish.Statements {
		c, err := j.f.CompileFacts(st, j.keyType, j.shardType, jobfile.Scope{Whole: true}, j.facts)
		if err != nil {
			return false, err
		}
		tag, err := tx.Exec(ctx, c.SQL, j.bind(c, names)...)
		if err != nil {
			return false, fmt.Errorf("finish (%s:%d): %w", j.f.Path, c.Line, err)
		}
		// A job planned by months stamps nothing when its first
		// statement, an UPDATE, changes no row (the state row it stamps
		// is missing): the rest is skipped and the caller warns.
		if i == 0 && j.f.PlanMonths && jobfile.Verb(c.SQL) == "UPDATE" && tag.RowsAffected() == 0 {
			return false, nil
		}
	}
	return true, nil
}

// Remaining counts what the whole job has left to do (false: the job
// says nothing of it).
func (j *Job) Remaining(ctx context.Context, q job.Querier) (int64, bool, error) {
	if j.f.Remaining == nil {
		return 0, false, nil
	}
	c, err := j.f.Compile(j.f.Remaining.Statements[0], j.keyType, j.shardType, jobfile.Scope{Whole: true})
	if err != nil {
		return 0, false, err
	}
	n, err := j.count(ctx, q, c, nil)
	return n, true, err
}

// Table runs a query of section (verify, dry-run) and returns its rows as
// text; nil when the file has no such section.
func (j *Job) Table(ctx context.Context, q job.Querier, sec *jobfile.Section) (*job.Table, error) {
	if sec == nil {
		return nil, nil
	}
	c, err := j.f.Compile(sec.Statements[0], j.keyType, j.shardType, jobfile.Scope{Whole: true})
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, c.SQL, j.args(c, nil)...)
	if err != nil {
		return nil, fmt.Errorf("%s (%s:%d): %w", sec.Name, j.f.Path, c.Line, err)
	}
	defer rows.Close()
	t := &job.Table{}
	for _, f := range rows.FieldDescriptions() {
		t.Columns = append(t.Columns, f.Name)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			row[i] = render(v)
		}
		t.Rows = append(t.Rows, row)
	}
	return t, rows.Err()
}

// render is a value as the operator reads it.
func render(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case [16]byte:
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	}
	return strings.TrimSpace(fmt.Sprint(v))
}
