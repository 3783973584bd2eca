package throttle_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/throttle"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// monitor builds a Monitor of cfg, failing the test on a bad config.
func monitor(t *testing.T, cfg throttle.Config) *throttle.Monitor {
	t.Helper()
	m, err := throttle.NewMonitor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// poll reads the Monitor's one enabled signal.
func poll(t *testing.T, m *throttle.Monitor, q throttle.Querier) throttle.Reading {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	readings, err := m.Poll(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(readings) != 1 {
		t.Fatalf("%d readings, want one (the test enables one signal): %+v", len(readings), readings)
	}
	return readings[0]
}

// pollUntil polls every 100 ms until ok accepts a reading, failing the
// test after within; it returns the accepted reading and every earlier one.
func pollUntil(t *testing.T, m *throttle.Monitor, q throttle.Querier, within time.Duration, what string, ok func(throttle.Reading) bool) (throttle.Reading, []throttle.Reading) {
	t.Helper()
	var seen []throttle.Reading
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		r := poll(t, m, q)
		if ok(r) {
			return r, seen
		}
		seen = append(seen, r)
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v; last reading %+v", what, within, r)
		}
	}
}

func state(s throttle.State) func(throttle.Reading) bool {
	return func(r throttle.Reading) bool { return r.State == s }
}

func requireState(t *testing.T, r throttle.Reading, want throttle.State) {
	t.Helper()
	if r.State != want {
		t.Fatalf("%s is %s (%q, value %v), want %s", r.Signal, r.State, r.Reason, r.Value, want)
	}
}

// withParam sets a connection parameter in a postgres:// URL.
func withParam(t *testing.T, raw, key, value string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// asUser is raw with another user and password.
func asUser(t *testing.T, raw, user, password string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

func exec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
