package throttle

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Monitor reads the enabled signals ([Monitor.Poll]) and remembers what
// a single reading cannot show: where each standby's replay stood, and
// since when each signal has been red. One Monitor per process; Poll is
// safe for concurrent use but is meant to be called from one loop every
// [Config.PollInterval].
type Monitor struct {
	cfg Config
	now func() time.Time // time.Now; tests move it

	mu       sync.Mutex
	standbys map[string]standbyTrack
	redSince map[Signal]time.Time

	lastPoll atomic.Int64 // nanoseconds
}

// NewMonitor checks cfg and returns a Monitor for it.
func NewMonitor(cfg Config) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("throttle: %w", err)
	}
	cfg = cfg.withDefaults()
	cfg.Tables = append([]string(nil), cfg.Tables...)
	return &Monitor{
		cfg:      cfg,
		now:      time.Now,
		standbys: map[string]standbyTrack{},
		redSince: map[Signal]time.Time{},
	}, nil
}

// Config is the configuration the Monitor reads with, defaults applied.
func (m *Monitor) Config() Config { return m.cfg }

// Poll reads every enabled signal once, in [Signals] order, and returns
// one Reading each. A signal that cannot be read is a Hold reading whose
// Reason says what to grant or fix, never an error: the only error is the
// context's, when the caller is stopping.
func (m *Monitor) Poll(ctx context.Context, q Querier) ([]Reading, error) {
	start := time.Now()
	defer func() { m.lastPoll.Store(int64(time.Since(start))) }()
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var readings []Reading
	for _, s := range Signals {
		if !m.cfg.Enabled(s) {
			continue
		}
		r := m.read(ctx, q, s)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("throttle: poll: %w", err)
		}
		readings = append(readings, m.escalate(r, now))
	}
	return readings, nil
}

// LastPollDuration is how long the last Poll took: the polling cost to
// set against the work it guards.
func (m *Monitor) LastPollDuration() time.Duration {
	return time.Duration(m.lastPoll.Load())
}

func (m *Monitor) read(ctx context.Context, q Querier, s Signal) Reading {
	if s != ThrottleQuery { // which has its own statement_timeout
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, signalTimeout)
		defer cancel()
	}
	switch s {
	case ReplicaLag:
		return m.readReplicaLag(ctx, q)
	case SlotWAL:
		return m.readSlotWAL(ctx, q)
	case ArchiveBacklog:
		return m.readArchiveBacklog(ctx, q)
	case Vacuum:
		return m.readVacuum(ctx, q)
	case Blocked:
		return m.readBlocked(ctx, q)
	case ThrottleQuery:
		return m.readThrottleQuery(ctx, q)
	}
	panic("throttle: unknown signal " + s)
}

// escalate turns a signal that has been red (or worse) for HoldAfterRed
// into a hold: halving has had its chances by then (it halves every
// DecreaseInterval) and the database still suffers.
func (m *Monitor) escalate(r Reading, now time.Time) Reading {
	if r.State == Green {
		delete(m.redSince, r.Signal)
		return r
	}
	since, ok := m.redSince[r.Signal]
	if !ok {
		m.redSince[r.Signal] = now
		return r
	}
	if red := now.Sub(since); r.State == Red && red >= m.cfg.HoldAfterRed {
		r.State = Hold
		r.Reason = fmt.Sprintf("%s (red for %s)", r.Reason, red.Round(time.Second))
	}
	return r
}

// UnreadableError is [Monitor.Preflight]'s refusal: signals the operator
// set explicitly that cannot be read. The CLI exits 2 on it.
type UnreadableError struct {
	Readings []Reading // each Unreadable, with the fix in its Reason
}

func (e *UnreadableError) Error() string {
	parts := make([]string, len(e.Readings))
	for i, r := range e.Readings {
		parts[i] = r.Signal.Flag() + " is set but its signal cannot be read: " + r.Reason
	}
	return strings.Join(parts, "; ")
}

// Preflight reads each enabled signal once, before a run starts, and
// checks the privileges a signal needs even when there is nothing to see
// yet (no standby attached, no vacuum running): a role without
// pg_read_all_stats would be blind to them the moment one appears.
//
// Signals the operator set explicitly (explicit[s]) that cannot be read
// make an *UnreadableError: asking for a guard that cannot work is a
// usage error. Those left at their defaults come back as Unreadable
// readings, for the caller to log: at run time they hold, with the same
// reason, rather than run blind.
func (m *Monitor) Preflight(ctx context.Context, q Querier, explicit map[Signal]bool) ([]Reading, error) {
	scratch, err := NewMonitor(m.cfg) // preflight state must not leak into polls
	if err != nil {
		return nil, err
	}
	readings, err := scratch.Poll(ctx, q)
	if err != nil {
		return nil, err
	}
	var privileged bool
	var role string
	if err := q.QueryRow(ctx, `SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), quote_ident(current_user)`).
		Scan(&privileged, &role); err != nil {
		return nil, fmt.Errorf("throttle: preflight: %w", err)
	}
	var refused, warned []Reading
	for _, r := range readings {
		if !r.Unreadable && !privileged && (r.Signal == ReplicaLag || r.Signal == Vacuum) {
			what := "a standby's replay position"
			if r.Signal == Vacuum {
				what = "which table autovacuum works on"
			}
			r = unreadable(r, fmt.Sprintf("cannot see %s: %s", what, grant(role)))
		}
		if !r.Unreadable {
			continue
		}
		if explicit[r.Signal] {
			refused = append(refused, r)
		} else {
			warned = append(warned, r)
		}
	}
	if len(refused) > 0 {
		return warned, &UnreadableError{Readings: refused}
	}
	return warned, nil
}
