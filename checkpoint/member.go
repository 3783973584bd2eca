package checkpoint

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// memberClass is the first key of the membership lock: every process that
// works on a job's runs in a schema holds (memberClass, hashtext('member:'
// || schema || '/' || job)) in shared mode on its lock connection for as
// long as it works. jobClass is the first key of the job lock, (jobClass,
// hashtext('job:' || job)), which it holds beside it whatever the schema.
// The job's own lock says that some backfill works on the database; the
// two say for which job and which checkpoint schema, so a process can tell
// its own run's processes from another schema's run of the same job, which
// must never write the same rows at the same time, while runs of other
// jobs go on beside it.
//
// tableClass is the first key of the table locks: every process holds
// (tableClass, oid) in shared mode for each table its job writes, so a
// process of another job writing the same table is seen and refused
// (two jobs replacing the same rows would each take the other's writes
// for stale).
const (
	memberClass = 4247
	jobClass    = 4248
	tableClass  = 4249
)

// ErrSuperseded stops a process whose run was replaced by a newer one
// (planned with NewRun) while it worked: its claims and commits are refused
// from then on, so it cannot write beside the new run.
var ErrSuperseded = errors.New("the run was superseded by a newer run")

// Join takes the membership and job locks in the transaction open on conn,
// the process's lock connection, which holds them until that transaction
// ends.
func (s *Store) Join(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1, hashtext($2)), pg_advisory_xact_lock_shared($3, hashtext($4))`,
		memberClass, s.memberName(), jobClass, s.jobName())
	if err == nil && len(s.tables) > 0 {
		_, err = conn.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1, t::regclass::oid::int) FROM unnest($2::text[]) AS t
			WHERE to_regclass(t) IS NOT NULL`, tableClass, s.tables)
	}
	if err != nil {
		return fmt.Errorf("join schema %s for job %s: %w", s.schema, s.job, err)
	}
	return nil
}

// Writes records the tables the store's job writes (see tableClass).
func (s *Store) Writes(tables []string) *Store {
	c := *s
	c.tables = tables
	return &c
}

// OtherJobs describes the backends of other jobs that write a table this
// store's job writes ("" when none), on this database, in any schema,
// but self (see OtherSchemas). A process takes its table locks before it
// looks, so two processes of two such jobs starting together both see the
// other and both refuse.
func (s *Store) OtherJobs(ctx context.Context, self int) (string, error) {
	if len(s.tables) == 0 {
		return "", nil
	}
	var who string
	err := s.db.QueryRow(ctx, `
		SELECT coalesce(string_agg(DISTINCT format('pid %s (%s) writes %s', l.pid,
		                coalesce(nullif(a.application_name, ''), 'no application_name'), l.objid::regclass), ', '), '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objsubid = 2 AND l.granted
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.objid IN (SELECT to_regclass(t)::oid FROM unnest($2::text[]) AS t)
		  AND l.pid <> $4
		  AND NOT EXISTS (SELECT FROM pg_locks m WHERE m.pid = l.pid AND `+heldLock("m", jobClass, "$3")+`)`,
		tableClass, s.tables, s.jobName(), self).Scan(&who)
	if err != nil {
		return "", fmt.Errorf("look for other jobs writing the same tables: %w", err)
	}
	return who, nil
}

func (s *Store) memberName() string { return "member:" + s.schema + "/" + s.job }
func (s *Store) jobName() string    { return "job:" + s.job }

// heldLock is the SQL condition that the pg_locks row alias is a granted
// two-key advisory lock of class in this database, keyed by hashtext of
// the SQL expression name.
func heldLock(alias string, class int, name string) string {
	return fmt.Sprintf(`%[1]s.locktype = 'advisory' AND %[1]s.classid = %[2]d AND %[1]s.objsubid = 2 AND %[1]s.granted
	AND %[1]s.objid = hashtext(%[3]s)::oid
	AND %[1]s.database = (SELECT oid FROM pg_database WHERE datname = current_database())`, alias, class, name)
}

// Members returns the backend pids working on this schema's runs of the
// job, but except (0 for none): the processes alive right now, whether or
// not they hold a claim at this instant.
func (s *Store) Members(ctx context.Context, except int) ([]int, error) {
	rows, err := s.db.Query(ctx, `SELECT l.pid FROM pg_locks l
		WHERE `+heldLock("l", memberClass, "$1")+` AND l.pid <> $2 ORDER BY 1`,
		s.memberName(), except)
	if err != nil {
		return nil, fmt.Errorf("list the processes of schema %s: %w", s.schema, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int])
}

// OtherSchemas describes the backends that work on the same job for
// another checkpoint schema of this database ("" when none): another
// backfill of the same rows, which two runs must never write at once.
//
// self is the backend of this process's lock connection: a backend that
// is ending releases its locks one after another, and this process's own,
// killed, must not read as another's.
func (s *Store) OtherSchemas(ctx context.Context, self int) (string, error) {
	var who string
	err := s.db.QueryRow(ctx, `
		SELECT coalesce(string_agg(format('pid %s (%s)', l.pid, coalesce(nullif(a.application_name, ''), 'no application_name')), ', '), '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE `+heldLock("l", jobClass, "$2")+` AND l.pid <> $3
		  AND NOT EXISTS (SELECT FROM pg_locks m WHERE m.pid = l.pid AND `+heldLock("m", memberClass, "$1")+`)`,
		s.memberName(), s.jobName(), self).Scan(&who)
	if err != nil {
		return "", fmt.Errorf("look for backfills of other schemas: %w", err)
	}
	return who, nil
}
