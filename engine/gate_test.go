package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/shardfill/shardfill/checkpoint"
)

// entered reports whether Enter admits within a short wait.
func entered(g *Gate, stop <-chan struct{}) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	return g.Enter(ctx, stop)
}

func TestGateLimitHoldsAndStop(t *testing.T) {
	t.Parallel()
	g := NewGate(2)
	a, err1 := entered(g, nil)
	_, err2 := entered(g, nil)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := entered(g, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third worker entered a gate of 2: %v", err)
	}
	g.SetLimit(3)
	c, err := entered(g, nil)
	if err != nil {
		t.Fatalf("a raised limit did not admit: %v", err)
	}
	a()
	a() // leave is idempotent
	c()
	if g.Inside() != 1 {
		t.Fatalf("inside %d, want 1", g.Inside())
	}
	g.Hold("pause", "paused by me")
	if _, err := entered(g, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a held gate admitted: %v", err)
	}
	if h := g.Holds(); len(h) != 1 || h[0].Key != "pause" || h[0].Reason != "paused by me" {
		t.Fatalf("holds %v", h)
	}
	// A waiter is let in as soon as the hold is released.
	done := make(chan error, 1)
	go func() {
		_, err := g.Enter(context.Background(), nil)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	g.Release("pause")
	if err := <-done; err != nil || g.Held() {
		t.Fatal(err)
	}
	g.Hold("pause", "again")
	stop := make(chan struct{})
	close(stop)
	if _, err := entered(g, stop); !errors.Is(err, ErrGateStopped) {
		t.Fatalf("stop: %v", err)
	}
}

// The controller puts a control record in force: gate, limiter, sleep,
// batch size, the pause; a concurrency above MaxConcurrency is capped.
func TestControllerApplies(t *testing.T) {
	t.Parallel()
	e := &Engine{cfg: Config{Concurrency: 4, MaxConcurrency: 8, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}.WithDefaults()}
	c := e.newController(1, &cronLock{pid: 1})
	if c.gate.Limit() != 4 || c.limiter.Limit() != rate.Inf || c.batchLimits().Slices != DefaultBatchSlices {
		t.Fatalf("own limits not in force: gate %d, rate %v", c.gate.Limit(), c.limiter.Limit())
	}
	r, b, n, d := 5.0, 7, 2, 10*time.Millisecond
	var applied []Applied
	e.cfg.OnEvent = func(ev Event) { applied = append(applied, *ev.Applied) }
	c.apply(&checkpoint.Control{Version: 3, Paused: true,
		Limits: checkpoint.Limits{Rate: &r, Burst: &b, Concurrency: &n, SleepBetweenSlices: &d}})
	if c.gate.Limit() != 2 || c.limiter.Limit() != 5 || c.limiter.Burst() != 7 || c.sleepBetween() != d ||
		c.batchLimits().Slices != 7 || !c.gate.Held() {
		t.Fatalf("control not in force: gate %d held %v, rate %v burst %d, sleep %s, batch %d", c.gate.Limit(), c.gate.Held(),
			c.limiter.Limit(), c.limiter.Burst(), c.sleepBetween(), c.batchLimits().Slices)
	}
	n, r = 100, 0
	c.apply(&checkpoint.Control{Version: 4, Limits: checkpoint.Limits{Rate: &r, Concurrency: &n}})
	if c.gate.Limit() != 8 || c.limiter.Limit() != rate.Inf || c.gate.Held() {
		t.Fatalf("gate %d (want the max, 8), rate %v, held %v", c.gate.Limit(), c.limiter.Limit(), c.gate.Held())
	}
	if len(applied) != 2 || applied[0].Version != 3 || !applied[0].Paused || applied[1].Limits.Concurrency != 8 {
		t.Fatalf("ControlApplied events: %+v", applied)
	}
}

// A concurrency above MaxConcurrency is warned about once per value asked
// for, not at every poll of the control record (every 2 s).
func TestCappedConcurrencyWarnedOncePerChange(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	e := &Engine{cfg: Config{Concurrency: 4, MaxConcurrency: 8, Logger: slog.New(slog.NewTextHandler(&logs, nil))}.WithDefaults()}
	c := e.newController(1, &cronLock{pid: 1})
	warned := func() int { return strings.Count(logs.String(), "above this process's --max-concurrency") }
	for i, n := range []int{100, 100, 100, 50, 50, 4, 100} {
		c.apply(&checkpoint.Control{Version: int64(i + 1), Limits: checkpoint.Limits{Concurrency: &n}})
	}
	// 100 (once), 50 (once), 4 (none), 100 again (once).
	if got := warned(); got != 3 {
		t.Fatalf("warned %d times, want 3 (once per change):\n%s", got, logs.String())
	}
}
