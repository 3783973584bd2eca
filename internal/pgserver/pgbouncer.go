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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PgBouncerOptions shape a PgBouncer. The zero value is a transaction
// pooler.
type PgBouncerOptions struct {
	// PoolMode is pgbouncer's pool_mode: "transaction" (a server connection
	// per transaction, what most production poolers run: session state such
	// as advisory locks, SET and named prepared statements does not carry
	// over), "session" or "statement". Default: "transaction".
	PoolMode string
	// DefaultPoolSize is the number of server connections per database and
	// user. Default: 10.
	DefaultPoolSize int
	// MaxClientConn is how many clients may connect at once. Default: 200
	// (within the 1024 file descriptors a test process usually gets).
	MaxClientConn int
}

func (o PgBouncerOptions) withDefaults() PgBouncerOptions {
	if o.PoolMode == "" {
		o.PoolMode = "transaction"
	}
	if o.DefaultPoolSize == 0 {
		o.DefaultPoolSize = 10
	}
	if o.MaxClientConn == 0 {
		o.MaxClientConn = 200
	}
	return o
}

// PgBouncer is a pgbouncer process in front of a Server, listening on a
// free port of 127.0.0.1, with its configuration and log in a temp dir.
type PgBouncer struct {
	mu sync.Mutex

	srv    *Server
	dir    string // temp dir: pgbouncer.ini, userlist.txt, pgbouncer.pid, pgbouncer.log
	port   int
	asUser string
	mode   string

	cmd      *exec.Cmd     // runuser or pgbouncer itself
	exited   chan struct{} // closed when cmd has exited
	watchdog *exec.Cmd
}

// FindPgBouncer returns the pgbouncer binary: on $PATH, else Debian's
// /usr/sbin/pgbouncer (not on a normal user's $PATH).
func FindPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if isExecutable("/usr/sbin/pgbouncer") {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", &MissingError{What: "pgbouncer", Package: "pgbouncer"}
}

// StartPgBouncer starts pgbouncer in front of srv: every database name is
// passed through to the server (databases "*"), and clients log in as the
// server's superuser with its password over scram-sha-256. pgbouncer reads
// the plain password from its userlist and does scram to the server too.
// Connect through it with URL. Not supported for an external server, whose
// password pgbouncer would have to be given in a file.
func StartPgBouncer(ctx context.Context, srv *Server, opts PgBouncerOptions) (*PgBouncer, error) {
	if srv.external != nil {
		return nil, errExternal
	}
	opts = opts.withDefaults()
	switch opts.PoolMode {
	case "session", "transaction", "statement":
	default:
		return nil, fmt.Errorf("pgserver: unknown pool mode %q", opts.PoolMode)
	}
	bin, err := FindPgBouncer()
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{srv: srv, asUser: serverUser(), mode: opts.PoolMode}
	if b.dir, err = tempDir(b.asUser, "pgserver-pgbouncer-"); err != nil {
		return nil, err
	}
	if b.asUser != "" {
		if err := chownTree(b.dir, b.asUser); err != nil {
			os.RemoveAll(b.dir)
			return nil, err
		}
	}
	// userlist.txt: "user" "password"; a plain password lets pgbouncer
	// answer the client's scram and do its own scram to the server.
	if err := writeFileFor(b.asUser, b.path("userlist.txt"),
		quoteUserlist(superuser)+" "+quoteUserlist(password)+"\n"); err != nil {
		os.RemoveAll(b.dir)
		return nil, err
	}
	if err := b.startOnFreePort(ctx, bin, opts); err != nil {
		os.RemoveAll(b.dir)
		return nil, err
	}
	b.startWatchdog()
	return b, nil
}

// quoteUserlist quotes a userlist.txt field: in double quotes, with a
// double quote doubled.
func quoteUserlist(v string) string {
	return `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
}

func (b *PgBouncer) path(name string) string { return filepath.Join(b.dir, name) }

// writeIni writes pgbouncer.ini for the current port.
func (b *PgBouncer) writeIni(opts PgBouncerOptions) error {
	ini := fmt.Sprintf(`; written by pgserver: a pooler in front of a disposable test cluster
[databases]
* = host=127.0.0.1 port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
; no unix socket: its default place, /tmp/.s.PGSQL.<port>, is shared
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
admin_users = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
; pgx and libpq may send this one; pgbouncer refuses unknown parameters
ignore_startup_parameters = extra_float_digits
pidfile = %s
; tests stop and start servers behind it: reconnect quickly
server_login_retry = 1
`, b.srv.port, b.port, b.path("userlist.txt"), superuser, opts.PoolMode,
		opts.DefaultPoolSize, opts.MaxClientConn, b.path("pgbouncer.pid"))
	return writeFileFor(b.asUser, b.path("pgbouncer.ini"), ini)
}

// startOnFreePort starts pgbouncer on a free port, retrying on a new one
// when another process took the port first.
func (b *PgBouncer) startOnFreePort(ctx context.Context, bin string, opts PgBouncerOptions) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if b.port, err = freePort(); err != nil {
			return err
		}
		if err = b.writeIni(opts); err != nil {
			return err
		}
		if err = b.start(ctx, bin); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return err
}

// start runs pgbouncer in the foreground, as our child (through runuser
// as root), and waits until it accepts TCP connections. Not daemonized
// (-d): a child can be waited for, so an early exit is seen at once.
func (b *PgBouncer) start(ctx context.Context, bin string) error {
	os.Remove(b.path("pgbouncer.pid"))
	// Its log goes to stderr, into pgbouncer.log.
	out, err := os.OpenFile(b.path("pgbouncer.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	defer out.Close()
	// Not CommandContext: ctx bounds the start, not pgbouncer's life.
	cmd := command(context.Background(), b.asUser, b.dir, bin, b.path("pgbouncer.ini"))
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: a Ctrl-C to the tests leaves it to Stop or
	// the watchdog, like the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgserver: starting pgbouncer: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.cmd, b.exited = cmd, exited

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port))
	for {
		// Ready once it has written its pid file (after setting up) and
		// accepts on the port.
		if _, err := os.Stat(b.path("pgbouncer.pid")); err == nil {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("pgserver: pgbouncer on port %d exited: %v\n--- tail of %s ---\n%s",
				b.port, cmd.ProcessState, b.path("pgbouncer.log"), tail(b.path("pgbouncer.log"), 20))
		case <-ctx.Done():
			b.kill()
			return fmt.Errorf("pgserver: pgbouncer on port %d not ready: %w\n--- tail of %s ---\n%s",
				b.port, ctx.Err(), b.path("pgbouncer.log"), tail(b.path("pgbouncer.log"), 20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startWatchdog stops pgbouncer and removes its directory when this
// process dies without calling Stop.
func (b *PgBouncer) startWatchdog() {
	const stop = `if [ -f "$dir/pgbouncer.pid" ]; then kill -TERM "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; sleep 1; fi`
	b.watchdog = startWatchdog(b.dir, stop)
}

// Port is pgbouncer's TCP port on 127.0.0.1.
func (b *PgBouncer) Port() int { return b.port }

// PoolMode is the pool_mode pgbouncer runs with.
func (b *PgBouncer) PoolMode() string { return b.mode }

// URL is the URL of database db through pgbouncer, as the server's
// superuser. It contains the password: never log it. In transaction mode
// pgbouncer 1.18 does not carry named prepared statements from one
// transaction to the next: pgx clients want
// default_query_exec_mode=exec (or simple_protocol) in the URL.
func (b *PgBouncer) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(superuser, password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// AdminURL is the URL of pgbouncer's admin console (database
// "pgbouncer": SHOW POOLS, SHOW CLIENTS, PAUSE, ...). It only speaks the
// simple query protocol. It contains the password: never log it.
func (b *PgBouncer) AdminURL() string {
	return b.URL("pgbouncer") + "&default_query_exec_mode=simple_protocol"
}

// String identifies the pooler without its password.
func (b *PgBouncer) String() string {
	return fmt.Sprintf("pgserver.PgBouncer{127.0.0.1:%d %s -> %d dir=%s}", b.port, b.mode, b.srv.port, b.dir)
}

// GoString makes %#v as safe as %v.
func (b *PgBouncer) GoString() string { return b.String() }

// Stop stops pgbouncer (SIGTERM, its immediate shutdown: client
// connections are closed) and removes its directory. A second Stop does
// nothing.
func (b *PgBouncer) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir == "" {
		return nil
	}
	var err error
	if b.cmd != nil {
		err = b.terminate()
	}
	if rmErr := os.RemoveAll(b.dir); err == nil && rmErr != nil {
		err = fmt.Errorf("pgserver: %w", rmErr)
	}
	stopWatchdog(b.watchdog)
	b.dir = ""
	return err
}

// terminate sends SIGTERM to pgbouncer itself, not to runuser: runuser
// passes a signal on only after a two-second grace period, while it
// returns at once when its child exits.
func (b *PgBouncer) terminate() error {
	select {
	case <-b.exited:
		return nil
	default:
	}
	pid := b.pid()
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	} else {
		b.kill()
	}
	select {
	case <-b.exited:
		return nil
	case <-time.After(10 * time.Second):
		b.kill()
		<-b.exited
		return errors.New("pgserver: pgbouncer ignored SIGTERM; killed")
	}
}

// pid reads pgbouncer's own pid from its pid file (0 if there is none).
func (b *PgBouncer) pid() int {
	raw, err := os.ReadFile(b.path("pgbouncer.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	return pid
}

// kill ends pgbouncer's whole process group at once.
func (b *PgBouncer) kill() {
	if b.cmd != nil && b.cmd.Process != nil {
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	}
}
