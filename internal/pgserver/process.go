package pgserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// MissingError says that a component needs a program or library that is
// not installed, and which Debian package provides it, so that a failing
// test tells the reader what to install (CI installs the same packages).
type MissingError struct {
	What    string // the program or library looked for
	Package string // the Debian package that ships it
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("pgserver: %s not found: install the Debian package %s (apt-get install %s)", e.What, e.Package, e.Package)
}

// serverUser is who runs the server, pgbouncer and their tools: PostgreSQL
// and pgbouncer both refuse to run as root, so as root it is "postgres";
// otherwise "" (run as ourselves).
func serverUser() string {
	if os.Geteuid() == 0 {
		return "postgres"
	}
	return ""
}

// tempDir makes a fresh directory for one component. As root it lives in
// /tmp, because root's $TMPDIR may be private (e.g. under /root) where the
// postgres user cannot reach it.
func tempDir(asUser, pattern string) (string, error) {
	tmp := "" // $TMPDIR
	if asUser != "" {
		tmp = "/tmp"
	}
	dir, err := os.MkdirTemp(tmp, pattern)
	if err != nil {
		return "", fmt.Errorf("pgserver: %w", err)
	}
	return dir, nil
}

// command builds an exec.Cmd for path, wrapped in `runuser -u asUser --`
// when asUser is set. It runs inside dir, because the postgres user usually
// cannot enter our working directory (e.g. /root), which makes initdb and
// pg_ctl complain.
func command(ctx context.Context, asUser, dir, path string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if asUser != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", asUser, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = dir
	cmd.Env = CleanEnv()
	return cmd
}

// CleanEnv returns this process's environment without the libpq variables
// (PGDATA, PGPORT, PGHOST, ...), which would otherwise redirect pg_ctl, the
// server or a client away from the server meant, and without the variables
// named in drop (e.g. "DATABASE_URL").
func CleanEnv(drop ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") || containsString(drop, name) {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// run runs cmd and, when it fails, returns its output with the error.
func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Args[indexOfBin(cmd.Args)]), err, bytes.TrimSpace(out))
	}
	return nil
}

// indexOfBin returns the index of the binary in a command line that may be
// prefixed by "runuser -u postgres --".
func indexOfBin(args []string) int {
	for i, a := range args {
		if a == "--" {
			return i + 1
		}
	}
	return 0
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// chownTree hands dir and everything below it to the named user.
func chownTree(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("pgserver: running as root needs a %q user: %w", name, err)
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

// writeFileFor writes a file that the component's user must read: as root
// it is handed to that user, since the file is private (0600).
func writeFileFor(asUser, path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if asUser != "" {
		return chownTree(path, asUser)
	}
	return nil
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process
// can take it before our server binds it, so callers retry a failed start
// on a new port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgserver: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
// exit, then runs stop (a shell snippet that sees the directory as $dir and
// args as "$@") and removes dir. It covers the exits a test's cleanup
// cannot see: a panic in a test goroutine, os.Exit from a test, a -timeout
// kill. A normal Stop kills the watchdog after cleaning up itself. The
// watchdog gets its own session so a Ctrl-C to the test process group does
// not take it down before it has cleaned up.
func startWatchdog(dir, stop string, args ...string) *exec.Cmd {
	script := `
parent=$1; dir=$2; shift 2
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
` + stop + `
rm -rf "$dir"
`
	all := append([]string{"-c", script, "pgserver-watchdog", strconv.Itoa(os.Getpid()), dir}, args...)
	cmd := exec.Command("/bin/sh", all...)
	cmd.Dir = "/"
	cmd.Env = CleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		// Not fatal: Stop still cleans up on the normal path.
		fmt.Fprintf(os.Stderr, "pgserver: warning: no watchdog: %v\n", err)
		return nil
	}
	go cmd.Wait() // reap it whenever it exits
	return cmd
}

// stopWatchdog ends a watchdog whose work Stop has done itself.
func stopWatchdog(cmd *exec.Cmd) {
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Kill()
	}
}
