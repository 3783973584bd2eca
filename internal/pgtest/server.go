package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// superuser is the role initdb creates; host connections authenticate
	// as it with scram-sha-256.
	superuser = "shardfill"
	// password is deliberately distinctive so tests can assert that it never
	// shows up in logs, errors or command output.
	password = "s3cret-pw-DO-NOT-LEAK"

	// envExternal names an existing server to use instead of starting one.
	envExternal = "TEST_DATABASE_URL"
	// envBinDir overrides where initdb/pg_ctl are looked up.
	envBinDir = "PGTEST_BINDIR"

	startTimeout = 60 * time.Second
)

// errExternal is returned by the lifecycle methods when the server was not
// started by us.
var errExternal = errors.New("pgtest: not supported with " + envExternal)

// Server is a running PostgreSQL cluster owned by this process, or an
// external server named by TEST_DATABASE_URL.
type Server struct {
	mu sync.Mutex

	// external is the parsed TEST_DATABASE_URL; nil for our own cluster.
	external *url.URL

	dir    string // temp dir: data/, sock/, postgres.log
	binDir string // where initdb and pg_ctl live
	port   int
	asUser string // "postgres" when we are root, "" otherwise

	watchdog *exec.Cmd
}

// Start initdb's a private cluster in a fresh temp dir and starts it on a
// free TCP port of 127.0.0.1. With TEST_DATABASE_URL set it starts nothing
// and uses that server instead.
func Start(ctx context.Context) (*Server, error) {
	if raw := os.Getenv(envExternal); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			// Do not echo the value: it holds a password.
			return nil, fmt.Errorf("pgtest: %s is not a postgres:// URL", envExternal)
		}
		return &Server{external: u}, nil
	}

	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		s.asUser = "postgres"
	}

	tmp := "" // $TMPDIR
	if s.asUser != "" {
		// root's $TMPDIR may be private (e.g. under /root) where the
		// postgres user cannot reach its data dir; /tmp always works.
		tmp = "/tmp"
	}
	s.dir, err = os.MkdirTemp(tmp, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := s.initCluster(ctx); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	if err := s.startOnFreePort(ctx); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	s.startWatchdog()
	return s, nil
}

// findBinDir locates the PostgreSQL server binaries: $PGTEST_BINDIR, then
// the directory of pg_ctl found on $PATH (symlinks resolved, since e.g.
// /usr/local/bin may hold links to a versioned directory), then the newest
// Debian-style /usr/lib/postgresql/N/bin. A directory counts only if it has
// both initdb and pg_ctl.
func findBinDir() (string, error) {
	if d := os.Getenv(envBinDir); d != "" {
		return d, nil
	}
	var candidates []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first.
	sort.Slice(debian, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(debian[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(debian[j])))
		return vi > vj
	})
	candidates = append(candidates, debian...)
	for _, d := range candidates {
		if isExecutable(filepath.Join(d, "pg_ctl")) && isExecutable(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	return "", errors.New("pgtest: initdb/pg_ctl not found (set " + envBinDir + " or install the PostgreSQL server, e.g. apt-get install postgresql)")
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) sockDir() string { return filepath.Join(s.dir, "sock") }
func (s *Server) logFile() string { return filepath.Join(s.dir, "postgres.log") }

// command builds an exec.Cmd for a PostgreSQL binary, wrapped in runuser
// when we are root. It runs inside the temp dir, because the postgres user
// usually cannot enter our working directory (e.g. /root), which makes
// initdb and pg_ctl complain.
func (s *Server) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	path := filepath.Join(s.binDir, bin)
	var cmd *exec.Cmd
	if s.asUser != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = s.dir
	cmd.Env = cleanEnv()
	return cmd
}

// cleanEnv drops libpq/PostgreSQL variables (PGDATA, PGPORT, ...) that
// would otherwise redirect pg_ctl or the server.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Args[indexOfBin(cmd.Args)]), err, bytes.TrimSpace(out))
	}
	return nil
}

// indexOfBin returns the index of the PostgreSQL binary in a command line
// that may be prefixed by "runuser -u postgres --".
func indexOfBin(args []string) int {
	for i, a := range args {
		if a == "--" {
			return i + 1
		}
	}
	return 0
}

// initCluster runs initdb with a superuser "shardfill" whose password is
// read from a file (so it never appears on a command line), scram for TCP
// and trust for the private unix socket.
func (s *Server) initCluster(ctx context.Context) error {
	pwFile := filepath.Join(s.dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Mkdir(s.sockDir(), 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.asUser != "" {
		if err := chownTree(s.dir, s.asUser); err != nil {
			return err
		}
	}
	err := run(s.command(ctx, "initdb",
		"-D", s.dataDir(),
		"-U", superuser,
		"--pwfile", pwFile,
		"--auth-local", "trust",
		"--auth-host", "scram-sha-256",
		"--encoding", "UTF8",
		"--locale", "C",
		"--no-sync", // throwaway data: skip the fsyncs, saves seconds
	))
	os.Remove(pwFile)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	// Our settings live in their own file, rewritten on every start attempt
	// (the port may change); postgresql.conf just includes it.
	f, err := os.OpenFile(filepath.Join(s.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.WriteString("\ninclude_if_exists = 'pgtest.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// chownTree hands dir and everything below it to the named user.
func chownTree(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("pgtest: running as root needs a %q user: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func (s *Server) writeConf() error {
	conf := fmt.Sprintf(`# written by pgtest: settings for a disposable test cluster
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
`, s.port, s.sockDir())
	p := filepath.Join(s.dataDir(), "pgtest.conf")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.asUser != "" {
		return chownTree(p, s.asUser)
	}
	return nil
}

// startOnFreePort picks a free port and starts the server; another process
// can grab the port between our probe and the server's bind, so a failed
// start is retried on a new port a few times.
func (s *Server) startOnFreePort(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if s.port, err = freePort(); err != nil {
			return err
		}
		if err = s.writeConf(); err != nil {
			return err
		}
		if err = s.pgCtlStart(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pgCtlStart starts the server and waits until it accepts connections.
// pg_ctl's log goes to postgres.log; its tail is part of the error.
func (s *Server) pgCtlStart(ctx context.Context) error {
	err := run(s.command(ctx, "pg_ctl",
		"-D", s.dataDir(),
		"-l", s.logFile(),
		"-w", "-t", strconv.Itoa(int(startTimeout/time.Second)),
		"start"))
	if err != nil {
		return fmt.Errorf("pgtest: starting postgres on port %d: %w\n--- tail of %s ---\n%s",
			s.port, err, s.logFile(), tail(s.logFile(), 20))
	}
	return nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startWatchdog launches a detached shell that waits for this process to
// exit and then stops the cluster and removes its directory. It covers the
// exits Main cannot see: a panic in a test goroutine, os.Exit from a test,
// a -timeout kill. After a normal Stop the directory is gone and the
// watchdog is killed. It gets its own session so a Ctrl-C to the test
// process group does not take it down before it has cleaned up.
func (s *Server) startWatchdog() {
	const script = `
parent=$1; dir=$2; shift 2
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ -d "$dir/data" ]; then
	"$@" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
fi
rm -rf "$dir"
`
	args := []string{"-c", script, "pgtest-watchdog", strconv.Itoa(os.Getpid()), s.dir}
	if s.asUser != "" {
		args = append(args, "runuser", "-u", s.asUser, "--")
	}
	args = append(args, filepath.Join(s.binDir, "pg_ctl"))
	cmd := exec.Command("/bin/sh", args...)
	cmd.Dir = "/"
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		// Not fatal: Main/Stop still clean up on the normal path.
		fmt.Fprintf(os.Stderr, "pgtest: warning: no watchdog: %v\n", err)
		return
	}
	s.watchdog = cmd
	go cmd.Wait() // reap it whenever it exits
}

// External reports whether the server comes from TEST_DATABASE_URL (and so
// cannot be stopped or restarted by us).
func (s *Server) External() bool { return s.external != nil }

// Password returns the superuser's password (for tests that check it never
// leaks).
func (s *Server) Password() string {
	if s.external != nil {
		pw, _ := s.external.User.Password()
		return pw
	}
	return password
}

// AdminURL is the URL of the "postgres" maintenance database as the
// superuser, over TCP. It contains the password: never log it.
func (s *Server) AdminURL() string {
	if s.external != nil {
		return s.external.String()
	}
	return s.urlFor("postgres")
}

func (s *Server) urlFor(db string) string {
	var u url.URL
	if s.external != nil {
		u = *s.external
	} else {
		u = url.URL{
			Scheme:   "postgres",
			User:     url.UserPassword(superuser, password),
			Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
			RawQuery: "sslmode=disable",
		}
	}
	u.Path = "/" + db
	u.RawPath = ""
	return u.String()
}

// String identifies the server without its password, so that printing a
// *Server (%v, %+v) is safe.
func (s *Server) String() string {
	if s.external != nil {
		return "pgtest.Server{external " + s.external.Redacted() + "}"
	}
	return fmt.Sprintf("pgtest.Server{127.0.0.1:%d dir=%s}", s.port, s.dir)
}

// GoString makes %#v as safe as %v.
func (s *Server) GoString() string { return s.String() }

// CreateDatabase creates an empty database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	// Identifiers cannot be bind parameters; Sanitize quotes the name.
	if err := s.adminExec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %q: %w", name, err)
	}
	return s.urlFor(name), nil
}

// DropDatabase drops a database, disconnecting its sessions (WITH (FORCE)).
// A database that does not exist is not an error.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := s.adminExec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: drop database %q: %w", name, err)
	}
	return nil
}

func (s *Server) adminExec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// Stop stops the cluster (pg_ctl stop -m fast) and removes its directory.
// Stopping an already stopped cluster only removes the directory.
func (s *Server) Stop() error {
	if s.external != nil {
		return errExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		return nil // already stopped and removed
	}
	err := s.stopLocked("fast")
	if err != nil && !s.runningLocked() {
		err = nil // it was already down (e.g. after StopMode)
	}
	if rmErr := os.RemoveAll(s.dir); err == nil && rmErr != nil {
		err = fmt.Errorf("pgtest: %w", rmErr)
	}
	if s.watchdog != nil && s.watchdog.Process != nil {
		s.watchdog.Process.Kill()
	}
	s.dir = ""
	return err
}

// StopMode stops the cluster with pg_ctl stop -m mode ("smart", "fast" or
// "immediate") and keeps the data directory so Restart can bring it back.
func (s *Server) StopMode(mode string) error {
	if s.external != nil {
		return errExternal
	}
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("pgtest: unknown stop mode %q", mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		return errors.New("pgtest: server already removed")
	}
	return s.stopLocked(mode)
}

func (s *Server) stopLocked(mode string) error {
	if err := run(s.command(context.Background(), "pg_ctl", "-D", s.dataDir(), "-m", mode, "-w", "stop")); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// runningLocked asks pg_ctl status (exit code 0 = running).
func (s *Server) runningLocked() bool {
	return s.command(context.Background(), "pg_ctl", "-D", s.dataDir(), "status").Run() == nil
}

// Restart starts the cluster again on the same port and data directory
// (after StopMode) and waits until it accepts connections. After an
// immediate stop this includes crash recovery.
func (s *Server) Restart(ctx context.Context) error {
	if s.external != nil {
		return errExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		return errors.New("pgtest: server already removed")
	}
	return s.pgCtlStart(ctx)
}
