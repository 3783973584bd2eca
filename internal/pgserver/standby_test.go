package pgserver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// A standby is in recovery, refuses writes, and a row committed on the
// primary shows up on it.
func TestStandbyStreams(t *testing.T) {
	t.Parallel()
	primary := pgtest.PrivateServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	appURL, err := primary.CreateDatabase(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.Conn(t, appURL)
	if _, err := p.Exec(ctx, `CREATE TABLE t (x int)`); err != nil {
		t.Fatal(err)
	}

	st := pgtest.Standby(t, primary, pgserver.StandbyOptions{})
	if st.Port() == primary.Port() {
		t.Fatal("the standby listens on the primary's port")
	}
	s := testenv.Conn(t, st.URL("app"))
	var inRecovery bool
	if err := s.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&inRecovery); err != nil {
		t.Fatal(err)
	}
	if !inRecovery {
		t.Fatal("standby: pg_is_in_recovery() = false")
	}
	if err := p.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("primary: pg_is_in_recovery() = %v, %v", inRecovery, err)
	}

	// Committed synchronously: the primary's synchronous_commit=off only
	// delays the WAL flush, which CatchUp's LSN would then run ahead of.
	if _, err := p.Exec(ctx, `SET synchronous_commit = on; INSERT INTO t VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	if err := st.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	var x int
	if err := s.QueryRow(ctx, `SELECT x FROM t`).Scan(&x); err != nil || x != 42 {
		t.Fatalf("standby sees x=%d, err=%v; want the primary's 42", x, err)
	}

	_, err = s.Exec(ctx, `INSERT INTO t VALUES (1)`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" { // read_only_sql_transaction
		t.Fatalf("write on the standby: %v, want read-only error 25006", err)
	}
	if st.Slot() != "" {
		t.Fatalf("Slot() = %q without a slot", st.Slot())
	}
}

// A standby with a slot streams from it (primary_slot_name), and Stop
// drops the slot so the primary does not keep WAL for a standby that is
// gone.
func TestStandbyWithSlot(t *testing.T) {
	t.Parallel()
	primary := pgtest.PrivateServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctl, err := primary.StartStandby(ctx, pgserver.StandbyOptions{Slot: "standby_1"})
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.Conn(t, primary.AdminURL())
	var active bool
	if err := p.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'`).Scan(&active); err != nil {
		t.Fatalf("slot on the primary: %v", err)
	}
	if !active {
		t.Fatal("slot standby_1 is not active: the standby does not stream from it")
	}
	s := testenv.Conn(t, ctl.AdminURL())
	var slot string
	if err := s.QueryRow(ctx, `SELECT current_setting('primary_slot_name')`).Scan(&slot); err != nil || slot != "standby_1" {
		t.Fatalf("standby primary_slot_name = %q, %v", slot, err)
	}
	s.Close(ctx)

	if err := ctl.Stop(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d slots left on the primary after Stop (err %v)", n, err)
	}
	if err := ctl.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
