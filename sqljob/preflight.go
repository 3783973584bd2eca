package sqljob

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/shard"
)

// Preflight prepares every statement of the file against the database
// without running it, so a missing table, column or function is reported
// with the file, section and line. PREPARE checks no privilege: the
// engine checks Needs before a run.
//
// Before that the check query lists everything the database lacks, all at
// once, and the facts are asked: the statements are compiled with the
// answers from here on.
func (j *Job) Preflight(ctx context.Context, q job.Querier) error {
	if err := j.missing(ctx, q); err != nil {
		return err
	}
	if err := j.askFacts(ctx, q); err != nil {
		return err
	}
	if err := j.compile(); err != nil {
		return err
	}
	conn, err := j.db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for _, l := range j.f.All() {
		c, err := j.f.CompileFacts(l.Statement, j.keyType, j.shardType, scopeOf(l.Section), j.facts)
		if err != nil {
			return err
		}
		if _, err := conn.Conn().Prepare(ctx, "", c.SQL); err != nil {
			return j.statementErr(l.Section, c, err)
		}
	}
	return nil
}

// scopeOf is how a section's statements are compiled for checking: the
// slice's as for a slice bounded at both ends.
func scopeOf(section string) jobfile.Scope {
	switch strings.Fields(section)[0] {
	case "slice", "then", "remaining", "batch":
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
	readRe  = regexp.MustCompile(`(?i)\b(?:FROM|JOIN|USING)\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)(?:\s+(?:AS\s+)?(\w+))?`)
	// A row-locking clause: FOR UPDATE (or NO KEY UPDATE, SHARE, KEY
	// SHARE) [OF alias, ...]. Locking a row needs UPDATE on its table.
	lockingRe = regexp.MustCompile(`(?i)\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b(?:\s+OF\s+(\w+(?:\s*,\s*\w+)*))?`)
)

// cteRe finds the names a WITH clause defines, which are no tables.
var cteRe = regexp.MustCompile(`(?i)(?:\bWITH(?:\s+RECURSIVE)?|,)\s+(\w+)\s*(?:\([^()]*\))?\s+AS\s+(?:NOT\s+)?(?:MATERIALIZED\s+)?\(`)

// sqlWords are keywords that may follow a table name where an alias
// could stand, or follow FROM where no table does.
var sqlWords = map[string]bool{"where": true, "join": true, "on": true, "using": true, "left": true, "right": true,
	"inner": true, "full": true, "cross": true, "group": true, "order": true, "limit": true, "for": true,
	"set": true, "returning": true, "with": true, "union": true, "natural": true, "lateral": true, "offset": true,
	"window": true, "having": true, "except": true, "intersect": true, "tablesample": true,
	"of": true, "skip": true, "nowait": true, "only": true, "select": true, "values": true, "unnest": true}

// Needs lists the privileges the job's statements need (see the package
// function Needs).
func (j *Job) Needs() []job.Need { return Needs(j.f) }

// Needs lists the privileges the file's statements need, in a stable
// order: SELECT on what they read, UPDATE, INSERT or DELETE on what they
// write, and SELECT and UPDATE on the split table.
func Needs(f *jobfile.File) []job.Need {
	seen := map[job.Need]bool{}
	var out []job.Need
	var ctes map[string]bool
	add := func(priv, table string) {
		n := job.Need{Privilege: priv, Table: strings.ToLower(table)}
		if sqlWords[n.Table] || ctes[n.Table] || strings.HasPrefix(n.Table, "pg_") || strings.HasPrefix(n.Table, "pg_catalog.") {
			return
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	if f.Split != nil {
		add("SELECT", f.Split.Table)
	}
	for _, l := range f.All() {
		sql := jobfile.Code(l.Statement.SQL)
		ctes = map[string]bool{}
		for _, m := range cteRe.FindAllStringSubmatch(sql, -1) {
			ctes[strings.ToLower(m[1])] = true
		}
		for _, at := range writeRe.FindAllStringSubmatchIndex(sql, -1) {
			m := []string{sql[at[0]:at[1]], sql[at[2]:at[3]], sql[at[4]:at[5]]}
			if before := strings.Fields(strings.ToUpper(sql[:at[0]])); len(before) > 0 && (before[len(before)-1] == "FOR" || before[len(before)-1] == "KEY") {
				continue // a row-locking clause, not a write
			}
			priv := strings.ToUpper(strings.Fields(m[1])[0])
			add(priv, m[2])
			// An UPDATE or DELETE with a WHERE reads its target too.
			add("SELECT", m[2])
		}
		aliases := map[string]string{}
		for _, at := range readRe.FindAllStringSubmatchIndex(sql, -1) {
			if at[0] > 0 && sql[at[0]-1] == '@' {
				continue // a parameter such as @from
			}
			m := []string{sql[at[0]:at[1]], sql[at[2]:at[3]], ""}
			if at[4] >= 0 {
				m[2] = sql[at[4]:at[5]]
			}
			add("SELECT", m[1])
			aliases[strings.ToLower(m[1])] = m[1]
			if a := strings.ToLower(m[2]); a != "" && !sqlWords[a] {
				aliases[a] = m[1]
			}
		}
		for _, m := range lockingRe.FindAllStringSubmatch(sql, -1) {
			if m[1] == "" { // every table the query reads
				for _, t := range aliases {
					add("UPDATE", t)
				}
				continue
			}
			for _, a := range strings.Split(m[1], ",") {
				if t, ok := aliases[strings.ToLower(strings.TrimSpace(a))]; ok {
					add("UPDATE", t)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b job.Need) int { return strings.Compare(a.Table+" "+a.Privilege, b.Table+" "+b.Privilege) })
	return out
}

// Preview tells the size of a run and what the dry-run section reports.
func (j *Job) Preview(ctx context.Context, tx pgx.Tx, opts job.PreviewOpts) (job.Preview, error) {
	var p job.Preview
	var err error
	if j.f.PlanMonths {
		return j.previewMonths(ctx, tx, opts)
	}
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

// previewMonths lists a month-planned job's slices in one pass over the
// whole range: a run plans the same slices piece by piece (a month's
// windows depend on its days only). The totals ride along on the largest
// slices as window aggregates (computed before the LIMIT).
func (j *Job) previewMonths(ctx context.Context, tx pgx.Tx, opts job.PreviewOpts) (job.Preview, error) {
	var p job.Preview
	plan, args := j.monthPieces(0).Plan(checkpoint.LowerBound(opts.RangeFrom), checkpoint.UpperBound(), opts.MaxSliceRows)
	args = append(args, opts.Largest)
	rows, err := tx.Query(ctx, `SELECT shard::text, lo, hi, est_rows,
		count(*) OVER (), sum(est_rows) OVER ()::bigint FROM (`+plan+`) src
		ORDER BY est_rows DESC, shard, lo LIMIT $`+strconv.Itoa(len(args)), args...)
	if err != nil {
		return p, err
	}
	p.Largest, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard.Slice, error) {
		var s shard.Slice
		err := r.Scan(&s.Workspace, &s.From, &s.To, &s.EstRows, &p.Slices, &p.Rows)
		return s, err
	})
	if err != nil {
		return p, err
	}
	p.Summary, err = j.Table(ctx, tx, j.f.DryRun)
	return p, err
}
