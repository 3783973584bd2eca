package pgtest_test

import (
	"context"
	"testing"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestNewDBIsFreshAndIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := testenv.Conn(t, pgtest.NewDB(t))
	b := testenv.Conn(t, pgtest.NewDB(t))

	var nameA, nameB string
	if err := a.QueryRow(ctx, "SELECT current_database()").Scan(&nameA); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(ctx, "SELECT current_database()").Scan(&nameB); err != nil {
		t.Fatal(err)
	}
	if nameA == nameB {
		t.Fatalf("two NewDB calls returned the same database %q", nameA)
	}
	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var found bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('public.only_in_a') IS NOT NULL").Scan(&found); err != nil {
		t.Fatal(err)
	}
	if found {
		t.Fatal("table created in one test database is visible in another")
	}
}
