package engine

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgtest"
)

// A slice transaction left idle (its process stalled or partitioned away
// between the batch and its COMMIT) is ended by the server after a lease,
// releasing its row locks, instead of when TCP keepalive gives up.
func TestIdleSliceTransactionEndsAfterALease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	settings := txSettings(Config{Lease: time.Second})
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for name, value := range settings {
		if _, err := tx.Exec(ctx, `SELECT set_config($1, $2, true)`, name, value); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := tx.Exec(ctx, `SELECT 1`); err == nil {
		t.Fatal("a slice transaction idle for 2.5 s with a 1 s lease still works")
	}
}

// A timeout below a millisecond is rounded up, never down to "0ms", which
// PostgreSQL reads as no timeout at all.
func TestTxSettingsRoundTimeoutsUp(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		time.Nanosecond:                        "1ms",
		500 * time.Microsecond:                 "1ms",
		time.Millisecond:                       "1ms",
		1500 * time.Microsecond:                "2ms",
		5 * time.Minute:                        "300000ms",
		CeilingTimeout:                         "86400000ms",
		2*time.Second + 999999*time.Nanosecond: "2001ms",
	} {
		s := txSettings(Config{StatementTimeout: d, LockTimeout: d})
		if s["statement_timeout"] != want || s["lock_timeout"] != want {
			t.Errorf("%v: statement_timeout %q, lock_timeout %q, want %q", d, s["statement_timeout"], s["lock_timeout"], want)
		}
	}
	if s := txSettings(Config{}); s["statement_timeout"] != "" || s["lock_timeout"] != "" {
		t.Errorf("0 must leave the server's setting: %v", s)
	}
}
