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
