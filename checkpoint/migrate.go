package checkpoint

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed schema.sql
var schemaSQL string

// schemaObjects are the tables and indexes schema.sql creates.
var schemaObjects = func() []string {
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^CREATE (?:TABLE|INDEX) IF NOT EXISTS (?:_SCHEMA_\.)?(\w+)`).FindAllStringSubmatch(schemaSQL, -1) {
		names = append(names, m[1])
	}
	return names
}()

// createSchemaSQL is schema.sql's first statement. Migrate leaves it out
// when the schema exists: CREATE SCHEMA IF NOT EXISTS checks the CREATE
// privilege on the database before it looks, so a role that owns the
// schema but may not create schemas would be refused.
const createSchemaSQL = "CREATE SCHEMA IF NOT EXISTS _SCHEMA_;\n"

var tablesSQL = func() string {
	if strings.Count(schemaSQL, createSchemaSQL) != 1 {
		panic("checkpoint: schema.sql no longer holds " + createSchemaSQL)
	}
	return strings.Replace(schemaSQL, createSchemaSQL, "", 1)
}()

// UntrustedError refuses checkpoint tables that another role controls:
// whoever owns the schema or a table in it (or may add a trigger to one)
// can make this role run their code with its privileges, on the rollup
// too. Nothing was written.
type UntrustedError struct {
	Schema string
	Role   string   // current_user
	Why    []string // each object not this role's, and by whom
}

func (e *UntrustedError) Error() string {
	return fmt.Sprintf("checkpoint schema %s is not controlled by role %s or a role it is a member of: %s",
		e.Schema, e.Role, strings.Join(e.Why, "; "))
}

// Migrate creates the checkpoint schema and tables if they do not exist,
// after making sure that what exists is this role's (see [UntrustedError]).
// Migrations of one schema take turns: concurrent CREATE … IF NOT EXISTS
// can still collide in the catalogs.
func (s *Store) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, turnSQL, s.turn("migrate")...); err != nil {
			return err
		}
		exists, err := s.trusted(ctx, tx)
		if err != nil {
			return err
		}
		complete, err := s.complete(ctx, tx)
		if err != nil || complete {
			return err
		}
		ddl := schemaSQL
		if exists {
			ddl = tablesSQL
		}
		_, err = tx.Exec(ctx, s.q(ddl))
		return err
	})
	var untrusted *UntrustedError
	if err != nil && !errors.As(err, &untrusted) {
		return fmt.Errorf("create checkpoint schema %s: %w", s.schema, err)
	}
	return err
}

// trusted reports whether the schema exists, and refuses it with an
// [*UntrustedError] unless the current role (or a role it is a member of)
// owns it and each of shardfill's tables in it, and no trigger on them
// calls a function of another role's (a role granted TRIGGER could add
// one).
func (s *Store) trusted(ctx context.Context, tx pgx.Tx) (bool, error) {
	var exists bool
	var role string
	var why []string
	err := tx.QueryRow(ctx, `
		SELECT n.oid IS NOT NULL, current_user::text,
		       ARRAY(SELECT format('the schema is owned by %s', pg_get_userbyid(n.nspowner))
		             WHERE NOT pg_has_role(current_user, n.nspowner, 'MEMBER')
		             UNION ALL
		             SELECT format('%s is owned by %s', c.relname, pg_get_userbyid(c.relowner))
		             FROM pg_class c
		             WHERE c.relnamespace = n.oid AND c.relname = ANY ($2)
		               AND NOT pg_has_role(current_user, c.relowner, 'MEMBER')
		             UNION ALL
		             SELECT format('%s has trigger %s calling %s, owned by %s', c.relname, t.tgname, p.oid::regproc, pg_get_userbyid(p.proowner))
		             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
		             WHERE c.relnamespace = n.oid AND c.relname = ANY ($2) AND NOT t.tgisinternal
		               AND NOT pg_has_role(current_user, p.proowner, 'MEMBER'))
		FROM (SELECT) AS one LEFT JOIN pg_namespace n ON n.nspname = $1`, s.schema, schemaObjects).Scan(&exists, &role, &why)
	if err != nil {
		return false, fmt.Errorf("check the owner of checkpoint schema %s: %w", s.schema, err)
	}
	if len(why) > 0 {
		return exists, &UntrustedError{Schema: s.schema, Role: role, Why: why}
	}
	return exists, nil
}

// complete reports whether the checkpoint schema already has every table,
// index and column, so that a process joining a run takes no DDL lock at
// all: CREATE INDEX IF NOT EXISTS and ALTER TABLE lock the slice table
// even when there is nothing to do, which would stall, or deadlock with,
// the processes already working on the run.
func (s *Store) complete(ctx context.Context, tx pgx.Tx) (bool, error) {
	qualified := make([]string, len(schemaObjects))
	for i, name := range schemaObjects {
		qualified[i] = s.ident + "." + name
	}
	tables, columns := make([]string, len(addedColumns)), make([]string, len(addedColumns))
	for i, c := range addedColumns {
		tables[i], columns[i] = s.ident+"."+c.table, c.column
	}
	var complete bool
	err := tx.QueryRow(ctx, `
		SELECT (SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n)
		   AND (SELECT bool_and(EXISTS (SELECT FROM pg_attribute a
		                                WHERE a.attrelid = to_regclass(c.tab) AND a.attname = c.col AND NOT a.attisdropped))
		        FROM unnest($2::text[], $3::text[]) AS c(tab, col))`,
		qualified, tables, columns).Scan(&complete)
	return complete, err
}

// addedColumns are the columns schema.sql adds to tables that earlier
// versions created (ALTER TABLE … ADD COLUMN IF NOT EXISTS): a schema
// without one of them is not complete.
var addedColumns = []struct{ table, column string }{
	{"slice", "window_rows"},
	{"slice", "cause"},
	{"process", "effective_rate"},
	{"run", "planning_ended_at"},
	{"run", "plan_key"},
	{"slice", "stalls"},
	{"slice", "retry_at"},
}

// Installed reports whether the checkpoint tables exist, so read-only
// commands can answer "no run yet" without creating anything.
func (s *Store) Installed(ctx context.Context) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.ident+".slice").Scan(&ok)
	return ok, err
}
