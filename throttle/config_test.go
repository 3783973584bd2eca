package throttle

import (
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"10GB": 10 << 30, "512MB": 512 << 20, "512mb": 512 << 20, "1.5 GiB": 3 << 29,
		"1048576": 1 << 20, "64kB": 64 << 10, "2TB": 2 << 40, "0": 0, "7B": 7,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "10 parsecs", "-1GB", "1.2.3MB", "99999999TB"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
	for n, want := range map[int64]string{10 << 30: "10GB", 3 << 19: "1.5MB", 512: "512B"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDefaultConfigIsValidAndEverySignalOn(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range Signals {
		if on := cfg.Enabled(s); on != (s != ThrottleQuery) {
			t.Errorf("default %s enabled = %v", s, on)
		}
	}
	cfg.MaxBlocked, cfg.ApplicationName = time.Second, ""
	if cfg.Validate() == nil {
		t.Error("blocked signal without an application_name validated")
	}
}

// A red signal holds once it has been red for HoldAfterRed, and the clock
// restarts when it turns green.
func TestMonitorHoldsWhatStaysRed(t *testing.T) {
	m, err := NewMonitor(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	red := Reading{Signal: Blocked, State: Red, Reason: "pid 1 waits"}
	if r := m.escalate(red, t0); r.State != Red {
		t.Fatalf("first red: %v", r.State)
	}
	if r := m.escalate(red, t0.Add(DefaultHoldAfterRed-time.Second)); r.State != Red {
		t.Fatalf("red for less than %v: %v", DefaultHoldAfterRed, r.State)
	}
	r := m.escalate(red, t0.Add(DefaultHoldAfterRed))
	if r.State != Hold || r.Reason != "pid 1 waits (red for 1m0s)" {
		t.Fatalf("red for %v: %v %q, want hold saying so", DefaultHoldAfterRed, r.State, r.Reason)
	}
	m.escalate(Reading{Signal: Blocked}, t0.Add(DefaultHoldAfterRed+time.Second))
	if r := m.escalate(red, t0.Add(DefaultHoldAfterRed+2*time.Second)); r.State != Red {
		t.Fatalf("red again after green: %v, want red (clock restarted)", r.State)
	}
}

// A replay position that stays put across the standby's replies while WAL
// waits is a stall, measured between reply times; one that has merely not
// been reported since a burst (no newer reply) is not, and neither is an
// idle standby nor a moving one.
func TestStallIsMeasuredBetweenReplies(t *testing.T) {
	m, err := NewMonitor(Config{MaxReplicaLag: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	steps := []struct {
		pos, waiting int64
		reply        float64
		want         float64
	}{
		{100, 0, 0, 0},    // caught up
		{100, 50, 0, 0},   // a burst, not yet replied to
		{100, 50, 0, 0},   // still no newer reply: not stuck
		{100, 50, 0.5, 0}, // the first reply since: the clock starts
		{150, 0, 1, 0},    // replayed
		{150, 80, 2, 0},   // new WAL, replay paused
		{150, 80, 3, 0},   // the first reply since: the clock starts
		{150, 120, 6.5, 3.5},
		{160, 110, 7, 0}, // moving again
		{160, 0, 20, 0},  // idle for long: not a stall
		{160, 10, 21, 0},
		{160, 10, 22, 0},
		{160, 10, 24.5, 2.5},
	}
	for i, s := range steps {
		if got := m.stall("s", s.pos, s.waiting, at(s.reply)); got != s.want {
			t.Fatalf("step %d %+v: stall %v, want %v", i, s, got, s.want)
		}
	}
}
