package sqljob

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
)

// Preflight prepares every statement of the file against the database
// without running it, so a missing table, column or function is reported
// with the file, section and line. PREPARE checks no privilege: the
// engine checks Needs before a run.
func (j *Job) Preflight(ctx context.Context, _ job.Querier) error {
	for _, l := range j.f.All() {
		c, err := j.f.Compile(l.Statement, j.keyType, j.shardType, scopeOf(l.Section))
		if err != nil {
			return err
		}
		if _, err := j.describe(ctx, c); err != nil {
			return j.statementErr(l.Section, c, err)
		}
	}
	return nil
}

// scopeOf is how a section's statements are compiled for checking: the
// slice's as for a slice bounded at both ends.
func scopeOf(section string) jobfile.Scope {
	switch section {
	case "slice", "then", "remaining":
		return jobfile.Scope{}
	}
	return jobfile.Scope{Whole: true}
}

// Statement verbs and the relations they name: a write needs its
// privilege on its target, and every relation read (FROM, JOIN) needs
// SELECT. Names that are no table (a CTE, a function) are skipped by the
// catalog lookup.
var (
	writeRe = regexp.MustCompile(`(?i)\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)`)
	readRe  = regexp.MustCompile(`(?i)\b(?:FROM|JOIN|USING)\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)`)
)

// Needs lists the privileges the job's statements need (see the package
// function Needs).
func (j *Job) Needs() []job.Need { return Needs(j.f) }

// Needs lists the privileges the file's statements need, in a stable
// order: SELECT on what they read, UPDATE, INSERT or DELETE on what they
// write, and SELECT and UPDATE on the split table.
func Needs(f *jobfile.File) []job.Need {
	seen := map[job.Need]bool{}
	var out []job.Need
	add := func(priv, table string) {
		n := job.Need{Privilege: priv, Table: strings.ToLower(table)}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	if f.Split != nil {
		add("SELECT", f.Split.Table)
	}
	for _, l := range f.All() {
		sql := l.Statement.SQL
		for _, m := range writeRe.FindAllStringSubmatch(sql, -1) {
			priv := strings.ToUpper(strings.Fields(m[1])[0])
			add(priv, m[2])
			// An UPDATE or DELETE with a WHERE reads its target too.
			add("SELECT", m[2])
		}
		for _, m := range readRe.FindAllStringSubmatch(sql, -1) {
			add("SELECT", m[1])
		}
	}
	slices.SortFunc(out, func(a, b job.Need) int { return strings.Compare(a.Table+" "+a.Privilege, b.Table+" "+b.Privilege) })
	return out
}

// Preview tells the size of a run and what the dry-run section reports.
func (j *Job) Preview(ctx context.Context, tx pgx.Tx, opts job.PreviewOpts) (job.Preview, error) {
	var p job.Preview
	var err error
	if s := j.f.Split; s != nil {
		sql, args := j.Pieces(0).(checkpoint.KeyRanges).CountSQL()
		if err := tx.QueryRow(ctx, sql, args...).Scan(&p.Rows); err != nil {
			return p, fmt.Errorf("count the rows of %s: %w", s.Table, err)
		}
		p.Slices = max((p.Rows+s.Rows-1)/s.Rows, 1)
	} else {
		c, _ := j.f.Compile(j.f.Plan.Statements[0], "", "", jobfile.Scope{Whole: true})
		err := tx.QueryRow(ctx, `SELECT count(*), coalesce(sum(est_rows), 0)::bigint FROM (`+c.SQL+`) p`, j.args(c, nil)...).Scan(&p.Slices, &p.Rows)
		if err != nil {
			return p, j.statementErr("plan", c, err)
		}
	}
	p.Summary, err = j.Table(ctx, tx, j.f.DryRun)
	return p, err
}
