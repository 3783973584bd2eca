package checkpoint

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/cronlock"
)

// Store reads and writes the checkpoint tables of one schema.
type Store struct {
	db     *pgxpool.Pool
	schema string // as given, for messages and lock keys
	ident  string // sanitized, for SQL
	lock   cronlock.Key
	job    string // the job whose runs this store reads and writes
	fence  Fence
	tables []string // the tables the job writes (see Writes)
}

// Fence is what a slice transaction checks of the job's lock before it
// commits (see Fenced).
type Fence int

const (
	// FenceShared: the claimant's lock connection holds the lock, and the
	// transaction takes it in shared mode too, failing with
	// ErrLockContended while a session waits for it exclusively (the
	// rollup's cron lock, which the engine yields).
	FenceShared Fence = iota
	// FenceHeld: the claimant's lock connection holds the lock (a lock
	// held exclusively, or one that is never yielded).
	FenceHeld
	// FenceNone: only that the run is not superseded (a job whose lock
	// keeps nothing out that a slice could race).
	FenceNone
)

// New returns a Store for the checkpoint tables in schema. cronLockKey is
// the advisory lock the job's incremental cron entry takes: every process
// working on a run holds it in shared mode, and the store's fence and
// liveness checks look for it.
func New(db *pgxpool.Pool, schema string, cronLockKey int64) *Store {
	return NewJob(db, schema, DefaultJob, cronLockKey, FenceShared)
}

// DefaultJob is the job a run belongs to unless it says otherwise: the
// hourly rollup, whose runs were planned before jobs had names.
const DefaultJob = "task-usage-hourly"

// NewJob returns a Store for the runs of job in schema; lockKey is the
// advisory lock the job's processes hold while they work (see New), and
// fence what its slice transactions check of it.
func NewJob(db *pgxpool.Pool, schema, job string, lockKey int64, fence Fence) *Store {
	return &Store{db: db, schema: schema, ident: pgx.Identifier{schema}.Sanitize(), lock: cronlock.Key(lockKey), job: job, fence: fence}
}

// Job is the name of the job whose runs the store reads and writes.
func (s *Store) Job() string { return s.job }

// q qualifies the table names of a statement with the store's schema.
func (s *Store) q(sql string) string { return strings.ReplaceAll(sql, "_SCHEMA_", s.ident) }

// serialClass is the first key of the two-key advisory locks that take
// turns per schema (migration, planning, claims). Two-key locks live in a
// key space of their own, apart from any single-key lock such as the cron
// job's, whatever the value; it stays what every earlier release used, so
// processes of two versions sharing a run still take turns.
const serialClass = 4246

// turnSQL waits for a per-schema turn until the transaction ends; its
// arguments come from [Store.turn].
const turnSQL = `SELECT pg_advisory_xact_lock($1, hashtext($2))`

// turn returns turnSQL's arguments for the schema's turn of kind
// (migrate, plan, claim), narrowed to a run when given one.
func (s *Store) turn(kind string, run ...int64) []any {
	name := kind + ":" + s.schema
	for _, id := range run {
		name += ":" + strconv.FormatInt(id, 10)
	}
	return []any{serialClass, name}
}

// MaxSchemaName is the longest schema name PostgreSQL keeps whole; a longer
// one is truncated, and two long names would name one schema.
const MaxSchemaName = 63

// ValidSchema refuses a schema name PostgreSQL would not keep as given.
func ValidSchema(schema string) error {
	switch {
	case schema == "":
		return errors.New("the checkpoint schema name must not be empty")
	case len(schema) > MaxSchemaName:
		return fmt.Errorf("the checkpoint schema name is %d bytes long; PostgreSQL keeps %d and would truncate it (two long names could then share one schema)",
			len(schema), MaxSchemaName)
	}
	return nil
}
