package engine

import (
	"testing"
	"time"
)

// A timeout below a millisecond is rounded up, never down to "0ms", which
// PostgreSQL reads as no timeout at all.
func TestTxSettingsRoundTimeoutsUp(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		time.Nanosecond:                        "1ms",
		500 * time.Microsecond:                 "1ms",
		time.Millisecond:                       "1ms",
		1500 * time.Microsecond:                "2ms",
		5 * time.Minute:                        "300000ms",
		MaxTimeout:                             "86400000ms",
		2*time.Second + 999999*time.Nanosecond: "2001ms",
	} {
		s := txSettings(Config{StatementTimeout: d, LockTimeout: d})
		if s["statement_timeout"] != want || s["lock_timeout"] != want {
			t.Errorf("%v: statement_timeout %q, lock_timeout %q, want %q", d, s["statement_timeout"], s["lock_timeout"], want)
		}
	}
	if s := txSettings(Config{}); s["statement_timeout"] != "" || s["lock_timeout"] != "" {
		t.Errorf("0 must leave the server's setting: %v", s)
	}
}
