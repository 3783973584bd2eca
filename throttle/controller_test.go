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
// followed at once when unthrottled and climbed to when throttled.
func TestControllerOperatorLimitsRule(t *testing.T) {
	c := NewController(Limits{Concurrency: 8, Rate: 100})
	clk := newClock()
	c.SetLimits(Limits{Concurrency: 16, Rate: 400})
	if d := c.Observe(clk.tick(), green); d.EffectiveConcurrency != 16 || d.EffectiveRate != 400 || !d.Changed {
		t.Fatalf("raised while unthrottled: %+v, want 16 workers, 400/s at once", d)
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
	if d.EffectiveConcurrency != 2 || d.EffectiveRate != 35 {
		t.Fatalf("raised while throttled: %+v, want one step (2 workers, 25+10/s), not a jump", d)
	}
}
