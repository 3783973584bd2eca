package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
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
var errExternal = errors.New("pgserver: not supported with " + envExternal)

// Options shape the cluster StartWith creates. The zero value is Start's
// cluster.
type Options struct {
	// Settings are extra postgresql.conf parameters, name to value. Each
	// value is written quoted, which PostgreSQL accepts for every type
	// ("on", "16", "64MB"); they come after pgserver's own settings, so they
	// win. Default: none.
	Settings map[string]string

	// CronDatabase, when set, preloads pg_cron (shared_preload_libraries)
	// with cron.database_name set to it, and creates that database once the
	// server is up, so the scheduler finds it; the test still runs
	// CREATE EXTENSION pg_cron there. pg_cron can be created in that one
	// database only, which is why a cron test needs a cluster of its own.
	// Jobs connect through the cluster's unix socket (cron.host), where the
	// superuser is trusted, so they authenticate without a password.
	// Default: "" (no pg_cron).
	CronDatabase string
}

// settingName keeps names we write into postgresql.conf to what
// PostgreSQL's parameters look like (custom ones have a dot), so a setting
// cannot smuggle in another line.
var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

func (o Options) validate() error {
	for name, value := range o.Settings {
		if !settingName.MatchString(name) {
			return fmt.Errorf("pgserver: bad setting name %q", name)
		}
		if strings.ContainsAny(value, "\n\r") {
			return fmt.Errorf("pgserver: setting %s: value has a line break", name)
		}
	}
	return nil
}

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
	opts   Options

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
			return nil, fmt.Errorf("pgserver: %s is not a postgres:// URL", envExternal)
		}
		return &Server{external: u}, nil
	}
	return StartWith(ctx, Options{})
}

// StartWith is Start for a cluster shaped by opts. It always starts a
// cluster of its own, even with TEST_DATABASE_URL set: options are settings
// an external server would not have.
func StartWith(ctx context.Context, opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s, err := newServer(opts, "pgserver-")
	if err != nil {
		return nil, err
	}
	if opts.CronDatabase != "" {
		if err := s.requireLibrary(ctx, "pg_cron", "postgresql-%s-cron"); err != nil {
			os.RemoveAll(s.dir)
			return nil, err
		}
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
	if opts.CronDatabase != "" {
		if _, err := s.CreateDatabase(ctx, opts.CronDatabase); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// newServer prepares a Server in a fresh temp dir, not yet initialised.
func newServer(opts Options, pattern string) (*Server, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir, asUser: serverUser(), opts: opts}
	if s.dir, err = tempDir(s.asUser, pattern); err != nil {
		return nil, err
	}
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
	return "", errors.New("pgserver: initdb/pg_ctl not found (set " + envBinDir + " or install the PostgreSQL server, e.g. apt-get install postgresql)")
}

// majorVersion is the server's major version ("15"), from postgres
// --version, for naming the Debian packages built for it.
func (s *Server) majorVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(s.binDir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("pgserver: postgres --version: %w", err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	_, after, ok := strings.Cut(string(out), ") ")
	if !ok {
		return "", fmt.Errorf("pgserver: unexpected postgres --version %q", out)
	}
	major, _, _ := strings.Cut(strings.TrimSpace(after), ".")
	major, _, _ = strings.Cut(major, " ")
	return major, nil
}

// requireLibrary checks that the server can load the named shared library
// (an extension's .so) and otherwise names the Debian package to install;
// pkgPattern has a %s for the major version. Failing here beats a server
// that will not start with nothing but a log line to say why.
func (s *Server) requireLibrary(ctx context.Context, lib, pkgPattern string) error {
	libDir := filepath.Join(filepath.Dir(s.binDir), "lib")
	if out, err := exec.CommandContext(ctx, filepath.Join(s.binDir, "pg_config"), "--pkglibdir").Output(); err == nil {
		libDir = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(libDir, lib+".so")); err == nil {
		return nil
	}
	major, err := s.majorVersion(ctx)
	if err != nil {
		return err
	}
	return &MissingError{What: lib + ".so in " + libDir, Package: fmt.Sprintf(pkgPattern, major)}
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) sockDir() string { return filepath.Join(s.dir, "sock") }
func (s *Server) logFile() string { return filepath.Join(s.dir, "postgres.log") }

// command builds an exec.Cmd for one of the server's binaries, run as the
// server's user inside its directory.
func (s *Server) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	return command(ctx, s.asUser, s.dir, filepath.Join(s.binDir, bin), args...)
}

// initCluster runs initdb with a superuser "shardfill" whose password is
// read from a file (so it never appears on a command line), scram for TCP
// and trust for the private unix socket. initdb's pg_hba.conf already lets
// the superuser connect for replication the same two ways, which is all a
// standby needs.
func (s *Server) initCluster(ctx context.Context) error {
	pwFile := filepath.Join(s.dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if err := os.Mkdir(s.sockDir(), 0o700); err != nil {
		return fmt.Errorf("pgserver: %w", err)
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
		return fmt.Errorf("pgserver: %w", err)
	}
	// Our settings live in their own file, rewritten on every start attempt
	// (the port may change); postgresql.conf just includes it.
	f, err := os.OpenFile(filepath.Join(s.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	_, err = f.WriteString("\ninclude_if_exists = 'pgserver.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	return nil
}

// writeConf writes pgserver.conf: the disposable-cluster settings, what a
// primary needs to feed standbys, then the options' settings.
func (s *Server) writeConf() error {
	var b strings.Builder
	fmt.Fprintf(&b, `# written by pgserver: settings for a disposable test cluster
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = %s
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
# Any cluster can be a primary (these are PostgreSQL 15's defaults, spelled
# out because standby tests rely on them); on a standby, reads are allowed.
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
`, s.port, quoteSetting(s.sockDir()))
	settings := map[string]string{}
	if db := s.opts.CronDatabase; db != "" {
		settings["shared_preload_libraries"] = "pg_cron"
		settings["cron.database_name"] = db
		// pg_cron runs a job over a libpq connection to cron.host (default
		// localhost, where scram wants a password it does not have); the
		// unix socket trusts the superuser.
		settings["cron.host"] = s.sockDir()
	}
	for name, value := range s.opts.Settings {
		if name == "shared_preload_libraries" && settings[name] != "" {
			value = settings[name] + "," + value
		}
		settings[name] = value
	}
	names := make([]string, 0, len(settings))
	for name := range settings {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&b, "%s = %s\n", name, quoteSetting(settings[name]))
	}
	return writeFileFor(s.asUser, filepath.Join(s.dataDir(), "pgserver.conf"), b.String())
}

// quoteSetting quotes a postgresql.conf value.
func quoteSetting(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
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

// pgCtlStart starts the server and waits until it accepts connections.
// pg_ctl's log goes to postgres.log; its tail is part of the error.
func (s *Server) pgCtlStart(ctx context.Context) error {
	err := run(s.command(ctx, "pg_ctl",
		"-D", s.dataDir(),
		"-l", s.logFile(),
		"-w", "-t", strconv.Itoa(int(startTimeout/time.Second)),
		"start"))
	if err != nil {
		return fmt.Errorf("pgserver: starting postgres on port %d: %w\n--- tail of %s ---\n%s",
			s.port, err, s.logFile(), tail(s.logFile(), 20))
	}
	return nil
}

// startWatchdog makes sure the cluster is stopped and its directory removed
// even when this process dies without calling Stop.
func (s *Server) startWatchdog() {
	const stop = `if [ -d "$dir/data" ]; then
	"$@" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
fi`
	var args []string
	if s.asUser != "" {
		args = append(args, "runuser", "-u", s.asUser, "--")
	}
	args = append(args, filepath.Join(s.binDir, "pg_ctl"))
	s.watchdog = startWatchdog(s.dir, stop, args...)
}

// External reports whether the server comes from TEST_DATABASE_URL (and so
// cannot be stopped or restarted by us).
func (s *Server) External() bool { return s.external != nil }

// Port is the server's TCP port on 127.0.0.1 (that of the URL for an
// external server).
func (s *Server) Port() int {
	if s.external != nil {
		p, _ := strconv.Atoi(s.external.Port())
		if p == 0 {
			p = 5432
		}
		return p
	}
	return s.port
}

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
	return s.URL("postgres")
}

// URL is the URL of database db as the superuser, over TCP. It contains the
// password: never log it.
func (s *Server) URL(db string) string {
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
		return "pgserver.Server{external " + s.external.Redacted() + "}"
	}
	return fmt.Sprintf("pgserver.Server{127.0.0.1:%d dir=%s}", s.port, s.dir)
}

// GoString makes %#v as safe as %v.
func (s *Server) GoString() string { return s.String() }

// CreateDatabase creates an empty database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	// Identifiers cannot be bind parameters; Sanitize quotes the name.
	if err := s.adminExec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgserver: create database %q: %w", name, err)
	}
	return s.URL(name), nil
}

// DropDatabase drops a database, disconnecting its sessions (WITH (FORCE)).
// A database that does not exist is not an error.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := s.adminExec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgserver: drop database %q: %w", name, err)
	}
	return nil
}

func (s *Server) adminExec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
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
		err = fmt.Errorf("pgserver: %w", rmErr)
	}
	stopWatchdog(s.watchdog)
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
		return fmt.Errorf("pgserver: unknown stop mode %q", mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		return errors.New("pgserver: server already removed")
	}
	return s.stopLocked(mode)
}

func (s *Server) stopLocked(mode string) error {
	if err := run(s.command(context.Background(), "pg_ctl", "-D", s.dataDir(), "-m", mode, "-w", "stop")); err != nil {
		return fmt.Errorf("pgserver: %w", err)
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
		return errors.New("pgserver: server already removed")
	}
	return s.pgCtlStart(ctx)
}
