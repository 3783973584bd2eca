package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// echoServer answers every connection by echoing what it reads.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func TestLatencyProxyDelaysEachWayAndKeepsBytes(t *testing.T) {
	t.Parallel()
	const delay = 20 * time.Millisecond
	p, err := StartLatencyProxy(echoServer(t), delay)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// One small round trip takes at least the delay twice.
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*delay {
		t.Fatalf("round trip %s, want ≥ %s", rtt, 2*delay)
	}

	// A megabyte arrives intact and in far less than one delay per chunk:
	// the proxy delays, it does not serialise.
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	start = time.Now()
	go c.Write(payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload corrupted by the proxy")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("1 MiB took %s through the proxy", took)
	}
}

func TestLatencyProxyURL(t *testing.T) {
	t.Parallel()
	p, err := StartLatencyProxy("127.0.0.1:1", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	u, err := p.URL("postgres://u:pw@127.0.0.1:5432/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if want := "postgres://u:pw@" + p.Addr() + "/db?sslmode=disable"; u != want {
		t.Fatalf("URL = %s, want %s", u, want)
	}
	if strings.Contains(redactURL(u), "pw") {
		t.Fatalf("redactURL kept the password: %s", redactURL(u))
	}
}

func TestSampleMonthsSkipsTheEdges(t *testing.T) {
	t.Parallel()
	all := make([]month, 24)
	for i := range all {
		all[i].rows = int64(i)
	}
	got := sampleMonths(all, 2)
	if len(got) != 2 || got[0].rows != 8 || got[1].rows != 16 {
		t.Fatalf("sampleMonths(24, 2) = %+v, want months 8 and 16", got)
	}
	if len(sampleMonths(all, 0)) != 24 || len(sampleMonths(all, 30)) != 24 {
		t.Fatal("sampleMonths with n <= 0 or n >= len must return every month")
	}
}

func TestTargetsFromResults(t *testing.T) {
	t.Parallel()
	r := &Report{Size: "medium", Results: []Result{
		{Mode: ModeSerial, Wall: 1000 * time.Second, Rows: 1000},
		{Mode: ModeLimit, Wall: 10 * time.Second, Rows: 1000},
		{Mode: ModeShardfill, Concurrency: 1, Wall: 11 * time.Second, Rows: 1000, MaxRSSKiB: 30 << 10},
		{Mode: ModeShardfill, Concurrency: 2, Wall: 8 * time.Second, Rows: 1000, MaxRSSKiB: 70 << 10},
	}}
	status := map[string]string{}
	for _, tg := range r.Targets() {
		status[tg.Name[:12]] = tg.Status
	}
	if status["shardfill c="] == "" || status["peak RSS of "] != "missed" {
		t.Fatalf("targets: %+v", r.Targets())
	}
	if got := r.RatioToLimit(r.Results[2]); got < 1.09 || got > 1.11 {
		t.Fatalf("ratio to limit = %v, want 1.1", got)
	}
	if got := r.SpeedupOverSerial(r.Results[3]); got != 125 {
		t.Fatalf("speedup = %v, want 125", got)
	}
}

// The size ratio compares large with medium and says where medium's time
// came from; the limit's own ratio rides along.
func TestSizeRatioTarget(t *testing.T) {
	t.Parallel()
	r := &Report{Size: "large", Results: []Result{
		{Mode: ModeLimit, Wall: 40 * time.Second, Rows: 4000},
		{Mode: ModeShardfill, Concurrency: 2, Wall: 30 * time.Second, Rows: 4000},
	}, MediumWall: map[int]time.Duration{2: 7 * time.Second}, MediumLimit: 10 * time.Second, MediumSameRun: true}
	var got *Target
	for _, tg := range r.Targets() {
		if strings.HasPrefix(tg.Name, "large / medium time (shardfill c=2") {
			got = &tg
		}
	}
	want := "large / medium time (shardfill c=2; medium measured in this run; the limit itself: 4.00)"
	if got == nil || got.Name != want || got.Got != "4.29" || got.Status != "met" {
		t.Fatalf("size ratio target = %+v, want %q at 4.29, met", got, want)
	}
}

// TestLimitAndSerialMatchTheOracle checks both references on a small
// history: a reference that computed something else would make every
// comparison meaningless.
func TestLimitAndSerialMatchTheOracle(t *testing.T) {
	ctx := context.Background()
	db, err := OpenDB(ctx, "limit", pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Fill(ctx, fixture.Config{Seed: 7, Workspaces: 8, Months: 4, Rows: 2_000, Skew: 1.1, End: historyEnd}); err != nil {
		t.Fatal(err)
	}
	h := &Harness{}
	if _, err := h.Limit(ctx, db); err != nil {
		t.Fatal(err)
	}
	res, err := h.Serial(ctx, db, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || res.Note != "" {
		t.Fatalf("full serial run: %+v", res)
	}
	// Verify must catch a wrong rollup.
	if _, err := db.Pool.Exec(ctx, `UPDATE task_usage_hourly SET event_count = event_count + 1
		WHERE ctid = (SELECT min(ctid) FROM task_usage_hourly)`); err != nil {
		t.Fatal(err)
	}
	if err := Verify(ctx, db, "broken"); err == nil || !strings.Contains(err.Error(), "WRONG RESULT") {
		t.Fatalf("Verify on a broken rollup: %v", err)
	}
}

func TestMedianTakesTheMiddleRound(t *testing.T) {
	rounds := []Result{{Wall: 3 * time.Second, RunID: 1}, {Wall: time.Second, RunID: 2}, {Wall: 2 * time.Second, RunID: 3}}
	if got := Median(rounds); got.RunID != 3 {
		t.Fatalf("median of 3 s, 1 s, 2 s: got run %d (%s), want run 3 (2 s)", got.RunID, got.Wall)
	}
	if got := Median(rounds[:2]); got.RunID != 1 {
		t.Fatalf("median of 3 s, 1 s: got run %d, want the slower, run 1", got.RunID)
	}
	if rounds[0].RunID != 1 {
		t.Fatal("Median reordered its argument")
	}
}

// The ETA is judged at the first read past each mark, against the whole
// run's totals, as a share of the time really left.
func TestETAReportJudgesTheFirstReadPastEachMark(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	eta := func(s float64) *float64 { return &s }
	samples := []etaSample{
		{at: t0, done: 5, total: 100, eta: eta(100)},
		{at: t0.Add(2 * time.Second), done: 12, total: 200, eta: eta(30), planning: true}, // 12 of 200 is not 10 %
		{at: t0.Add(4 * time.Second), done: 25, total: 200, eta: eta(18)},                 // 10 %: 18 s predicted, 16 s left
		{at: t0.Add(10 * time.Second), done: 100, total: 200, eta: nil},                   // 50 %: no ETA
	}
	got := etaReport(samples, t0.Add(20*time.Second), len(samples))
	for _, want := range []string{"10%: ETA 18s, real 16s (+12%)", "50%: no ETA given with 10s left"} {
		if !strings.Contains(got, want) {
			t.Errorf("report %q lacks %q", got, want)
		}
	}
}
