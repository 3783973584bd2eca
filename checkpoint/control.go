package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Limits are a run's throttles as the control record stores them. A nil
// field leaves each process's own flag in force.
type Limits struct {
	Rate               *float64       `json:"rate"` // slices per second per process; 0 = no limit
	Burst              *int           `json:"burst"`
	Concurrency        *int           `json:"concurrency"` // per process
	SleepBetweenSlices *time.Duration `json:"-"`
}

// Control is the desired state of a run, set from any shell and polled by
// every process of the run. Version grows by one on every change.
type Control struct {
	RunID     int64      `json:"run_id"`
	Version   int64      `json:"version"`
	Paused    bool       `json:"paused"`
	PausedBy  *string    `json:"paused_by"`
	PausedAt  *time.Time `json:"paused_at"`
	Limits    Limits     `json:"limits"`
	UpdatedBy *string    `json:"updated_by"`
	UpdatedAt *time.Time `json:"updated_at"`
}

const controlColumns = `run_id, version, paused, paused_by, paused_at, rate, burst, concurrency,
	sleep_between_slices_ms, updated_by, updated_at`

func scanControl(row pgx.Row) (*Control, error) {
	var c Control
	var sleepMS *int64
	err := row.Scan(&c.RunID, &c.Version, &c.Paused, &c.PausedBy, &c.PausedAt, &c.Limits.Rate, &c.Limits.Burst,
		&c.Limits.Concurrency, &sleepMS, &c.UpdatedBy, &c.UpdatedAt)
	if err != nil {
		return nil, err
	}
	if sleepMS != nil {
		d := time.Duration(*sleepMS) * time.Millisecond
		c.Limits.SleepBetweenSlices = &d
	}
	return &c, nil
}

// Control reads run's control record; a run nobody has steered yet has
// version 0, unpaused, with no limits of its own.
func (s *Store) Control(ctx context.Context, runID int64) (*Control, error) {
	c, err := scanControl(s.db.QueryRow(ctx, s.q(`SELECT `+controlColumns+` FROM _SCHEMA_.control WHERE run_id = $1`), runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return &Control{RunID: runID}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read control of run %d: %w", runID, err)
	}
	return c, nil
}

// SetPaused pauses or unpauses run on behalf of by, and returns the new
// control record. Pausing a paused run keeps who paused it first.
func (s *Store) SetPaused(ctx context.Context, runID int64, paused bool, by string) (*Control, error) {
	c, err := scanControl(s.db.QueryRow(ctx, s.q(`
		INSERT INTO _SCHEMA_.control AS c (run_id, version, paused, paused_by, paused_at, updated_by, updated_at)
		VALUES ($1, 1, $2, CASE WHEN $2 THEN $3 END, CASE WHEN $2 THEN now() END, $3, now())
		ON CONFLICT (run_id) DO UPDATE SET
		    version = c.version + 1, paused = $2,
		    paused_by = CASE WHEN NOT $2 THEN NULL WHEN c.paused THEN c.paused_by ELSE $3 END,
		    paused_at = CASE WHEN NOT $2 THEN NULL WHEN c.paused THEN c.paused_at ELSE now() END,
		    updated_by = $3, updated_at = now()
		RETURNING `+controlColumns), runID, paused, by))
	if err != nil {
		return nil, fmt.Errorf("pause run %d: %w", runID, err)
	}
	return c, nil
}

// SetLimits changes the limits given (non-nil fields of l) for every
// process of run, and returns the new control record.
func (s *Store) SetLimits(ctx context.Context, runID int64, l Limits, by string) (*Control, error) {
	var sleepMS *int64
	if l.SleepBetweenSlices != nil {
		ms := millisUp(*l.SleepBetweenSlices)
		sleepMS = &ms
	}
	c, err := scanControl(s.db.QueryRow(ctx, s.q(`
		INSERT INTO _SCHEMA_.control AS c (run_id, version, rate, burst, concurrency, sleep_between_slices_ms, updated_by, updated_at)
		VALUES ($1, 1, $2, $3, $4, $5, $6, now())
		ON CONFLICT (run_id) DO UPDATE SET
		    version = c.version + 1,
		    rate = coalesce($2, c.rate), burst = coalesce($3, c.burst),
		    concurrency = coalesce($4, c.concurrency),
		    sleep_between_slices_ms = coalesce($5, c.sleep_between_slices_ms),
		    updated_by = $6, updated_at = now()
		RETURNING `+controlColumns), runID, l.Rate, l.Burst, l.Concurrency, sleepMS, by))
	if err != nil {
		return nil, fmt.Errorf("set limits of run %d: %w", runID, err)
	}
	return c, nil
}

// millisUp is d in whole milliseconds, as the control record and the
// registry store a pause: rounded up as the timeouts are, so that a pause
// asked for (500µs) is never stored as none.
func millisUp(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// ProcessState is what a process of a run is doing, as it last reported.
type ProcessState string

// Process states in the registry.
const (
	ProcessWorking ProcessState = "working" // claims and runs batches
	ProcessPausing ProcessState = "pausing" // the run is paused: batches still in flight here
	ProcessPaused  ProcessState = "paused"  // the run is paused: no batch in flight, holds its lock, claims nothing
	ProcessHeld    ProcessState = "held"    // something else holds it back (see Reason)
	ProcessExited  ProcessState = "exited"  // left the run
)

// Process is one process's row in the registry: who it is, which control
// version it applied and the limits it runs under.
type Process struct {
	Owner              string        `json:"owner"`
	Host               string        `json:"host"`
	OSPID              int           `json:"pid"`
	LockPID            int           `json:"lock_pid"`
	StartedAt          time.Time     `json:"started_at"`
	SeenAt             time.Time     `json:"acknowledged_at"`
	ControlVersion     int64         `json:"control_version"`
	Rate               float64       `json:"rate"`
	Burst              int           `json:"burst"`
	Concurrency        int           `json:"concurrency"`
	SleepBetweenSlices time.Duration `json:"-"`
	SleepMS            int64         `json:"sleep_between_slices_ms"`
	State              ProcessState  `json:"state"`
	Reason             *string       `json:"reason"`
	// EffectiveConcurrency and EffectiveRate are the pace the process
	// actually runs at: its limits, lowered by the health throttle
	// (package throttle) while the database's signals say so. Null from a
	// process of a version without the throttle.
	EffectiveConcurrency *int     `json:"effective_concurrency"`
	EffectiveRate        *float64 `json:"effective_rate"`
}

// Acknowledge writes p's registry row for run: it applied control version
// p.ControlVersion and now runs under p's limits. StartedAt is kept from
// the first write. The first acknowledgement of any process is also when
// the run's work started (the run's started_at): planning alone, or a
// plan-only run, starts nothing.
func (s *Store) Acknowledge(ctx context.Context, runID int64, p Process) error {
	_, err := s.db.Exec(ctx, s.q(`
		WITH started AS (
		    UPDATE _SCHEMA_.run SET started_at = now() WHERE id = $1 AND started_at IS NULL AND $11::text <> 'exited'
		)
		INSERT INTO _SCHEMA_.process AS p (run_id, owner, host, os_pid, lock_pid, control_version,
		    rate, burst, concurrency, sleep_between_slices_ms, state, reason, effective_concurrency, effective_rate)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (run_id, owner) DO UPDATE SET
		    host = $3, os_pid = $4, lock_pid = $5, seen_at = now(), control_version = $6,
		    rate = $7, burst = $8, concurrency = $9, sleep_between_slices_ms = $10, state = $11, reason = $12,
		    effective_concurrency = $13, effective_rate = $14`),
		runID, p.Owner, p.Host, p.OSPID, p.LockPID, p.ControlVersion, p.Rate, p.Burst, p.Concurrency,
		millisUp(p.SleepBetweenSlices), p.State, p.Reason, p.EffectiveConcurrency, p.EffectiveRate)
	if err != nil {
		return fmt.Errorf("acknowledge control of run %d: %w", runID, err)
	}
	return nil
}

// Processes lists run's live processes: those whose lock backend still
// holds the cron lock. A killed process could not say it left; its lock
// went with its connection, so it is not listed.
func (s *Store) Processes(ctx context.Context, runID int64) ([]Process, error) {
	rows, err := s.db.Query(ctx, s.q(`
		SELECT owner, host, os_pid, lock_pid, started_at, seen_at, control_version, rate, burst, concurrency,
		       sleep_between_slices_ms, state, reason, effective_concurrency, effective_rate
		FROM _SCHEMA_.process p
		WHERE run_id = $1 AND state <> 'exited' AND `+s.lock.HeldOrAwaitedBy("p.lock_pid")+`
		ORDER BY started_at, owner`), runID)
	if err != nil {
		return nil, fmt.Errorf("processes of run %d: %w", runID, err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Process, error) {
		var p Process
		err := row.Scan(&p.Owner, &p.Host, &p.OSPID, &p.LockPID, &p.StartedAt, &p.SeenAt, &p.ControlVersion,
			&p.Rate, &p.Burst, &p.Concurrency, &p.SleepMS, &p.State, &p.Reason, &p.EffectiveConcurrency, &p.EffectiveRate)
		p.SleepBetweenSlices = time.Duration(p.SleepMS) * time.Millisecond
		return p, err
	})
}
