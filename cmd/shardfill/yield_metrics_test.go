package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/testenv"
)

// While the run yields lock 4246 to an application transaction, the
// operator's view stays true from other connections: /metrics counts the
// process live, status lists it, and a `set --rate` given during the
// yield is applied by the process at once (its metrics and registry say
// so before the application lets go). Released, the run ends exact.
func TestMetricsAndSetDuringYield(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	url := testenv.DB(t, &testenv.Small)
	p := startBinary(t, bin, url, "run", "--concurrency", "2", "--rate", "10", "--burst", "1",
		"--log-format", "json", "--metrics-addr", "127.0.0.1:0")
	var addr string
	eventually(t, 30*time.Second, "the metrics address is logged", func() bool {
		m := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(p.stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	metric := func(name string) float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(string(b))
		if m == nil {
			return -1
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	eventually(t, 30*time.Second, "a slice done", func() bool { return metric("shardfill_slices_done_total") > 0 })

	// The application's transaction: it queues for 4246 exclusively, the
	// run yields, and it holds the lock until told to end.
	ctx := context.Background()
	app := testenv.Conn(t, url)
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(fixture.AppLockKey)); err != nil {
		t.Fatal(err)
	}
	held := time.Now()

	if v := metric("shardfill_run_live_processes"); v != 1 {
		eventually(t, 10*time.Second, "the yielding process counted live in /metrics", func() bool { return metric("shardfill_run_live_processes") == 1 })
	}
	code, out := cli(t, "status", "--json", "--database-url", url)
	var st struct {
		Processes []struct {
			Rate float64 `json:"rate"`
		} `json:"processes"`
		YieldingTo *struct{ PID int } `json:"yielding_to"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Processes) != 1 || st.YieldingTo == nil {
		t.Fatalf("status --json during the yield: exit %d, %+v (%v)\n%s", code, st, err, out)
	}
	if code, out := cli(t, "set", "--rate", "30", "--database-url", url); code != 0 {
		t.Fatalf("set during the yield: exit %d\n%s", code, out)
	}
	eventually(t, 10*time.Second, "the raised rate applied during the yield", func() bool { return metric("shardfill_limit_rate") == 30 })
	code, out = cli(t, "status", "--json", "--database-url", url)
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Processes) != 1 || st.Processes[0].Rate != 30 {
		t.Fatalf("status --json after the set: exit %d, %+v (%v)\n%s", code, st, err, out)
	}
	if time.Since(held) > 20*time.Second {
		t.Fatalf("the checks took %s: they must all fall inside the yield", time.Since(held))
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("run after the yield: exit %d\n%s", code, p.stderr.String())
	}
	if strings.Contains(p.stderr.String(), "<nil>") {
		t.Fatal("a log record prints <nil>")
	}
	testenv.RequireOracle(t, testenv.Pool(t, url))
}
