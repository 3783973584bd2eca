package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// StandbyOptions shape a standby. The zero value streams without a slot.
type StandbyOptions struct {
	// Slot, when set, names a physical replication slot that pg_basebackup
	// creates on the primary and the standby streams from
	// (primary_slot_name), so the primary keeps the WAL the standby has not
	// received, as a production standby usually does. Stop drops it.
	// Default: "" (no slot).
	Slot string
}

// Standby is a streaming hot standby of a Server: a cluster of its own
// (its own directory and port, the URL methods of Server) that replays the
// primary's WAL and takes read-only connections.
type Standby struct {
	*Server
	primary *Server
	slot    string

	slotDropped bool // by Stop; a second Stop leaves the primary alone
}

// StartStandby copies the running server with pg_basebackup -R (which
// writes primary_conninfo and standby.signal) into a fresh temp dir,
// starts the copy on a free port and waits until it streams from the
// primary. The copy is taken over the primary's unix socket, where the
// superuser is trusted for replication, so no password is written into the
// standby's configuration. Not supported for an external server.
func (s *Server) StartStandby(ctx context.Context, opts StandbyOptions) (*Standby, error) {
	if s.external != nil {
		return nil, errExternal
	}
	s.mu.Lock()
	primaryDir := s.dir
	s.mu.Unlock()
	if primaryDir == "" {
		return nil, errors.New("pgserver: server already removed")
	}
	if !isExecutable(filepath.Join(s.binDir, "pg_basebackup")) {
		major, err := s.majorVersion(ctx)
		if err != nil {
			return nil, err
		}
		return nil, &MissingError{What: "pg_basebackup in " + s.binDir, Package: "postgresql-client-" + major}
	}
	sb, err := newServer(s.opts, "pgserver-standby-")
	if err != nil {
		return nil, err
	}
	sb.binDir = s.binDir // the same major version as the primary's data
	st := &Standby{Server: sb, primary: s, slot: opts.Slot}
	if err := st.init(ctx); err != nil {
		os.RemoveAll(sb.dir)
		if opts.Slot != "" {
			st.dropSlot()
		}
		return nil, err
	}
	sb.startWatchdog()
	if err := st.waitStreaming(ctx); err != nil {
		st.Stop()
		return nil, err
	}
	return st, nil
}

func (st *Standby) init(ctx context.Context) error {
	sb, p := st.Server, st.primary
	if err := os.Mkdir(sb.sockDir(), 0o700); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if sb.asUser != "" {
		if err := chownTree(sb.dir, sb.asUser); err != nil {
			return err
		}
	}
	args := []string{
		"-D", sb.dataDir(),
		"-h", p.sockDir(), "-p", strconv.Itoa(p.port), "-U", superuser,
		"-R",           // standby.signal + primary_conninfo
		"-X", "stream", // WAL written during the copy comes along
		"-c", "fast", // checkpoint now instead of waiting for the next one
		"--no-sync",
	}
	if st.slot != "" {
		args = append(args, "-C", "-S", st.slot)
	}
	if err := run(sb.command(ctx, "pg_basebackup", args...)); err != nil {
		return fmt.Errorf("pgserver: standby of %s: %w", p, err)
	}
	// The copy holds the primary's pgserver.conf (its port and socket);
	// startOnFreePort writes the standby's own.
	return sb.startOnFreePort(ctx)
}

// waitStreaming waits until the standby's WAL receiver reports that it
// streams, so a test can rely on replication from the start.
func (st *Standby) waitStreaming(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var status string
	for {
		conn, err := pgx.Connect(ctx, st.AdminURL())
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')`).Scan(&status)
			conn.Close(context.WithoutCancel(ctx))
		}
		if err == nil && status == "streaming" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgserver: standby %s does not stream (wal receiver %q, last error %v)\n--- tail of %s ---\n%s",
				st.Server, status, err, st.logFile(), tail(st.logFile(), 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Slot is the standby's replication slot on the primary ("" for none).
func (st *Standby) Slot() string { return st.slot }

// CatchUp waits until the standby has replayed everything the primary had
// written when CatchUp was called: after it, a row committed on the
// primary before the call is visible on the standby.
func (st *Standby) CatchUp(ctx context.Context) error {
	pconn, err := pgx.Connect(ctx, st.primary.AdminURL())
	if err != nil {
		return fmt.Errorf("pgserver: catch up: %w", err)
	}
	var lsn string
	err = pconn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn)
	pconn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("pgserver: catch up: %w", err)
	}
	sconn, err := pgx.Connect(ctx, st.AdminURL())
	if err != nil {
		return fmt.Errorf("pgserver: catch up: %w", err)
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	for {
		var done bool
		if err := sconn.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&done); err != nil {
			return fmt.Errorf("pgserver: catch up: %w", err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgserver: standby has not replayed up to %s: %w", lsn, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop stops the standby, removes its directory and drops its slot on the
// primary (when the primary still runs).
func (st *Standby) Stop() error {
	err := st.Server.Stop()
	if st.slot != "" && !st.slotDropped {
		dropErr := st.dropSlot()
		if dropErr == nil {
			st.slotDropped = true
		} else if err == nil {
			err = dropErr
		}
	}
	return err
}

// dropSlot drops the standby's slot on the primary. The primary's WAL
// sender leaves a moment after the standby stops, and an active slot
// cannot be dropped, so it is tried for a while.
func (st *Standby) dropSlot() error {
	st.primary.mu.Lock()
	gone := st.primary.dir == ""
	st.primary.mu.Unlock()
	if gone {
		return nil // the slot went with the primary
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := st.primary.adminExec(ctx,
			`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, st.slot)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: still active
			if err != nil {
				return fmt.Errorf("pgserver: drop slot %q: %w", st.slot, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgserver: drop slot %q: %w", st.slot, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
