package faults_test

import (
	"net"
	neturl "net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// closedPort returns a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// 8. The password appears in no output of the binary: successful commands
// of every kind, wrong passwords, a server that is down, the PG*
// variables, malformed connection strings, and a URL given where a flag
// was meant. (Every other test also checks every output of its binaries.)
func TestPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	pw := pgtest.SharedServer(t).Password()
	if pw == "" {
		t.Skip("the server has no password")
	}
	url := testenv.DB(t, &tiny)
	pool := testenv.Pool(t, url)
	b := newBins(t, url)

	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	host, port := u.Hostname(), u.Port()
	db := strings.TrimPrefix(u.Path, "/")
	wrong := strings.Replace(url, pw, "Wr0ng-"+pw, 1)
	downHost := net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort(t)))
	down := strings.Replace(url, u.Host, downHost, 1)
	badPort := strings.Replace(url, u.Host, host+":99999999", 1)
	dsnBadPort := "host=" + host + " port=notaport user=" + u.User.Username() + " password=" + pw + " dbname=" + db
	pgEnv := func(pgPort, pgPassword string) []string {
		return []string{"DATABASE_URL=", "PGHOST=" + host, "PGPORT=" + pgPort, "PGUSER=" + u.User.Username(),
			"PGDATABASE=" + db, "PGPASSWORD=" + pgPassword, "PGSSLMODE=disable"}
	}
	_, downPort, _ := net.SplitHostPort(downHost)

	const anyFailure = -1
	cases := []struct {
		name string
		env  []string
		args []string
		want int
	}{
		{"run, wrong password", nil, []string{"run", "--no-progress", "--database-url", wrong}, 1},
		{"run, wrong password, json logs", nil, []string{"--log-format", "json", "run", "--no-progress", "--database-url", wrong}, 1},
		{"status, wrong password in DATABASE_URL", []string{"DATABASE_URL=" + wrong}, []string{"status", "--json"}, 1},
		{"verify, wrong password", nil, []string{"verify", "--database-url", wrong}, 1},
		{"plan, wrong password", nil, []string{"plan", "--database-url", wrong}, 1},
		{"run, server down", nil, []string{"run", "--no-progress", "--database-url", down}, 1},
		{"status, server down, json logs", nil, []string{"--log-format", "json", "status", "--database-url", down}, 1},
		{"verify, server down", []string{"DATABASE_URL=" + down}, []string{"verify", "--json"}, 1},
		{"status, PG* variables, server down", pgEnv(downPort, pw), []string{"status"}, 1},
		{"run, PG* variables, wrong password", pgEnv(port, "Wr0ng-"+pw), []string{"run", "--no-progress"}, 1},
		{"status, URL with an invalid port", nil, []string{"status", "--database-url", badPort}, anyFailure},
		{"status, key=value DSN with an invalid port", nil, []string{"status", "--database-url", dsnBadPort}, anyFailure},
		{"run, URL given as an argument instead of --database-url", nil, []string{"run", url}, 2},
		{"URL given as the command", nil, []string{url}, 2},
		{"run, bad flag next to the URL", nil, []string{"run", "--database-url", url, "--concurrency", "0"}, 2},
		// And everything that works, in both log formats.
		{"run, json logs", nil, []string{"--log-format", "json", "run", "--no-progress", "--concurrency", "2", "--database-url", url}, 0},
		{"run again (nothing to do)", nil, []string{"run", "--no-progress"}, 0},
		{"status", nil, []string{"status"}, 0},
		{"status --json", nil, []string{"status", "--json", "--database-url", url}, 0},
		{"verify --json, json logs", nil, []string{"--log-format", "json", "verify", "--json"}, 0},
		{"plan", nil, []string{"plan", "--database-url", url}, 0},
		{"run, PG* variables", pgEnv(port, pw), []string{"run", "--no-progress"}, 0},
	}
	for _, c := range cases {
		p := b.start(c.env, c.args...)
		code, ok := p.wait(time.Minute)
		p.checked = true
		out := p.out.String()
		if !ok {
			t.Errorf("%s: still running after a minute", c.name)
			continue
		}
		if strings.Contains(out, pw) {
			t.Errorf("%s: the password appears in the output (exit %d):\n%s", c.name, code, b.safe(out))
		}
		if (c.want == anyFailure && code == 0) || (c.want != anyFailure && code != c.want) {
			t.Errorf("%s: exit %d, want %d\n%s", c.name, code, c.want, b.safe(out))
		}
	}
	testenv.RequireOracle(t, pool)
	requireLockFree(t, url)
}
