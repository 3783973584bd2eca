package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// cli runs one command line in-process and returns its exit code and
// combined output.
func cli(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	code := execute(context.Background(), args, &buf, &buf)
	return code, buf.String()
}

func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"frobnicate"},
		{"run", "--no-such-flag"},
		{"run", "--concurrency", "0"},
		{"run", "--rate", "-1"},
		{"run", "--force-partial"},
		{"status", "extra-arg"},
		{"--log-format", "xml", "status"},
	} {
		if code, out := cli(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, out)
		}
	}
}

// plan and run --dry-run print the plan and write nothing; a refused
// --months-back exits 2 and writes nothing either.
func TestPlanAndDryRunWriteNothing(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	for _, args := range [][]string{
		{"plan", "--database-url", url},
		{"run", "--dry-run", "--database-url", url},
	} {
		code, out := cli(t, args...)
		if code != 0 || !strings.Contains(out, "slices: ") || !strings.Contains(out, "nothing was written") {
			t.Fatalf("%v: exit %d\n%s", args[:2], code, out)
		}
	}
	if code, out := cli(t, "run", "--months-back", "1", "--database-url", url); code != 2 || !strings.Contains(out, "--force-partial") {
		t.Fatalf("months-back without force-partial: exit %d\n%s", code, out)
	}
	var schema bool
	var rollup int64
	var mark time.Time
	err := pool.QueryRow(context.Background(), `SELECT to_regnamespace('shardfill') IS NOT NULL,
		(SELECT count(*) FROM task_usage_hourly), (SELECT watermark_at FROM task_usage_hourly_rollup_state)`).Scan(&schema, &rollup, &mark)
	if err != nil || schema || rollup != 0 || mark.Year() != 1970 {
		t.Fatalf("something was written: schema=%v rollup=%d watermark=%s (%v)", schema, rollup, mark, err)
	}
}

// status --json carries the contract's fields; verify finds damage and
// --repair mends it; the password shows nowhere.
func TestRunStatusVerify(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	pw := pgtest.SharedServer(t).Password()
	var all strings.Builder
	step := func(want int, args ...string) string {
		t.Helper()
		code, out := cli(t, append(args, "--database-url", url)...)
		all.WriteString(out)
		if code != want {
			t.Fatalf("%v: exit %d, want %d\n%s", args, code, want, out)
		}
		return out
	}
	step(1, "status") // no run yet
	step(0, "run", "--concurrency", "3", "--no-progress")
	out := step(0, "status", "--json")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, f := range []string{"run_id", "state", "slices_total", "slices_done", "slices_failed", "slices_pending", "rows_done", "watermark_at"} {
		if _, ok := st[f]; !ok {
			t.Errorf("status --json lacks %q", f)
		}
	}
	if st["state"] != "done" || st["slices_done"] != st["slices_total"] || st["watermark_at"] == nil {
		t.Fatalf("status after run: %v", st)
	}
	step(0, "verify")
	if _, err := pool.Exec(context.Background(), `UPDATE task_usage_hourly SET output_tokens = output_tokens + 1
		WHERE ctid IN (SELECT ctid FROM task_usage_hourly LIMIT 2)`); err != nil {
		t.Fatal(err)
	}
	if out := step(1, "verify"); !strings.Contains(out, "mismatch: workspace") {
		t.Fatalf("verify did not list the damage:\n%s", out)
	}
	var repaired struct {
		Mismatches []map[string]any `json:"mismatches"`
		Repaired   int              `json:"repaired"`
		Remaining  int              `json:"remaining_after_repair"`
	}
	lines := strings.Split(strings.TrimSpace(step(0, "verify", "--repair", "--json")), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &repaired); err != nil { // logs go first
		t.Fatal(err)
	}
	if len(repaired.Mismatches) == 0 || repaired.Repaired != len(repaired.Mismatches) || repaired.Remaining != 0 {
		t.Fatalf("verify --repair: %+v", repaired)
	}
	step(0, "verify")
	testenv.RequireOracle(t, pool)
	// A wrong password must not be echoed either.
	bad := strings.Replace(url, pw, "Wr0ng-"+pw, 1)
	code, badOut := cli(t, "status", "--database-url", bad)
	all.WriteString(badOut)
	if code != 1 {
		t.Fatalf("wrong password: exit %d\n%s", code, badOut)
	}
	if strings.Contains(all.String(), pw) {
		t.Fatal("the password appeared in the output")
	}
}

// The real binary: SIGINT mid-run exits 130 with a resume hint (once), leaves the
// cron lock free, and running again finishes to the oracle.
func TestBinarySigintThenResume(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "shardfill")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)

	cmd := exec.Command(bin, "run", "--concurrency", "2", "--sleep-between-slices", "20ms", "--no-progress")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Wait until some slices are done, then interrupt.
	deadline := time.Now().Add(time.Minute)
	for {
		var done int64
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM shardfill.slice WHERE state = 'done'`).Scan(&done)
		if done >= 5 {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("exited before the interrupt (%v):\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress:\n%s", out.String())
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	err := <-exited
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit %d (%v), want 130\n%s", code, err, out.String())
	}
	if n := strings.Count(out.String(), "again to resume"); n != 1 {
		t.Fatalf("the resume hint is said %d times, want once:\n%s", n, out.String())
	}
	if !testenv.TryCronLock(t, url) {
		t.Fatal("cron lock held after SIGINT")
	}
	var pending int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM shardfill.slice WHERE state <> 'done'`).Scan(&pending); err != nil || pending == 0 {
		t.Fatalf("nothing left after SIGINT (%d, %v): interrupt came too late to test a resume", pending, err)
	}
	again := exec.Command(bin, "run", "--no-progress")
	again.Env = cmd.Env
	if b, err := again.CombinedOutput(); err != nil {
		t.Fatalf("resume: %v\n%s", err, b)
	}
	testenv.RequireOracle(t, pool)
}
