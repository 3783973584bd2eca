package pgserver_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// TestPgBouncer checks both pool modes for what tells them apart: after a
// client's statement, transaction pooling hands the same server connection
// to the next client, while session pooling keeps it for the first one.
func TestPgBouncer(t *testing.T) {
	t.Parallel()
	srv := pgtest.SharedServer(t)
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := pgtest.PgBouncer(t, srv, mode)
			if b.Port() == srv.Port() {
				t.Fatal("pgbouncer listens on the server's port")
			}
			name := strings.TrimPrefix(mustPath(t, pgtest.NewDB(t)), "/")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			// Named prepared statements do not survive transaction pooling
			// in pgbouncer 1.18: run statements unprepared.
			through := b.URL(name) + "&default_query_exec_mode=exec"
			c1 := testenv.Conn(t, through)
			c2 := testenv.Conn(t, through)
			var db string
			if err := c1.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
				t.Fatal(err)
			}
			if db != name {
				t.Fatalf("through pgbouncer: connected to %q, want %q", db, name)
			}
			var pid1, pid2 int
			if err := c1.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid1); err != nil {
				t.Fatal(err)
			}
			if err := c2.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid2); err != nil {
				t.Fatal(err)
			}
			if shared := pid1 == pid2; shared != (mode == "transaction") {
				t.Fatalf("%s pooling: two clients on backends %d and %d", mode, pid1, pid2)
			}

			admin := testenv.Conn(t, b.AdminURL())
			rows, err := admin.Query(ctx, `SHOW CONFIG`)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			for rows.Next() {
				vals, err := rows.Values()
				if err != nil {
					t.Fatal(err)
				}
				if key, _ := vals[0].(string); key == "pool_mode" {
					got, _ = vals[1].(string)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if got != mode || b.PoolMode() != mode {
				t.Fatalf("pool_mode = %q (PoolMode() %q), want %q", got, b.PoolMode(), mode)
			}
		})
	}
}

// pgbouncer checks the client's password itself (scram against its
// userlist) before it opens any server connection.
func TestPgBouncerRejectsWrongPassword(t *testing.T) {
	t.Parallel()
	b := pgtest.PgBouncer(t, pgtest.SharedServer(t), "transaction")
	u, err := url.Parse(b.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u.String())
	if err == nil {
		conn.Close(ctx)
		t.Fatal("connected through pgbouncer with a wrong password")
	}
	// pgbouncer 1.18 does not say "password authentication failed" like
	// the server, but fails the SCRAM exchange itself.
	if !strings.Contains(err.Error(), "SASL authentication failed") {
		t.Fatalf("unexpected error: %v", err)
	}
	if strings.Contains(b.String(), pgtest.SharedServer(t).Password()) {
		t.Fatal("printing a PgBouncer leaks the password")
	}
}

func mustPath(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Path
}
