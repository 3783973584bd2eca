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
// with the file, section and line, and then checks the privileges the
// statements need, which PREPARE does not.
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
	return j.privileges(ctx)
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

// MissingPrivilegeError lists the privileges the role lacks for the job's
// statements, with the GRANT statements that would give them.
type MissingPrivilegeError struct {
	Role   string
	Grants []string
}

func (e *MissingPrivilegeError) Error() string {
	return fmt.Sprintf("role %s lacks privileges the job needs; run as an owner of the tables:\n  %s",
		e.Role, strings.Join(e.Grants, "\n  "))
}

// Statement verbs and the relations they name: a write needs its
// privilege on its target, and every relation read (FROM, JOIN) needs
// SELECT. Names that are no table (a CTE, a function) are skipped by the
// catalog lookup.
var (
	writeRe = regexp.MustCompile(`(?i)\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)`)
	readRe  = regexp.MustCompile(`(?i)\b(?:FROM|JOIN|USING)\s+((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)`)
)

// Need is one privilege on one relation.
type Need struct{ Privilege, Table string }

// Needs lists the privileges the file's statements need, in a stable
// order: SELECT on what they read, UPDATE, INSERT or DELETE on what they
// write, and SELECT and UPDATE on the split table.
func Needs(f *jobfile.File) []Need {
	seen := map[Need]bool{}
	var out []Need
	add := func(priv, table string) {
		n := Need{priv, strings.ToLower(table)}
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
	slices.SortFunc(out, func(a, b Need) int { return strings.Compare(a.Table+" "+a.Privilege, b.Table+" "+b.Privilege) })
	return out
}

// privileges refuses a role that lacks a privilege a statement needs.
func (j *Job) privileges(ctx context.Context) error {
	needs := Needs(j.f)
	privs, tables := make([]string, len(needs)), make([]string, len(needs))
	for i, n := range needs {
		privs[i], tables[i] = n.Privilege, n.Table
	}
	rows, err := j.db.Query(ctx, `
		SELECT format('GRANT %s ON %s TO %I;', n.priv, n.rel::regclass, current_user)
		FROM (SELECT p AS priv, to_regclass(t) AS rel FROM unnest($1::text[], $2::text[]) AS u(p, t)) n
		JOIN pg_class c ON c.oid = n.rel AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		WHERE NOT has_table_privilege(n.rel, n.priv)`, privs, tables)
	if err != nil {
		return fmt.Errorf("job %s: check privileges: %w", j.f.Name, err)
	}
	grants, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("job %s: check privileges: %w", j.f.Name, err)
	}
	if len(grants) == 0 {
		return nil
	}
	var role string
	if err := j.db.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return err
	}
	return &MissingPrivilegeError{Role: role, Grants: grants}
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
