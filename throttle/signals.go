package throttle

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	//go:embed replica.sql
	replicaSQL string
	//go:embed slots.sql
	slotsSQL string
	//go:embed archive_mode.sql
	archiveModeSQL string
	//go:embed archive.sql
	archiveSQL string
	//go:embed vacuum.sql
	vacuumSQL string
	//go:embed blocked.sql
	blockedSQL string
)

// signalTimeout bounds each built-in signal's query: the views are cheap,
// so one that takes this long is stuck (e.g. on the lock manager) and the
// signal counts as unreadable.
const signalTimeout = 5 * time.Second

// Querier is what a poll needs of a connection or pool; *pgx.Conn and
// *pgxpool.Pool have it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// grant is the fix for a role that cannot see other roles' statistics.
func grant(role string) string {
	return fmt.Sprintf("role %s lacks pg_read_all_stats: GRANT pg_monitor TO %s", role, role)
}

// unreadable makes r a hold that says why the signal cannot be read.
func unreadable(r Reading, why string) Reading {
	r.Value, r.State, r.Unreadable = 0, Hold, true
	r.Reason = fmt.Sprintf("%s unreadable (fail closed): %s", strings.ReplaceAll(string(r.Signal), "_", " "), why)
	return r
}

// issue is one thing wrong within a signal; a reading shows the worst.
type issue struct {
	state State
	text  string
}

// judge gives the state of value against threshold (red above it, hold
// above twice it) and the issue's text ending in the limit it broke.
func judge(value, threshold float64, desc, limit string) issue {
	switch {
	case value > 2*threshold:
		return issue{Hold, desc + " > 2 × " + limit}
	case value > threshold:
		return issue{Red, desc + " > " + limit}
	}
	return issue{Green, ""}
}

// settle sets r's state and reason from the worst of its issues.
func settle(r Reading, issues []issue) Reading {
	r.State = Green
	for _, is := range issues {
		r.State = max(r.State, is.state)
	}
	var texts []string
	for _, is := range issues {
		if is.state == r.State && r.State != Green {
			texts = append(texts, is.text)
		}
	}
	r.Reason = strings.Join(texts, "; ")
	return r
}

// standbyTrack is what a Monitor remembers of a standby between polls to
// see a replay that stands still. PostgreSQL measures replay_lag when the
// standby replies, and shows NULL or its last value when it cannot measure
// (replay paused right after an idle spell, no reply for a while), so a
// stuck replay is also told by its position: unchanged across the
// standby's replies while WAL waits for it.
type standbyTrack struct {
	pos int64 // replay_lsn as a byte position
	// seen is the reply time current when a poll first found WAL waiting
	// for pos; since is the first reply after it still showing pos (zero
	// until then): the stall is counted from there.
	seen, since time.Time
}

// stall says for how long, in seconds, a standby's replies have shown its
// replay standing at pos while WAL waits for it (waiting > 0 bytes), as of
// its latest reply. It is measured between the standby's own reply times,
// from the first reply sent after the WAL was seen waiting (a standby
// replies as soon as it receives WAL, then every
// wal_receiver_status_interval, 10 s by default): a position that merely
// has not been reported since a burst of WAL never counts as stuck, the
// clocks of the two hosts need not agree, and a stall is seen at most one
// status interval late when the standby receives nothing new.
func (m *Monitor) stall(key string, pos, waiting int64, reply time.Time) float64 {
	tr, ok := m.standbys[key]
	switch {
	case !ok || tr.pos != pos || waiting <= 0 || tr.seen.IsZero():
		tr = standbyTrack{pos: pos}
		if waiting > 0 {
			tr.seen = reply
		}
	case tr.since.IsZero() && reply.After(tr.seen):
		tr.since = reply
	case !tr.since.IsZero():
		return max(reply.Sub(tr.since).Seconds(), 0)
	}
	m.standbys[key] = tr
	return 0
}

func (m *Monitor) readReplicaLag(ctx context.Context, q Querier) Reading {
	limit := m.cfg.MaxReplicaLag
	r := Reading{Signal: ReplicaLag, Threshold: limit.Seconds(), Unit: "s"}
	rows, err := q.Query(ctx, replicaSQL)
	if err != nil {
		return unreadable(r, "pg_stat_replication: "+err.Error())
	}
	type standby struct {
		pid        int32
		name, addr string
		pos        *int64
		waiting    *int64
		lag        *float64
		reply      *time.Time
		privileged bool
		role       string
	}
	var standbys []standby
	for rows.Next() {
		var s standby
		if err := rows.Scan(&s.pid, &s.name, &s.addr, &s.pos, &s.waiting, &s.lag, &s.reply, &s.privileged, &s.role); err != nil {
			rows.Close()
			return unreadable(r, "pg_stat_replication: "+err.Error())
		}
		standbys = append(standbys, s)
	}
	if err := rows.Err(); err != nil {
		return unreadable(r, "pg_stat_replication: "+err.Error())
	}
	seen := make(map[string]bool, len(standbys))
	var issues []issue
	for _, s := range standbys {
		if !s.privileged {
			// Only the pid is visible: a standby exists, its lag does not.
			return unreadable(r, "pg_stat_replication shows standbys but not their positions: "+grant(s.role))
		}
		if s.pos == nil || s.reply == nil {
			// A WAL sender that replays nothing (pg_receivewal) or has
			// not replied yet: no replay to measure.
			continue
		}
		key := fmt.Sprintf("%d %s %s", s.pid, s.name, s.addr)
		seen[key] = true
		stalled := m.stall(key, *s.pos, *s.waiting, *s.reply)
		lag := 0.0
		if s.lag != nil {
			lag = *s.lag
		}
		who := fmt.Sprintf("standby %s (%s, pid %d)", s.name, s.addr, s.pid)
		desc := fmt.Sprintf("replica lag %s on %s", formatSeconds(lag), who)
		if stalled > lag {
			lag = stalled
			desc = fmt.Sprintf("replay on %s has not advanced for %s with %s of WAL waiting",
				who, formatSeconds(stalled), FormatBytes(*s.waiting))
		}
		r.Value = max(r.Value, lag)
		issues = append(issues, judge(lag, limit.Seconds(), desc, limit.String()))
	}
	for key := range m.standbys {
		if !seen[key] {
			delete(m.standbys, key) // gone, or reconnected under a new pid
		}
	}
	return settle(r, issues)
}

func (m *Monitor) readSlotWAL(ctx context.Context, q Querier) Reading {
	limit := m.cfg.MaxSlotWAL
	r := Reading{Signal: SlotWAL, Threshold: float64(limit), Unit: "bytes"}
	rows, err := q.Query(ctx, slotsSQL)
	if err != nil {
		return unreadable(r, "pg_replication_slots: "+err.Error())
	}
	var issues []issue
	for rows.Next() {
		var name, typ, walStatus string
		var active bool
		var retained int64
		if err := rows.Scan(&name, &typ, &active, &walStatus, &retained); err != nil {
			rows.Close()
			return unreadable(r, "pg_replication_slots: "+err.Error())
		}
		activity := "active"
		if !active {
			activity = "inactive"
		}
		r.Value = max(r.Value, float64(retained))
		issues = append(issues, judge(float64(retained), float64(limit),
			fmt.Sprintf("slot %s (%s, %s) retains %s of WAL", name, typ, activity, FormatBytes(retained)),
			FormatBytes(limit)))
		switch walStatus {
		case "unreserved":
			// The next checkpoint may remove WAL the slot needs: more WAL
			// from us pushes its consumer over the edge.
			issues = append(issues, issue{Hold, fmt.Sprintf("slot %s is about to lose WAL it needs (wal_status unreserved, max_slot_wal_keep_size)", name)})
		case "lost":
			issues = append(issues, issue{Red, fmt.Sprintf("slot %s has lost WAL it needed (wal_status lost): its consumer must be rebuilt; drop or re-create the slot", name)})
		}
	}
	if err := rows.Err(); err != nil {
		return unreadable(r, "pg_replication_slots: "+err.Error())
	}
	return settle(r, issues)
}

func (m *Monitor) readArchiveBacklog(ctx context.Context, q Querier) Reading {
	limit := m.cfg.MaxArchiveBacklog
	r := Reading{Signal: ArchiveBacklog, Threshold: float64(limit), Unit: "segments"}
	var mode, role string
	var canList bool
	if err := q.QueryRow(ctx, archiveModeSQL).Scan(&mode, &canList, &role); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42883" { // undefined_function
			return unreadable(r, "pg_ls_archive_statusdir() does not exist (PostgreSQL 12 or later has it)")
		}
		return unreadable(r, "archive_mode: "+err.Error())
	}
	if mode == "off" {
		return r // nothing is archived, so nothing waits
	}
	if !canList {
		return unreadable(r, fmt.Sprintf("role %s may not call pg_ls_archive_statusdir(): GRANT pg_monitor TO %s", role, role))
	}
	var ready int64
	var failing bool
	var lastFailed string
	if err := q.QueryRow(ctx, archiveSQL).Scan(&ready, &failing, &lastFailed); err != nil {
		return unreadable(r, "pg_ls_archive_statusdir(): "+err.Error())
	}
	r.Value = float64(ready)
	desc := fmt.Sprintf("%d WAL segments wait for the archiver", ready)
	if failing {
		desc += fmt.Sprintf(" (archive_command is failing, last on %s)", lastFailed)
	}
	return settle(r, []issue{judge(float64(ready), float64(limit), desc, strconv.Itoa(limit))})
}

func (m *Monitor) readVacuum(ctx context.Context, q Querier) Reading {
	r := Reading{Signal: Vacuum, Unit: "vacuums"}
	rows, err := q.Query(ctx, vacuumSQL, m.cfg.Tables)
	if err != nil {
		return unreadable(r, "pg_stat_progress_vacuum: "+err.Error())
	}
	var issues []issue
	for rows.Next() {
		var pid int32
		var rel, phase, role string
		var hidden, privileged, wraparound bool
		if err := rows.Scan(&pid, &rel, &phase, &hidden, &privileged, &role, &wraparound); err != nil {
			rows.Close()
			return unreadable(r, "pg_stat_progress_vacuum: "+err.Error())
		}
		if hidden {
			if !privileged {
				rows.Close()
				return unreadable(r, fmt.Sprintf("a vacuum (pid %d) runs in this database on a table this role cannot see: %s", pid, grant(role)))
			}
			continue // the relation is gone (dropped mid-vacuum)
		}
		if !wraparound && m.cfg.HoldOnVacuum != VacuumAll {
			continue // an ordinary vacuum, better finished with the run working
		}
		r.Value++
		what := "VACUUM"
		if wraparound {
			what = "autovacuum to prevent wraparound"
		}
		issues = append(issues, issue{Hold, fmt.Sprintf("%s of %s in progress (pid %d, %s): writing nothing until it ends", what, rel, pid, phase)})
	}
	if err := rows.Err(); err != nil {
		return unreadable(r, "pg_stat_progress_vacuum: "+err.Error())
	}
	return settle(r, issues)
}

func (m *Monitor) readBlocked(ctx context.Context, q Querier) Reading {
	limit := m.cfg.MaxBlocked
	r := Reading{Signal: Blocked, Threshold: limit.Seconds(), Unit: "s"}
	var pid, holder int32
	var waited float64
	var waiter, holderName string
	err := q.QueryRow(ctx, blockedSQL, m.cfg.ApplicationName).Scan(&pid, &waited, &waiter, &holder, &holderName)
	if errors.Is(err, pgx.ErrNoRows) {
		return r
	}
	if err != nil {
		return unreadable(r, "pg_locks: "+err.Error())
	}
	r.Value = waited
	desc := fmt.Sprintf("pid %d (%s) has waited %s on a lock held by shardfill's pid %d (%s)",
		pid, waiter, formatSeconds(waited), holder, holderName)
	return settle(r, []issue{judge(waited, limit.Seconds(), desc, limit.String())})
}

// readThrottleQuery runs the operator's query read-only, under a
// statement_timeout, and rolls back: it can neither write nor hang a poll.
func (m *Monitor) readThrottleQuery(ctx context.Context, q Querier) Reading {
	r := Reading{Signal: ThrottleQuery}
	reason, err := m.runThrottleQuery(ctx, q)
	if err != nil {
		return unreadable(r, "the throttle query failed: "+err.Error())
	}
	if reason == nil {
		return r
	}
	r.Value = 1
	return settle(r, []issue{{Red, "throttle query: " + *reason}})
}

func (m *Monitor) runThrottleQuery(ctx context.Context, q Querier) (*string, error) {
	timeout := m.cfg.ThrottleQueryTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout+signalTimeout)
	defer cancel()
	tx, err := q.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	ms := strconv.FormatInt(max(timeout.Milliseconds(), 1), 10)
	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, ms); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, m.cfg.ThrottleQuery)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var reason *string
	if rows.Next() {
		values, err := rows.Values()
		if err != nil {
			return nil, err
		}
		if len(values) > 0 && values[0] != nil {
			s := fmt.Sprint(values[0])
			reason = &s
		}
	}
	rows.Close()
	return reason, rows.Err()
}
