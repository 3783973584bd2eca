package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shardfill/shardfill/checkpoint"
)

// ErrInterrupted is returned when the context was cancelled (SIGINT or
// SIGTERM): in-flight slices rolled back and a re-run resumes.
var ErrInterrupted = errors.New("interrupted")

// ErrLockLost is returned when the connection holding the cron lock died:
// without it the cron job could run alongside, so the process stops.
var ErrLockLost = errors.New("lost the connection holding the cron lock")

// ConfigError is a refused configuration: a bad value, or a combination the
// operator must confirm. Nothing was written. Msg names the [Config] fields
// involved in braces, "{MonthsBack}", so that a caller can name them its
// own way ([ConfigError.Render]); Error names them as the fields.
type ConfigError struct{ Msg string }

var fieldRef = regexp.MustCompile(`\{(\w+)\}`)

func (e *ConfigError) Error() string { return e.Render(func(field string) string { return field }) }

// Render returns the message with each field named by name: a CLI passes
// the flag bound to the field.
func (e *ConfigError) Render(name func(field string) string) string {
	return fieldRef.ReplaceAllStringFunc(e.Msg, func(ref string) string { return name(ref[1 : len(ref)-1]) })
}

// FailedError reports a run that ended with failed slices; the slices keep
// their errors in the checkpoint tables.
type FailedError struct {
	RunID  int64
	Failed int64
}

func (e *FailedError) Error() string {
	return fmt.Sprintf("run %d: %d slices failed; fix the cause and run again to retry them", e.RunID, e.Failed)
}

// interrupted maps any error caused by the cancellation of ctx to
// ErrInterrupted, keeping the error it replaces in the chain, so the
// caller can tell a stop from a failure. What to run next is the
// caller's to say, once (the CLI names its command).
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("%w: in-flight slices rolled back (%w)", ErrInterrupted, err)
	}
	return err
}

// retryable reports whether err is transient: the same slice may well
// succeed if tried again. Anything else fails the slice at once.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, checkpoint.ErrLockContended) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505", // unique_violation: another transaction replaced the same buckets at once (a takeover, a superseded run's last batch); replaying the replace is safe
			"40001", // serialization_failure
			"40P01", // deadlock_detected
			"55P03", // lock_not_available (lock_timeout)
			"57014", // query_canceled (statement_timeout)
			"57P01", // admin_shutdown (also pg_terminate_backend)
			"57P02", // crash_shutdown
			"57P03", // cannot_connect_now
			"53300", // too_many_connections
			// foreign_key_violation: a rollup with a foreign key to a
			// workspace deleted while the slice ran (the application's
			// delete takes the cron lock only for its own transaction).
			// The next attempt reads the workspace's rows gone and
			// writes nothing; a violation that persists still fails the
			// slice once the attempts run out.
			"23503":
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08") // connection_exception
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	// A connection that broke mid-statement or mid-commit: the outcome is
	// unknown, but replaying the slice is safe (replace, and fenced).
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "unexpected EOF") || strings.Contains(msg, "broken pipe")
}
