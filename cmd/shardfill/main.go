// Command shardfill backfills the task_usage_hourly rollup in parallel,
// resumably, and hands over to the cron job. See `shardfill --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/shardfill/shardfill/engine"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills at once.
		<-ctx.Done()
		stop()
	}()
	os.Exit(execute(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs one command line and returns its exit code; main and the
// in-process tests share it.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	out, errOut := newRedactor(stdout), newRedactor(stderr)
	// Passwords may be echoed by a usage error before any connection is
	// attempted (a URL given as a stray argument): blank them from the start.
	for _, arg := range append(args, os.Getenv("DATABASE_URL"), os.Getenv("PGPASSWORD")) {
		for _, secret := range secretsIn(arg) {
			out.Add(secret)
			errOut.Add(secret)
		}
	}
	root := newRootCmd(out, errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(errOut, "shardfill:", err)
	}
	return exitCode(err)
}

// exitCode maps an error to the exit codes of the CLI contract.
func exitCode(err error) int {
	var cfgErr *engine.ConfigError
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, engine.ErrInterrupted), errors.Is(err, context.Canceled):
		return 130
	case errors.As(err, &cfgErr), errors.As(err, &usage):
		return 2
	default:
		return 1
	}
}

// usageError marks a command-line mistake (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }
