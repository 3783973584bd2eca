package main

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// Through a real PgBouncer, in transaction pooling (where a client's
// server backend changes between transactions) and in session pooling: the
// run ends done and equal to the oracle; the cron job can take its lock the
// moment the process has exited (nothing is left on a pooled backend), a
// session lock of another client is untouched (nothing is unlocked on a
// backend shardfill does not own), and status through the pooler says done.
func TestThroughPgBouncer(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			direct := testenv.DB(t, &testenv.Small)
			u, err := url.Parse(direct)
			if err != nil {
				t.Fatal(err)
			}
			bouncer := pgtest.PgBouncer(t, pgtest.SharedServer(t), mode)
			pooled := bouncer.URL(strings.TrimPrefix(u.Path, "/"))

			for name, want := range map[string]bool{direct: false, pooled: mode == "transaction"} {
				cfg, err := pgx.ParseConfig(name)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := engine.TransactionPooled(context.Background(), cfg); err != nil || got != want {
					t.Errorf("TransactionPooled = %v (%v), want %v (%s pooling, direct %v)", got, err, want, mode, name == direct)
				}
			}

			other := testenv.Conn(t, direct)
			if _, err := other.Exec(context.Background(), `SELECT pg_advisory_lock(777)`); err != nil {
				t.Fatal(err)
			}
			if code, out := cli(t, "--database-url", pooled, "run", "--concurrency", "3", "--batch-slices", "4", "--no-progress"); code != 0 {
				t.Fatalf("run through pgbouncer (%s pooling): exit %d\n%s", mode, code, out)
			}
			if testenv.HeldCronLock(t, direct) {
				t.Error("the cron lock is still held after the run exited")
			}
			var held bool
			err = testenv.Pool(t, direct).QueryRow(context.Background(), `SELECT EXISTS (SELECT FROM pg_locks
				WHERE locktype = 'advisory' AND objid = 777 AND granted AND pid = $1)`, other.PgConn().PID()).Scan(&held)
			if err != nil || !held {
				t.Errorf("another client's session lock was released (%v)", err)
			}
			code, out := cli(t, "--database-url", pooled, "status", "--json")
			var st struct{ State string }
			// Logs (on stderr) come before the object in out.
			if code != 0 || json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &st) != nil || st.State != "done" {
				t.Errorf("status through pgbouncer: exit %d, state %q\n%s", code, st.State, out)
			}
			testenv.RequireOracle(t, testenv.Pool(t, direct))
		})
	}
}
