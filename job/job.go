package job

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is the part of pgx.Conn, pgxpool.Pool and pgx.Tx a job needs.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// MissingError lists everything the database lacks for a job (its check
// query's rows), so an operator fixes a half-migrated database in one go
// rather than one error at a time.
type MissingError struct {
	Job     string
	Missing []string
}

func (e *MissingError) Error() string {
	return "database is not ready for job " + e.Job + " (run the application's migrations first): missing " +
		strings.Join(e.Missing, ", ")
}

// Mismatch is a (shard, month) whose output differs from what the job's
// verify query expects.
type Mismatch struct {
	Workspace string // the shard
	Month     time.Time
	Rows      int64 // differing rows, counted in both directions
}
