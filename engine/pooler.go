package engine

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// TransactionPooled reports whether connections made with cfg may change
// server backends between transactions, as through PgBouncer (and other
// poolers) in transaction pooling mode. There, pgx's default cache of
// named prepared statements breaks: a statement prepared on one backend is
// missing on the next, or already exists on a backend another client
// prepared it on. A caller that learns so turns prepared statements off
// (pgx.QueryExecModeExec). The cron lock needs nothing of the kind: it is
// held by a transaction of its own (see cronLock), which pins its backend
// under any pooling.
//
// Two probe connections tell: a sets a session setting; b, opened then,
// begins a transaction (which pins whatever backend it got); a looks again.
// Directly or through a session pooler a keeps its backend and its setting,
// and b has another one. Through a transaction pooler a's backend went back
// to the pool after its transaction: b is usually handed that very backend
// (PgBouncer reuses the backend released last), and a's next transaction
// then lands elsewhere, without the setting. A direct connection can never
// be taken for a pooled one.
func TransactionPooled(ctx context.Context, cfg *pgx.ConnConfig) (bool, error) {
	probe := cfg.Copy()
	probe.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	a, err := pgx.ConnectConfig(ctx, probe)
	if err != nil {
		return false, err
	}
	defer a.Close(context.Background())
	b, err := pgx.ConnectConfig(ctx, probe)
	if err != nil {
		return false, err
	}
	defer b.Close(context.Background())

	var pidA, pidB, pidA2 int
	var setting string
	if err := a.QueryRow(ctx, `SELECT pg_backend_pid(), set_config('shardfill.session_probe', 'set', false)`).Scan(&pidA, nil); err != nil {
		return false, fmt.Errorf("probe the connection: %w", err)
	}
	tx, err := b.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("probe the connection: %w", err)
	}
	defer tx.Rollback(context.Background())
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pidB); err != nil {
		return false, fmt.Errorf("probe the connection: %w", err)
	}
	err = a.QueryRow(ctx, `SELECT pg_backend_pid(), coalesce(current_setting('shardfill.session_probe', true), '')`).Scan(&pidA2, &setting)
	if err != nil {
		return false, fmt.Errorf("probe the connection: %w", err)
	}
	return pidB == pidA || pidA2 != pidA || setting != "set", nil
}
