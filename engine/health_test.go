package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/sqljob"
	"github.com/shardfill/shardfill/throttle"
)

// lockingJob holds the first batch of workspace ws open for hold after
// its writes, with the rollup rows it replaced row-locked, and says when.
type lockingJob struct {
	*sqljob.Batched
	ws      string
	hold    time.Duration
	once    sync.Once
	started chan struct{}
}

func (l *lockingJob) Queue(tx *pgx.Batch, batch shard.Batch, written *int64) {
	l.Batched.Queue(tx, batch, written)
	for _, s := range batch.Slices {
		if s.Workspace != l.ws {
			continue
		}
		l.once.Do(func() {
			tx.Queue(fmt.Sprintf(`SELECT pg_sleep(%g)`, l.hold.Seconds()))
			close(l.started)
		})
		return
	}
}

// A session of the application waits on a row lock of a slice
// transaction past MaxBlocked: the engine halves its concurrency, then
// holds (claims nothing while the wait lasts); once the lock is gone it
// goes on and the run ends equal to the oracle.
func TestBlockedSessionBacksOff(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, dbURL)
	ctx := context.Background()
	run(t, testenv.Engine(t, dbURL, nil, engine.Config{})) // a rollup to replace, row by row
	var ws string
	if err := pool.QueryRow(ctx, `SELECT workspace_id::text FROM task_usage_hourly GROUP BY 1 ORDER BY count(*) DESC LIMIT 1`).Scan(&ws); err != nil {
		t.Fatal(err)
	}

	// shardfill's connections carry an application_name of their own.
	prefix := fmt.Sprintf("shardfill-blocked-%d", os.Getpid())
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", prefix)
	u.RawQuery = q.Encode()

	j := &lockingJob{Batched: testenv.Rollup(t, testenv.Pool(t, dbURL)), ws: ws, hold: 8 * time.Second, started: make(chan struct{})}
	var mu sync.Mutex
	var decisions []throttle.Decision
	var done atomic.Int64
	hcfg := throttle.Config{MaxBlocked: time.Second, PollInterval: 200 * time.Millisecond}                                    // ApplicationName: read from the pool
	e := testenv.Engine(t, u.String(), j, engine.Config{NewRun: true, Concurrency: 4, BatchSlices: 1, Rate: 20, Health: hcfg, // slow enough to outlast the hold
		OnEvent: func(ev engine.Event) {
			switch ev.Kind {
			case engine.SliceDone:
				done.Add(1)
			case engine.HealthPolled:
				mu.Lock()
				decisions = append(decisions, ev.Health.Decision)
				mu.Unlock()
			}
		}})
	last := func() (throttle.Decision, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(decisions) == 0 {
			return throttle.Decision{}, 0
		}
		return decisions[len(decisions)-1], len(decisions)
	}
	end := make(chan error, 1)
	go func() { _, err := e.Run(ctx); end <- err }()

	select {
	case <-j.started:
	case err := <-end:
		t.Fatalf("run ended before the locking batch: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the locking batch never started")
	}
	time.Sleep(300 * time.Millisecond) // its DELETE has run
	waiter := testenv.Conn(t, dbURL)   // the application: no application_name of shardfill's
	waited := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, `UPDATE task_usage_hourly SET task_count = task_count WHERE workspace_id = $1`, ws)
		waited <- err
	}()

	var red, hold throttle.Decision
	for deadline := time.Now().Add(5 * time.Second); hold.Reason == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		d, _ := last()
		switch {
		case d.Hold:
			hold = d
		case d.Reason != "" && red.Reason == "":
			red = d
		}
	}
	if red.Reason == "" || red.EffectiveConcurrency >= 4 || !strings.Contains(red.Reason, "has waited") {
		t.Fatalf("no halved pace before the hold: red %+v, hold %+v", red, hold)
	}
	if !hold.Hold || !strings.Contains(hold.Reason, "held by shardfill's pid") {
		t.Fatalf("not held while the application waits: %+v", hold)
	}
	time.Sleep(300 * time.Millisecond) // batches in flight finish
	before := done.Load()
	time.Sleep(time.Second)
	if d, _ := last(); !d.Hold {
		t.Fatalf("the hold ended while the application still waits: %+v", d)
	}
	if after := done.Load(); after != before {
		t.Fatalf("held, yet %d slices were done within a second", after-before)
	}
	t.Logf("halved to %d workers (%s), then held (%s)", red.EffectiveConcurrency, red.Reason, hold.Reason)

	if err := <-waited; err != nil {
		t.Fatalf("the waiting session: %v", err)
	}
	select {
	case err := <-end:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the run did not finish after the wait ended")
	}
	testenv.RequireOracle(t, pool)
}

// An engine.Config literal runs with every health signal off: the zero
// Health is not the CLI's defaults. DefaultConfig carries them.
func TestHealthZeroIsOff(t *testing.T) {
	t.Parallel()
	if d := engine.DefaultConfig().Health; d.MaxReplicaLag != throttle.DefaultMaxReplicaLag || d.HoldOnVacuum != throttle.VacuumWraparound ||
		d.MaxSlotWAL != throttle.DefaultMaxSlotWAL || d.MaxBlocked != throttle.DefaultMaxBlocked {
		t.Fatalf("DefaultConfig().Health = %+v, want throttle.DefaultConfig()", d)
	}
	url := testenv.DB(t, &testenv.Small)
	var polled atomic.Int64
	run(t, testenv.Engine(t, url, nil, engine.Config{OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.HealthPolled {
			polled.Add(1)
		}
	}}))
	if n := polled.Load(); n != 0 {
		t.Fatalf("%d health polls with every signal off", n)
	}
}

// An invalid health setting is refused as a configuration error that
// names no flag that does not exist (there is no --health).
func TestInvalidHealthNamesNoFakeFlag(t *testing.T) {
	t.Parallel()
	cfg := engine.DefaultConfig()
	cfg.Health.HoldOnVacuum = "sometimes"
	pool := testenv.Pool(t, testenv.DB(t, nil))
	_, err := engine.New(pool, "shardfill", testenv.Rollup(t, pool), &cfg)
	var ce *engine.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("New: %v, want a ConfigError", err)
	}
	if msg := ce.Render(func(f string) string { return "--" + strings.ToLower(f) }); strings.Contains(msg, "--health") || !strings.Contains(msg, "sometimes") {
		t.Fatalf("rendered %q", msg)
	}
}
