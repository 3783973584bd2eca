package engine

import (
	"context"
	"fmt"
)

// readOnlyReason says why the target cannot take writes: "" for a
// primary that does, else what the server reports. A hot standby is in
// recovery; a primary may also default its transactions to read-only
// (default_transaction_read_only, a read-only pooler pool), which fails
// the first write with 25006 just the same.
// standby reports whether the server is in recovery.
func (e *Engine) readOnlyReason(ctx context.Context) (why string, standby bool, err error) {
	var readOnly bool
	err = e.db.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('transaction_read_only')::bool`).Scan(&standby, &readOnly)
	switch {
	case err != nil:
		return "", false, fmt.Errorf("check that the server takes writes: %w", err)
	case standby:
		return "the server is a hot standby (in recovery: pg_is_in_recovery() is true)", true, nil
	case readOnly:
		return "the server runs this session's transactions read-only (transaction_read_only is on)", false, nil
	}
	return "", false, nil
}

// requireWritable refuses, before anything is read or written, a command
// that writes (run, its planning, repair) against a target that cannot
// take writes: rather than a raw 25006 part-way, or a run found done on a
// standby that reports success without having touched the primary.
func (e *Engine) requireWritable(ctx context.Context, what string) error {
	why, _, err := e.readOnlyReason(ctx)
	if err != nil || why == "" {
		return err
	}
	return &ConfigError{fmt.Sprintf("refusing %s on a server that takes no writes: %s; point the database URL at the primary "+
		"(read-only commands such as status, plan and verify without repair work on a standby)", what, why)}
}

// noteReadOnly tells the operator of a read-only command on a standby
// that what it shows may lag the primary (replication is asynchronous).
func (e *Engine) noteReadOnly(ctx context.Context) error {
	why, standby, err := e.readOnlyReason(ctx)
	if err != nil || !standby {
		return err
	}
	e.cfg.Logger.Warn("read-only target: " + why + "; what this command shows may lag the primary")
	return nil
}
