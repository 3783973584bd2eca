package checkpoint

import (
	"context"
	_ "embed"
	"fmt"
	"regexp"

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

// Migrate creates the checkpoint schema and tables if they do not exist.
// Migrations of one schema take turns: concurrent CREATE … IF NOT EXISTS
// can still collide in the catalogs.
func (s *Store) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, turnSQL, s.turn("migrate")...); err != nil {
			return err
		}
		complete, err := s.complete(ctx, tx)
		if err != nil || complete {
			return err
		}
		_, err = tx.Exec(ctx, s.q(schemaSQL))
		return err
	})
	if err != nil {
		return fmt.Errorf("create checkpoint schema %s: %w", s.schema, err)
	}
	return nil
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
	var complete bool
	err := tx.QueryRow(ctx, `
		SELECT (SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n)
		   AND EXISTS (SELECT FROM pg_attribute
		               WHERE attrelid = to_regclass($2) AND attname = 'window_rows' AND NOT attisdropped)
		   AND EXISTS (SELECT FROM pg_attribute
		               WHERE attrelid = to_regclass($3) AND attname = 'planning_ended_at' AND NOT attisdropped)`,
		qualified, s.ident+".slice", s.ident+".run").Scan(&complete)
	return complete, err
}

// Installed reports whether the checkpoint tables exist, so read-only
// commands can answer "no run yet" without creating anything.
func (s *Store) Installed(ctx context.Context) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.ident+".slice").Scan(&ok)
	return ok, err
}
