package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"unicode"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/throttle"
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
	if err == nil {
		return 0
	}
	code := exitCode(err)
	if f := root.PersistentFlags().Lookup("log-format"); f != nil && f.Value.String() == "json" {
		// Every line on stderr is JSON in JSON mode, the last one too.
		slog.New(slog.NewJSONHandler(errOut, nil)).Error("shardfill: "+describe(err), "exit_code", code)
	} else {
		fmt.Fprintln(errOut, "shardfill:", describe(err))
	}
	return code
}

// describe phrases an error for the command line: the engine names its
// Config fields and leaves out what to run next; the CLI names its flags
// and commands.
func describe(err error) string {
	var cfgErr *engine.ConfigError
	var stale *engine.StaleRunError
	var failed *engine.FailedError
	switch {
	case errors.As(err, &cfgErr):
		return cfgErr.Render(flagOf)
	case errors.As(err, &stale):
		return err.Error() + "; start over with `shardfill run --new-run`"
	case errors.As(err, &failed):
		return err.Error() + " (see `shardfill status`)"
	case errors.Is(err, checkpoint.ErrSuperseded):
		return err.Error() + " (--new-run): this process stopped; run `shardfill run` again to join the new run"
	case errors.Is(err, engine.ErrInterrupted):
		return err.Error() + "; run `shardfill run` again to resume"
	}
	return err.Error()
}

// flagOf is the flag bound to an engine.Config field: the field's name in
// kebab case (MaxSliceRows is --max-slice-rows).
func flagOf(field string) string {
	var b strings.Builder
	b.WriteString("--")
	for i, r := range field {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('-')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// exitCode maps an error to the exit codes of the CLI contract.
func exitCode(err error) int {
	var cfgErr *engine.ConfigError
	var stale *engine.StaleRunError
	var usage usageError
	var unreadable *throttle.UnreadableError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, engine.ErrInterrupted), errors.Is(err, context.Canceled):
		return 130
	case errors.As(err, &cfgErr), errors.As(err, &stale), errors.As(err, &usage), errors.As(err, &unreadable), jobError(err):
		return 2
	default:
		return 1
	}
}

// usageError marks a command-line mistake (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }
