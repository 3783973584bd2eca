package job

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Need is one table privilege a job's statements need.
type Need struct{ Privilege, Table string }

// MissingPrivilegeError lists the privileges the role lacks for a job's
// statements, with the GRANT statements that would give them.
type MissingPrivilegeError struct {
	Job    string
	Role   string
	Grants []string
}

func (e *MissingPrivilegeError) Error() string {
	return fmt.Sprintf("role %s lacks privileges job %s needs; have an owner of the tables run:\n  %s",
		e.Role, e.Job, strings.Join(e.Grants, "\n  "))
}

// CheckPrivileges refuses, with the GRANT statements that fix it, a role
// that lacks one of needs. PREPARE checks no privilege, and a slice that
// meets a missing one fails only once it runs. A table that does not
// exist is not this check's business (preflight reports it).
func CheckPrivileges(ctx context.Context, q Querier, job string, needs []Need) error {
	privs, tables := make([]string, len(needs)), make([]string, len(needs))
	for i, n := range needs {
		privs[i], tables[i] = n.Privilege, n.Table
	}
	rows, err := q.Query(ctx, `
		SELECT format('GRANT %s ON %s TO %I;', n.priv, n.rel::regclass, current_user)
		FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(priv, tab, i)
		CROSS JOIN LATERAL (SELECT u.priv, to_regclass(u.tab) AS rel) n
		JOIN pg_class c ON c.oid = n.rel AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		WHERE NOT has_table_privilege(n.rel, n.priv)
		ORDER BY u.i`, privs, tables)
	if err != nil {
		return fmt.Errorf("job %s: check privileges: %w", job, err)
	}
	grants, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("job %s: check privileges: %w", job, err)
	}
	if len(grants) == 0 {
		return nil
	}
	var role string
	if err := q.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return err
	}
	return &MissingPrivilegeError{Job: job, Role: role, Grants: grants}
}
