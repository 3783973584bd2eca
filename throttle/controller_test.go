package throttle

import (
	"strings"
	"testing"
	"time"
)

var (
	green   = []Reading{{Signal: ReplicaLag, State: Green}}
	redLag  = []Reading{{Signal: ReplicaLag, State: Red, Reason: "replica lag 42s on standby x > 30s"}}
	holdVac = []Reading{{Signal: Vacuum, State: Hold, Reason: "VACUUM of task_usage_hourly in progress"}}
)

// clock hands out poll times DefaultPollInterval apart.
type clock struct{ t time.Time }

func (c *clock) tick() time.Time {
	c.t = c.t.Add(DefaultPollInterval)
	return c.t
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func TestControllerStartsAtLimitsAndStaysQuietWhileGreen(t *testing.T) {
	c := NewController(Limits{Concurrency: 8, Rate: 100})
	clk := newClock()
	for i := 0; i < 10; i++ {
		d := c.Observe(clk.tick(), green)
		if d.EffectiveConcurrency != 8 || d.EffectiveRate != 100 || d.Hold || d.Reason != "" || d.Changed {
			t.Fatalf("poll %d: %+v, want the limits, unchanged, no reason", i, d)
		}
	}
}

// Red halves once, then again only after DecreaseInterval; never below
// one worker and RateStep of the rate.
func TestControllerRedHalvesAtMostEveryDecreaseInterval(t *testing.T) {
	c := NewController(Limits{Concurrency: 8, Rate: 100})
	clk := newClock()
	d := c.Observe(clk.tick(), redLag)
	if d.EffectiveConcurrency != 4 || d.EffectiveRate != 50 || d.Hold || !d.Changed {
		t.Fatalf("first red: %+v, want 4 workers, 50/s, changed", d)
	}
	if !strings.Contains(d.Reason, "replica lag 42s") {
		t.Fatalf("reason %q does not name the signal's reason", d.Reason)
	}
	// Within DecreaseInterval: no second cut, no log record.
	for t0 := clk.t; clk.t.Sub(t0) < DecreaseInterval-DefaultPollInterval; {
		if d = c.Observe(clk.tick(), redLag); d.EffectiveConcurrency != 4 || d.Changed {
			t.Fatalf("red again within %v: %+v, want 4 workers, unchanged", DecreaseInterval, d)
		}
	}
	d = c.Observe(clk.tick(), redLag)
	if d.EffectiveConcurrency != 2 || d.EffectiveRate != 25 || !d.Changed {
		t.Fatalf("red after %v: %+v, want 2 workers, 25/s", DecreaseInterval, d)
	}
	for i := 0; i < 20; i++ {
		d = c.Observe(clk.tick(), redLag)
	}
	if d.EffectiveConcurrency != 1 || d.EffectiveRate != 100*RateStep {
		t.Fatalf("red for long: %+v, want the floor of 1 worker and %v/s", d, 100*RateStep)
	}
}

// Back to green: one step every GreenPolls green polls, each a
// transition, until the limits; then the reason clears.
func TestControllerRecoversOneStepAtATime(t *testing.T) {
	c := NewController(Limits{Concurrency: 4, Rate: 100})
	clk := newClock()
	c.Observe(clk.tick(), redLag) // 2 workers, 50/s
	want := []struct {
		conc int
		rate float64
	}{{3, 60}, {4, 70}, {4, 80}, {4, 90}, {4, 100}}
	conc, first := 2, true
	for _, w := range want {
		for i := 1; i < GreenPolls; i++ {
			d := c.Observe(clk.tick(), green)
			// The first green poll is a transition (red -> recovering).
			if d.Changed != first || d.Reason == "" || d.EffectiveConcurrency != conc {
				t.Fatalf("green poll %d before the step to %v: %+v, want no step yet and a recovering reason", i, w, d)
			}
			first = false
		}
		conc = w.conc
		d := c.Observe(clk.tick(), green)
		if d.EffectiveConcurrency != w.conc || !approx(d.EffectiveRate, w.rate) || !d.Changed {
			t.Fatalf("step: %+v, want %d workers, %v/s, changed", d, w.conc, w.rate)
		}
		if w.rate < 100 && !strings.Contains(d.Reason, "recovering from replica_lag") {
			t.Fatalf("reason while recovering: %q", d.Reason)
		}
	}
	d := c.Observe(clk.tick(), green)
	if d.Reason != "" || d.Changed {
		t.Fatalf("at the limits: %+v, want no reason, unchanged", d)
	}
}

func approx(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// Hold stops claims at once and resumes at the halved pace; a red poll
// in between resets the green count.
func TestControllerHold(t *testing.T) {
	c := NewController(Limits{Concurrency: 6})
	clk := newClock()
	d := c.Observe(clk.tick(), append(append([]Reading{}, redLag...), holdVac...))
	if !d.Hold || d.EffectiveConcurrency != 3 || !d.Changed || !strings.Contains(d.Reason, "VACUUM") || strings.Contains(d.Reason, "replica lag") {
		t.Fatalf("hold: %+v, want hold at 3 workers, the vacuum's reason only", d)
	}
	if d = c.Observe(clk.tick(), holdVac); !d.Hold || d.Changed {
		t.Fatalf("hold again: %+v, want hold, unchanged", d)
	}
	d = c.Observe(clk.tick(), green)
	if d.Hold || d.EffectiveConcurrency != 3 || !d.Changed {
		t.Fatalf("hold cleared: %+v, want claims again at 3 workers, changed", d)
	}
	c.Observe(clk.tick(), green)
	c.Observe(clk.tick(), redLag) // too soon after the cut to cut again
	c.Observe(clk.tick(), green)
	if d = c.Observe(clk.tick(), green); d.EffectiveConcurrency != 3 {
		t.Fatalf("two greens after a red: %+v, want no step yet", d)
	}
	if d = c.Observe(clk.tick(), green); d.EffectiveConcurrency != 4 {
		t.Fatalf("three greens after a red: %+v, want 4 workers", d)
	}
	if d.EffectiveRate != 0 {
		t.Fatalf("unlimited rate, nothing measured: rate %v, want 0 (unlimited)", d.EffectiveRate)
	}
}

// An unlimited rate is cut from the measured rate and climbs back to
// unlimited.
func TestControllerUnlimitedRateStartsFromMeasured(t *testing.T) {
	c := NewController(Limits{Concurrency: 1})
	c.SetMeasuredRate(200)
	clk := newClock()
	d := c.Observe(clk.tick(), redLag)
	if d.EffectiveConcurrency != 1 || d.EffectiveRate != 100 {
		t.Fatalf("red at 1 worker, 200/s measured: %+v, want 1 worker, 100/s", d)
	}
	for i := 0; i < GreenPolls*4; i++ {
		d = c.Observe(clk.tick(), green)
	}
	if !approx(d.EffectiveRate, 180) || d.Reason == "" {
		t.Fatalf("after 4 steps: %+v, want 180/s and a recovering reason", d)
	}
	for i := 0; i < GreenPolls; i++ {
		d = c.Observe(clk.tick(), green)
	}
	if d.EffectiveRate != 0 || d.Reason != "" || !d.Changed {
		t.Fatalf("after 5 steps: %+v, want unlimited again, no reason, changed", d)
	}
}

// The operator's limits rule: lower ones cut at once, higher ones are
// followed at once when unthrottled (and are no health news: nothing to
// log) and, when throttled, take effect once the throttle's own cut is
// climbed back.
func TestControllerOperatorLimitsRule(t *testing.T) {
	c := NewController(Limits{Concurrency: 8, Rate: 100})
	clk := newClock()
	c.SetLimits(Limits{Concurrency: 16, Rate: 400})
	if d := c.Observe(clk.tick(), green); d.EffectiveConcurrency != 16 || d.EffectiveRate != 400 || d.Changed {
		t.Fatalf("raised while unthrottled: %+v, want 16 workers, 400/s at once, and no transition to log", d)
	}
	c.Observe(clk.tick(), redLag) // 8, 200
	c.SetLimits(Limits{Concurrency: 2, Rate: 50})
	d := c.Observe(clk.tick(), green)
	if d.EffectiveConcurrency != 2 || d.EffectiveRate != 50 {
		t.Fatalf("lowered while throttled: %+v, want 2 workers, 50/s", d)
	}
	c.Observe(clk.tick(), redLag) // after DecreaseInterval? not yet: stays
	clk.t = clk.t.Add(DecreaseInterval)
	d = c.Observe(clk.tick(), redLag)
	if d.EffectiveConcurrency != 1 || d.EffectiveRate != 25 {
		t.Fatalf("red under the new limits: %+v, want 1 worker, 25/s", d)
	}
	c.SetLimits(Limits{Concurrency: 3, Rate: 100})
	for i := 0; i < GreenPolls; i++ {
		d = c.Observe(clk.tick(), green)
	}
	if d.EffectiveConcurrency != 3 || d.EffectiveRate != 30 {
		t.Fatalf("raised while throttled: %+v, want one step of its own cut (1 to 2 workers, which ends it: the "+
			"operator's 3; 25 + 10 %% of the 50/s it cut from), not a jump to 100/s nor steps of 10/s", d)
	}
}

// A `set` while nothing is cut changes the pace at once and is no health
// news: no transition, so the engine logs no "back at the configured
// pace" for it.
func TestControllerOperatorSetIsNoHealthNews(t *testing.T) {
	c := NewController(Limits{Concurrency: 4, Rate: 20})
	clk := newClock()
	c.Observe(clk.tick(), green)
	for _, l := range []Limits{{Concurrency: 8, Rate: 40}, {Concurrency: 2, Rate: 0}, {Concurrency: 2, Rate: 5}} {
		c.SetLimits(l)
		if d := c.Observe(clk.tick(), green); d.Changed || d.Reason != "" || d.EffectiveConcurrency != l.Concurrency || d.EffectiveRate != l.Rate {
			t.Fatalf("set %+v while green: %+v, want the new limits at once, unchanged, no reason", l, d)
		}
	}
}

// An operator's raise while the throttle has cut applies at once up to
// what the throttle allows; the climb goes back only to where the
// throttle cut from, in steps of that pace, and then the raise rules:
// never a slow climb to the operator's new limits.
func TestControllerOperatorRaiseIsNotClimbed(t *testing.T) {
	c := NewController(Limits{Concurrency: 4, Rate: 20})
	clk := newClock()
	c.Observe(clk.tick(), redLag) // 2 workers, 10/s
	c.SetLimits(Limits{Concurrency: 8, Rate: 40})
	d := c.Observe(clk.tick(), green)
	if d.EffectiveConcurrency != 2 || d.EffectiveRate != 10 {
		t.Fatalf("raised while cut: %+v, want what the throttle allows (2 workers, 10/s)", d)
	}
	steps := 0
	for d.EffectiveRate != 40 || d.EffectiveConcurrency != 8 {
		if steps++; steps > 20 {
			t.Fatalf("not at the raised limits after 20 steps: %+v", d)
		}
		for range GreenPolls {
			d = c.Observe(clk.tick(), green)
		}
	}
	// 10/s back to 20/s in steps of 2/s, 2 workers back to 4: 5 steps;
	// climbing to the raise would take 8 (2 to 8 workers: 6).
	if steps != 5 || d.Reason != "" {
		t.Fatalf("%d steps to the raised limits (%+v), want 5: the climb of the throttle's own cut, then the raise at once", steps, d)
	}

	// Unlimited by the operator while a rate is cut: the cut climbs back
	// to where it was made, then there is no limit.
	c = NewController(Limits{Concurrency: 1, Rate: 25})
	c.Observe(clk.tick(), redLag) // 12.5/s
	c.SetLimits(Limits{Concurrency: 1, Rate: 30})
	c.SetLimits(Limits{Concurrency: 1, Rate: 0})
	for steps = 0; d.EffectiveRate != 0 || d.Reason != ""; {
		if steps++; steps > 20 {
			t.Fatalf("not unlimited after 20 steps: %+v", d)
		}
		for range GreenPolls {
			d = c.Observe(clk.tick(), green)
		}
	}
	if steps != 5 {
		t.Fatalf("%d steps from 12.5/s (cut from 25/s) to unlimited, want 5 of 2.5/s", steps)
	}
}
