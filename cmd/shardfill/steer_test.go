package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/internal/testenv"
)

// buildBinary builds the real shardfill binary for one test.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shardfill")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// proc is a shardfill binary running in the background.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr testenv.Output
	exited         chan struct{}
	code           int
}

func startBinary(t *testing.T, bin, url string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *proc) output() string { return p.stdout.String() + p.stderr.String() }

// wait returns the exit code, failing the test after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("still running after %s:\n%s", timeout, p.output())
		return -1
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// eventually polls cond every 100 ms until it holds, failing after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, what)
		}
	}
}

func doneSlices(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	// Before the first process created the checkpoint tables: none.
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM shardfill.slice WHERE state = 'done'`).Scan(&n)
	return n
}

// processJSON is one live process in status --json.
type processJSON struct {
	Owner          string  `json:"owner"`
	State          string  `json:"state"`
	ControlVersion int64   `json:"control_version"`
	Rate           float64 `json:"rate"`
	Concurrency    int     `json:"concurrency"`
	AckedAt        string  `json:"acknowledged_at"`
}

// statusJSON is status --json as a test reads it.
type statusJSON struct {
	RunID          int64         `json:"run_id"`
	State          string        `json:"state"`
	SlicesTotal    int64         `json:"slices_total"`
	SlicesDone     int64         `json:"slices_done"`
	SlicesFailed   int64         `json:"slices_failed"`
	SlicesPending  int64         `json:"slices_pending"`
	SlicesRunning  int64         `json:"slices_running"`
	ETASeconds     *float64      `json:"eta_seconds"`
	Paused         bool          `json:"paused"`
	PausedBy       *string       `json:"paused_by"`
	PausedAt       *string       `json:"paused_at"`
	ControlVersion int64         `json:"control_version"`
	ThrottleReason *string       `json:"throttle_reason"`
	WatermarkAt    *string       `json:"watermark_at"`
	StampedAt      *string       `json:"stamped_at"`
	Processes      []processJSON `json:"processes"`
	Failures       []struct {
		Error   string `json:"error"`
		Slices  int64  `json:"slices"`
		Example struct {
			ID        int64  `json:"id"`
			Workspace string `json:"workspace_id"`
			Error     string `json:"error"`
		} `json:"example"`
	} `json:"failures"`
	FailureGroupsOmitted *int64 `json:"failure_groups_omitted"`
}

func status(t *testing.T, url string, extra ...string) (statusJSON, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(context.Background(), append([]string{"status", "--json", "--database-url", url}, extra...), &out, &errOut)
	var st statusJSON
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status --json (exit %d): %v\n%s%s", code, err, out.String(), errOut.String())
	}
	return st, code
}

// Pause holds every process of a run, across two processes and a restart;
// set and unpause apply within seconds in every process; the run then
// finishes to the oracle.
func TestPauseHoldsAcrossProcessesAndRestart(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	args := []string{"run", "--concurrency", "2", "--rate", "5", "--burst", "1", "--no-progress"}
	a, b := startBinary(t, bin, url, args...), startBinary(t, bin, url, args...)
	eventually(t, 30*time.Second, "5 slices done", func() bool { return doneSlices(t, pool) >= 5 })

	if code, out := cli(t, "pause", "--by", "tester", "--database-url", url); code != 0 || !strings.Contains(out, "paused by tester") {
		t.Fatalf("pause: exit %d\n%s", code, out)
	}
	// Within seconds both processes acknowledge and hold; batches in
	// flight finish, nothing new is claimed.
	var st statusJSON
	eventually(t, 10*time.Second, "both processes paused", func() bool {
		st, _ = status(t, url)
		return len(st.Processes) == 2 && !slices.ContainsFunc(st.Processes, func(p processJSON) bool {
			return p.State != "paused" || p.ControlVersion != st.ControlVersion
		}) && st.SlicesRunning == 0
	})
	if st.State != "paused" || st.PausedBy == nil || *st.PausedBy != "tester" || st.PausedAt == nil ||
		st.ThrottleReason == nil || st.ETASeconds != nil {
		t.Fatalf("status of a paused run: %+v", st)
	}
	held := doneSlices(t, pool)
	if held >= st.SlicesTotal {
		t.Fatal("the run finished before the pause: nothing left to hold")
	}
	time.Sleep(2 * engine.ControlInterval)
	if now := doneSlices(t, pool); now != held || !a.running() || !b.running() {
		t.Fatalf("paused run moved: %d -> %d slices done (a running %v, b running %v)\n%s\n%s", held, now, a.running(), b.running(), a.output(), b.output())
	}
	if !testenv.HeldCronLock(t, url) {
		t.Fatal("a paused run let go of the cron lock")
	}

	// A restart joins the paused run and waits, saying so.
	_ = a.cmd.Process.Signal(syscall.SIGINT)
	if code := a.wait(t, 15*time.Second); code != 130 {
		t.Fatalf("interrupted process: exit %d\n%s", code, a.output())
	}
	if st, _ := status(t, url); st.State != "paused" {
		t.Fatalf("one process left, the other is paused: state %s", st.State)
	}
	a2 := startBinary(t, bin, url, args...)
	eventually(t, 15*time.Second, "the restarted process says it waits", func() bool {
		return strings.Contains(a2.output(), "run is paused")
	})
	time.Sleep(engine.ControlInterval)
	if now := doneSlices(t, pool); now != held {
		t.Fatalf("the restarted process worked on a paused run: %d -> %d\n%s", held, now, a2.output())
	}

	// set: every live process applies the new limits within seconds.
	if code, out := cli(t, "set", "--rate", "0", "--concurrency", "1", "--database-url", url); code != 0 {
		t.Fatalf("set: exit %d\n%s", code, out)
	}
	eventually(t, 3*engine.ControlInterval, "both processes run under the new limits", func() bool {
		st, _ = status(t, url)
		ok := len(st.Processes) == 2
		for _, p := range st.Processes {
			ok = ok && p.ControlVersion == st.ControlVersion && p.Rate == 0 && p.Concurrency == 1
		}
		return ok
	})

	if code, out := cli(t, "unpause", "--database-url", url); code != 0 {
		t.Fatalf("unpause: exit %d\n%s", code, out)
	}
	for _, p := range []*proc{b, a2} {
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("after unpause: exit %d\n%s", code, p.output())
		}
	}
	if st, code := status(t, url, "--check"); code != 0 || st.State != "done" || st.WatermarkAt == nil || st.StampedAt == nil {
		t.Fatalf("after the run: exit %d, %+v", code, st)
	}
	testenv.RequireOracle(t, pool)
}

// run --metrics-addr serves /metrics and /healthz and the counters move;
// with --log-format json every stderr line is a JSON object and progress
// records carry the fields; under --rate the ETA is not zero while work
// remains, and is at least what the rate allows.
func TestMetricsProgressRecordsAndRateETA(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	const rate = 4
	p := startBinary(t, bin, url, "run", "--concurrency", "2", "--rate", strconv.Itoa(rate), "--burst", "1",
		"--log-format", "json", "--progress-interval", "300ms", "--metrics-addr", "127.0.0.1:0")

	var addr string
	eventually(t, 30*time.Second, "the metrics address is logged", func() bool {
		m := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(p.stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("/metrics: %s\n%s", resp.Status, b)
		}
		return string(b)
	}
	value := func(text, name string) float64 {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no %s in\n%s", name, text)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	// The server is up before the run is planned; wait for work.
	var first string
	eventually(t, 30*time.Second, "a slice done in /metrics", func() bool {
		first = scrape()
		return strings.Contains(first, "\nshardfill_slices_done_total ") && value(first, "shardfill_slices_done_total") > 0
	})
	for _, name := range []string{"shardfill_slices_done_total", "shardfill_rows_written_total", "shardfill_slices_failed_total",
		"shardfill_slice_retries_total", "shardfill_batch_duration_seconds_bucket", "shardfill_run_slices{state=\"pending\"}",
		"shardfill_run_rows_done", "shardfill_run_rows_total", "shardfill_run_eta_seconds", "shardfill_run_paused",
		"shardfill_limit_rate", "shardfill_limit_concurrency", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(first, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if got := value(first, "shardfill_limit_rate"); got != rate {
		t.Errorf("shardfill_limit_rate %v, want %d", got, rate)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	before := value(first, "shardfill_slices_done_total")
	time.Sleep(1500 * time.Millisecond)
	if after := value(scrape(), "shardfill_slices_done_total"); after <= before {
		t.Fatalf("shardfill_slices_done_total did not move: %v -> %v", before, after)
	}

	// The ETA, in status and in the progress records, while work remains.
	st, _ := status(t, url)
	if st.SlicesDone >= st.SlicesTotal {
		t.Fatal("the run ended before the ETA could be read")
	}
	unfinished := float64(st.SlicesPending + st.SlicesRunning)
	if st.ETASeconds == nil || *st.ETASeconds < 0.9*unfinished/rate {
		t.Fatalf("status ETA under --rate %d with %v slices left: %v", rate, unfinished, st.ETASeconds)
	}
	var rec map[string]any
	eventually(t, 10*time.Second, "a progress record with an ETA", func() bool {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var r map[string]any
			if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == "progress" {
				if eta, ok := r["eta_seconds"].(float64); ok && eta > 0 && r["slices_done"].(float64) < r["slices_total"].(float64) {
					rec = r
				}
			}
		}
		return rec != nil
	})
	for _, f := range []string{"run_id", "slices_done", "slices_total", "rows_done", "rows_total", "rows_per_second",
		"eta_seconds", "failed", "retries", "paused"} {
		if _, ok := rec[f]; !ok {
			t.Errorf("progress record lacks %q: %v", f, rec)
		}
	}

	// Lift the limit: the change applies without a restart and the run ends.
	if code, out := cli(t, "set", "--rate", "0", "--database-url", url); code != 0 {
		t.Fatalf("set: exit %d\n%s", code, out)
	}
	// At the old rate the rest would take far longer.
	if code := p.wait(t, 3*engine.ControlInterval+4*time.Second); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, p.output())
	}
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	for sc.Scan() {
		if line := sc.Text(); !json.Valid([]byte(line)) {
			t.Errorf("stderr line is not JSON: %q", line)
		}
	}
	if !strings.Contains(p.stderr.String(), `"msg":"limits changed"`) {
		t.Errorf("the new rate was not applied:\n%s", p.stderr.String())
	}
	testenv.RequireOracle(t, pool)
}

// Many slices failing with one cause log one ERROR line for it and show
// as one group in status, with its count; status --check exits 1 for a
// failed and an interrupted run, 0 once done.
func TestFailuresGroupedAndStatusCheck(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	var ws string
	err := pool.QueryRow(context.Background(), `SELECT a.workspace_id::text FROM task_usage u
		JOIN agent_task_queue t ON t.id = u.task_id JOIN agent a ON a.id = t.agent_id
		GROUP BY 1 ORDER BY count(DISTINCT date_trunc('month', u.created_at)) DESC, 1 LIMIT 1`).Scan(&ws)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.Output
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	_, err = testenv.Engine(t, url, &testenv.FailingJob{Batched: testenv.Rollup(t, testenv.Pool(t, url)), Workspace: ws}, engine.Config{MaxAttempts: 1, Logger: logger}).Run(context.Background())
	var failed *engine.FailedError
	if !errors.As(err, &failed) {
		t.Fatalf("want FailedError, got %v", err)
	}
	st, code := status(t, url, "--check")
	if code != 1 || st.State != "failed" {
		t.Fatalf("status --check of a failed run: exit %d, state %s", code, st.State)
	}
	if st.SlicesFailed < 2 || len(st.Failures) != 1 || st.Failures[0].Slices != st.SlicesFailed ||
		st.Failures[0].Example.Workspace != ws || !strings.Contains(st.Failures[0].Error, "no_such_column") ||
		strings.Contains(st.Failures[0].Error, "workspace") || st.FailureGroupsOmitted == nil || *st.FailureGroupsOmitted != 0 {
		t.Fatalf("failures not grouped: %d failed, %+v", st.SlicesFailed, st.Failures)
	}
	if n := strings.Count(logs.String(), `"msg":"slice failed`); n != 1 {
		t.Fatalf("%d 'slice failed' lines for %d slices failing with one error, want 1:\n%s", n, st.SlicesFailed, logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"more slices failed with the same error","slices":`+strconv.FormatInt(st.SlicesFailed-1, 10)) {
		t.Fatalf("no summary of the other failures:\n%s", logs.String())
	}
	if code, out := cli(t, "status", "--database-url", url); code != 0 ||
		!strings.Contains(out, "failed: "+strconv.FormatInt(st.SlicesFailed, 10)+" slices: ") {
		t.Fatalf("status text: exit %d\n%s", code, out)
	}

	// Interrupted: a cancel mid-run.
	ctx, cancel := context.WithCancel(context.Background())
	e := testenv.Engine(t, url, nil, engine.Config{NewRun: true, OnEvent: func(ev engine.Event) {
		if ev.Kind == engine.SliceDone {
			cancel()
		}
	}})
	if _, err := e.Run(ctx); !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if st, code := status(t, url, "--check"); code != 1 || st.State != "interrupted" || st.ETASeconds != nil || len(st.Processes) != 0 {
		t.Fatalf("status --check of an interrupted run: exit %d, %+v", code, st)
	}
	if code, out := cli(t, "run", "--no-progress", "--database-url", url); code != 0 {
		t.Fatalf("resume: exit %d\n%s", code, out)
	}
	if _, code := status(t, url, "--check"); code != 0 {
		t.Fatalf("status --check of a done run: exit %d", code)
	}
	testenv.RequireOracle(t, pool)
}

// pause, unpause and set refuse what they cannot do with exit 2; in JSON
// mode the final error is a JSON object too.
func TestSteerRefusals(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	for _, args := range [][]string{
		{"pause"}, // no run yet
		{"set", "--rate", "1"},
		{"set"}, // nothing to set
		{"set", "--rate", "-1"},
		{"set", "--burst", "0"},
		{"set", "--concurrency", "0"},
		{"set", "--sleep-between-slices", "-1s"},
		{"--log-level", "loud", "status"},
	} {
		if code, out := cli(t, append(args, "--database-url", url)...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, out)
		}
	}
	if code, out := cli(t, "run", "--no-progress", "--database-url", url); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"pause"}, {"unpause"}, {"set", "--rate", "5"}, {"pause", "--run", "99"}} {
		code, out := cli(t, append(args, "--database-url", url)...)
		if code != 2 || !(strings.Contains(out, "is done") || strings.Contains(out, "no run 99")) {
			t.Errorf("%v on a finished run: exit %d, want 2\n%s", args, code, out)
		}
	}
	var stdout, stderr bytes.Buffer
	code := execute(context.Background(), []string{"--log-format", "json", "pause", "--database-url", url}, &stdout, &stderr)
	var line map[string]any
	if code != 2 || json.Unmarshal(stderr.Bytes(), &line) != nil || line["level"] != "ERROR" || line["exit_code"] != float64(2) {
		t.Fatalf("JSON mode error: exit %d, %q", code, stderr.String())
	}
}
