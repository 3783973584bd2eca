package main

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// nowhere is a URL whose server is never reached: the tests below must be
// refused before any connection.
const nowhere = "postgres://u:pw@127.0.0.1:1/db?sslmode=disable"

// Issue 12 item 5: every number has a range; a value outside it exits 2
// and names the flag, before anything touches the database.
func TestNumericFlagsBounded(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		flag string
		args []string
	}{
		{"--months-back", []string{"run", "--months-back", "9223372036854775807", "--force-partial"}},
		{"--months-back", []string{"run", "--months-back", "100000"}},
		{"--months-back", []string{"plan", "--months-back", "100000", "--force-partial"}},
		{"--months-back", []string{"verify", "--months-back", "100000"}},
		{"--concurrency", []string{"run", "--concurrency", "2147483647"}},
		{"--concurrency", []string{"run", "--concurrency", "1025"}},
		{"--rate", []string{"run", "--rate", "NaN"}},
		{"--rate", []string{"run", "--rate", "+Inf"}},
		{"--rate", []string{"run", "--rate", "1e7"}},
		{"--rate", []string{"verify", "--rate", "NaN"}},
		{"--burst", []string{"run", "--burst", "2000000"}},
		{"--batch-slices", []string{"run", "--batch-slices", "2000000"}},
		{"--batch-rows", []string{"run", "--batch-rows", "99999999999"}},
		{"--max-slice-rows", []string{"plan", "--max-slice-rows", "99999999999"}},
		{"--max-attempts", []string{"run", "--max-attempts", "1001"}},
		{"--lease", []string{"run", "--lease", "25h"}},
		{"--statement-timeout", []string{"run", "--statement-timeout", "25h"}},
		{"--lock-timeout", []string{"run", "--lock-timeout", "25h"}},
		{"--sleep-between-slices", []string{"run", "--sleep-between-slices", "2h"}},
		// The demo refuses before it starts a server.
		{"--concurrency", []string{"demo", "--concurrency", "2147483647"}},
		{"--months", []string{"demo", "--months", "100000"}},
		{"--rows", []string{"demo", "--rows", "0"}},
		{"--interrupt-at", []string{"demo", "--interrupt-at", "NaN"}},
	} {
		code, out := cli(t, append(c.args, "--database-url", nowhere)...)
		if code != 2 || !strings.Contains(out, c.flag+" must be") {
			t.Errorf("%v: exit %d, want 2 naming %s\n%s", c.args, code, c.flag, out)
		}
		if strings.Contains(out, "out of range") || strings.Contains(out, "cannot reach") || strings.Contains(out, "==> ") {
			t.Errorf("%v: got past validation:\n%s", c.args, out)
		}
	}
}

// Issue 13 item 5: a mistyped command gets cobra's suggestions, still as
// a usage error.
func TestUnknownCommandSuggests(t *testing.T) {
	t.Parallel()
	for typed, want := range map[string]string{"stauts": "status", "veriyf": "verify", "rnu": "run"} {
		code, out := cli(t, typed)
		if code != 2 || !strings.Contains(out, "Did you mean this?") || !strings.Contains(out, "\t"+want+"\n") {
			t.Errorf("%s: exit %d, want 2 suggesting %s\n%s", typed, code, want, out)
		}
	}
	if code, out := cli(t, "frobnicate"); code != 2 || strings.Contains(out, "Did you mean") {
		t.Errorf("frobnicate: exit %d\n%s", code, out)
	}
}

// `shardfill version` and `shardfill --version` print the same: the
// module version, the VCS revision (or why there is none), the toolchain.
func TestVersion(t *testing.T) {
	t.Parallel()
	code1, out1 := cli(t, "version")
	code2, out2 := cli(t, "--version")
	if code1 != 0 || code2 != 0 || out1 != out2 {
		t.Fatalf("version: exit %d, --version: exit %d\n%s\n%s", code1, code2, out1, out2)
	}
	for _, want := range []string{"shardfill ", "revision", runtime.Version()} {
		if !strings.Contains(out1, want) {
			t.Errorf("version lacks %q:\n%s", want, out1)
		}
	}
}

// The revision, its commit time and a dirty tree come from the build info.
func TestVersionFromBuildInfo(t *testing.T) {
	t.Parallel()
	bi := &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-11-30T12:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	got := formatVersion(bi)
	for _, want := range []string{"shardfill v1.2.3\n", "revision   0123456789abcdef0123456789abcdef01234567 (modified", "committed  2026-11-30T12:00:00Z", runtime.Version()} {
		if !strings.Contains(got, want) {
			t.Errorf("version lacks %q:\n%s", want, got)
		}
	}
	if got := formatVersion(nil); !strings.Contains(got, "revision   unknown") {
		t.Errorf("without build info:\n%s", got)
	}
}

// The real binary reports the revision it was built from when the build
// info carries one (GOFLAGS=-buildvcs=false leaves it out).
func TestBinaryVersion(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "shardfill")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	info, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	want := "revision   unknown"
	if m := regexp.MustCompile(`vcs\.revision=(\w+)`).FindSubmatch(info); m != nil {
		want = "revision   " + string(m[1])
	}
	if !strings.Contains(string(out), want) || !strings.HasPrefix(string(out), "shardfill ") {
		t.Fatalf("--version says\n%s\nwant %q (build info:\n%s)", out, want, info)
	}
}

// silentServer accepts TCP connections and never says a word.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return l.Addr().String()
}

// Issue 13 item 5: a server that accepts and never answers fails the
// command after the connect timeout (the URL's, else 10 s), saying so.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	addr := silentServer(t)
	for _, c := range []struct {
		name     string
		url      string
		min, max time.Duration
	}{
		{"from the URL", "postgres://u:pw@" + addr + "/db?connect_timeout=1", 900 * time.Millisecond, 4 * time.Second},
		{"default", "postgres://u:pw@" + addr + "/db", defaultConnectTimeout - 500*time.Millisecond, defaultConnectTimeout + 2*time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, out := cli(t, "status", "--database-url", c.url)
			took := time.Since(start)
			if code != 1 || !strings.Contains(out, "the server did not answer within") || took < c.min || took > c.max {
				t.Fatalf("exit %d after %s, want 1 within [%s, %s] saying the server did not answer\n%s", code, took, c.min, c.max, out)
			}
		})
	}
}

// Issue 13 item 5: a wrong password is an authentication failure, not an
// unreachable database.
func TestAuthenticationFailureNamed(t *testing.T) {
	t.Parallel()
	srv := pgtest.SharedServer(t)
	pw := srv.Password()
	if pw == "" {
		t.Skip("the server has no password")
	}
	bad := strings.Replace(srv.AdminURL(), pw, "Wr0ng-"+pw, 1)
	code, out := cli(t, "status", "--database-url", bad)
	if code != 1 || !strings.Contains(out, "authentication failed for user") || strings.Contains(out, "cannot reach") {
		t.Fatalf("exit %d, want 1 naming the authentication failure\n%s", code, out)
	}
	if strings.Contains(out, pw) {
		t.Fatal("the password appeared in the output")
	}
}

// Issue 12 item 6: a password with an unescaped '@' is refused without
// echoing any part of the URL, in every form it can be given and in both
// log formats; nothing is blanked but whole secrets.
func TestURLWithUnescapedAt(t *testing.T) {
	t.Parallel()
	const url = "postgres://shardfill:MyS3cret@Tail@db.example:5432/multica"
	for _, args := range [][]string{
		{"status", "--database-url", url},
		{"--log-format", "json", "status", "--database-url=" + url},
		{"run", "--no-progress", "--database-url", url},
		{"verify", "--json", "--database-url", url},
	} {
		code, out := cli(t, args...)
		if code != 2 || !strings.Contains(out, "percent-encode") || !strings.Contains(out, "%40") {
			t.Errorf("%v: exit %d, want 2 saying to percent-encode\n%s", args[:2], code, out)
		}
		for _, part := range []string{"MyS3cret", "Tail", "db.example", "xxxxx"} {
			if strings.Contains(out, part) {
				t.Errorf("%v: the output holds %q\n%s", args[:2], part, out)
			}
		}
	}
	// Given where a command belongs: the URL is not echoed either, and no
	// fragment of "p@ss" ("p") is blanked out of other words.
	code, out := cli(t, "postgres://u:p@ss@db.example/x")
	if code != 2 || strings.Contains(out, "ss@db") || strings.Contains(out, "xxxxx") || !strings.Contains(out, "pass it with --database-url") {
		t.Errorf("URL as the command: exit %d\n%s", code, out)
	}
}

// Issue 12 item 6: the fallback parser finds the whole password, never its
// pieces, and the redactor blanks it whole.
func TestRedactionWholeSecretsOnly(t *testing.T) {
	t.Parallel()
	for arg, want := range map[string]string{
		"postgres://u:p@ss@db/x":                    "p@ss",
		"--database-url=postgres://u:p@ss@db:5432/": "p@ss",
		"postgresql://me:a@b@c@[::1]/x":             "a@b@c",
	} {
		got := secretsIn(arg)
		if len(got) == 0 {
			t.Errorf("secretsIn(%q) found nothing", arg)
		}
		for _, s := range got {
			if !strings.Contains(s, want) {
				t.Errorf("secretsIn(%q) = %q: %q is a fragment of %q", arg, got, s, want)
			}
		}
	}
	var buf strings.Builder
	r := newRedactor(&buf)
	for _, s := range secretsIn("postgres://u:p@ss@db/x") {
		r.Add(s)
	}
	_, _ = r.Write([]byte("lookup postgres p@ss: no such host"))
	if got := buf.String(); got != "lookup postgres xxxxx: no such host" {
		t.Errorf("redacted as %q", got)
	}
}

// Issue 12 item 6: the documented default password is no secret, and
// blanking it mangled every user= and database= of the default setup.
func TestDefaultPasswordNotBlanked(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	code, out := cli(t, "status", "--database-url", "postgres://multica:multica@127.0.0.1:"+strconv.Itoa(port)+"/multica?sslmode=disable")
	if code != 1 || !strings.Contains(out, "user=multica database=multica") || strings.Contains(out, "xxxxx") {
		t.Fatalf("exit %d, want 1 with user= and database= intact\n%s", code, out)
	}
}

// Issue 13 item 5: resuming warns about --months-back only when it was
// given; plan prints the watermark target, a new run's (the database's
// now() - 5 min) or the resumable run's.
func TestMonthsBackWarningAndPlanTarget(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	target := regexp.MustCompile(`(?m)^watermark target: (\S+)`)

	code, out := cli(t, "plan", "--database-url", url)
	m := target.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("plan: exit %d, no watermark target\n%s", code, out)
	}
	var dbTarget time.Time
	if err := pool.QueryRow(ctx, `SELECT now() - interval '5 minutes'`).Scan(&dbTarget); err != nil {
		t.Fatal(err)
	}
	if got, err := time.Parse(time.RFC3339, m[1]); err != nil || got.Sub(dbTarget).Abs() > time.Minute {
		t.Fatalf("plan's target %s, the database's now() - 5 min %s (%v)", m[1], dbTarget, err)
	}

	const warning = "resuming keeps the range"
	step := func(args ...string) string {
		t.Helper()
		code, out := cli(t, append(args, "--plan-only", "--no-progress", "--database-url", url)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	step("run", "--months-back", "2", "--force-partial")
	if out := step("run"); strings.Contains(out, warning) {
		t.Errorf("resume without --months-back warned:\n%s", out)
	}
	if out := step("run", "--months-back", "0"); !strings.Contains(out, warning) {
		t.Errorf("resume with another --months-back did not warn:\n%s", out)
	}

	var runID int64
	var runTarget time.Time
	if err := pool.QueryRow(ctx, `SELECT id, watermark_target FROM shardfill.run ORDER BY id DESC LIMIT 1`).Scan(&runID, &runTarget); err != nil {
		t.Fatal(err)
	}
	code, out = cli(t, "plan", "--database-url", url)
	want := "watermark target: " + runTarget.UTC().Format(time.RFC3339) + " (run " + strconv.FormatInt(runID, 10) + "'s"
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("plan with a resumable run: exit %d, want %q\n%s", code, want, out)
	}
}

// Issue 13 item 5: verify logs each month it checked (JSON lines with
// --log-format json) and keeps to --rate months per second.
func TestVerifyProgressAndRate(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	if code, out := cli(t, "run", "--no-progress", "--database-url", url); code != 0 {
		t.Fatalf("run: exit %d\n%s", code, out)
	}
	const rate = 4.0
	start := time.Now()
	code, out := cli(t, "--log-format", "json", "verify", "--json", "--rate", strconv.FormatFloat(rate, 'f', -1, 64), "--database-url", url)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res struct {
		Months int `json:"months_checked"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || res.Months < 2 {
		t.Fatalf("verify --json: %+v (%v)\n%s", res, err, out)
	}
	var months []map[string]any
	for _, l := range lines[:len(lines)-1] {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", l)
		}
		if rec["msg"] == "verified month" {
			months = append(months, rec)
		}
	}
	if len(months) != res.Months {
		t.Fatalf("%d progress records for %d months\n%s", len(months), res.Months, out)
	}
	last := months[len(months)-1]
	if last["done"] != float64(res.Months) || last["of"] != float64(res.Months) {
		t.Fatalf("last progress record %v, want done = of = %d", last, res.Months)
	}
	// The first month takes the bucket's one token; each other waits 1/rate.
	if least := time.Duration(float64(res.Months-1) / rate * 0.9 * float64(time.Second)); took < least {
		t.Fatalf("%d months in %s at --rate %g: faster than the rate allows (%s)", res.Months, took, rate, least)
	}
}
