package faults_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// 4. The server is stopped (pg_ctl stop -m fast, then in a second database
// -m immediate: a crash, with recovery on restart) while a run works, and
// started again. The process either rides it out or exits non-zero; then a
// run finishes. The rollup equals the oracle, each slice is committed once
// (commits lost to the crash are redone, their done_log rows are lost with
// them), and the watermark is stamped exactly once. The tests run on a
// server of their own so that stopping it disturbs no other test.
func TestServerStopRestartMidRun(t *testing.T) {
	t.Parallel()
	srv := pgtest.PrivateServer(t)
	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			url := ownDB(t, srv, "restart_"+mode, tiny)
			pool := testenv.Pool(t, url)
			instrument(t, pool, 200*time.Millisecond)
			b := newBins(t, url)

			p := b.startMidSlice(t, pool)
			pool.Close()
			if err := srv.StopMode(mode); err != nil {
				t.Fatal(err)
			}
			// While the server is down, commands fail cleanly (exit 1) and
			// print no password (checked for every output at the end).
			for _, args := range [][]string{{"status"}, {"run", "--no-progress"}} {
				if code, out := b.run(time.Minute, nil, args...); code != 1 {
					t.Errorf("%v with the server down: exit %d, want 1\n%s", args, code, b.safe(out))
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := srv.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			code, ok := p.wait(time.Minute)
			if !ok {
				t.Fatalf("still running a minute after the restart:\n%s", b.safe(p.out.String()))
			}
			t.Logf("the process exited %d after the %s stop", code, mode)
			if code != 0 && code != 1 {
				t.Errorf("exit %d, want 0 or 1", code)
			}

			pool = testenv.Pool(t, url)
			setSleep(t, pool, 0)
			b.mustRun() // finishes the run, or finds it done
			requireFinished(t, pool, url)
		})
	}
}
