package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

const jobsWorkspace = "00000000-0000-0000-0000-00000000b001"

// jobFile writes a job file into a temporary directory.
func jobFile(t *testing.T, name, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// `shardfill jobs` lists the rollup and the shipped job files.
func TestJobsListed(t *testing.T) {
	t.Parallel()
	code, out := cli(t, "jobs")
	for _, want := range []string{"task-usage-hourly", "issue-last-activity", "codex-usage-cache"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("jobs: exit %d, want %s listed:\n%s", code, want, out)
		}
	}
}

// A job file with a mistake, or a parameter that is missing, of the wrong
// type or refused, exits 2 before anything is written, naming the file,
// the section and the line (a missing column is found by preparing the
// statement against the database).
func TestBadJobFilesExit2(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	good := `-- shardfill:job probe
-- shardfill:tables issue
-- shardfill:split issue.id rows 100
-- shardfill:slice
UPDATE issue SET last_activity_at = updated_at
 WHERE shardfill.in_range(id) AND last_activity_at IS NULL;
`
	missingColumn := strings.Replace(good, "SET last_activity_at = updated_at", "SET last_activity_at = no_such_column", 1)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown section", []string{"check", "--job", jobFile(t, "bad.sql", good+"-- shardfill:aftermath\nSELECT 1;\n")},
			[]string{"bad.sql:7", "aftermath"}},
		{"syntax", []string{"check", "--job", jobFile(t, "syntax.sql", strings.Replace(good, "rows 100", "rows many", 1))},
			[]string{"syntax.sql:3"}},
		{"missing column", []string{"check", "--job", jobFile(t, "column.sql", missingColumn)},
			[]string{"column.sql:5", "section slice", "no_such_column"}},
		{"missing parameter", []string{"run", "--job", "codex-usage-cache"}, []string{"--param cutoff"}},
		{"wrong type", []string{"run", "--job", "codex-usage-cache", "--param", "cutoff=yesterday"}, []string{"--param cutoff", "RFC 3339"}},
		{"future cutoff", []string{"run", "--job", "codex-usage-cache", "--param", "cutoff=2999-01-01T00:00:00Z"}, []string{"--param cutoff"}},
		{"unknown parameter", []string{"run", "--job", "issue-last-activity", "--param", "x=1"}, []string{"--param x"}},
		{"parameter of the rollup", []string{"run", "--param", "x=1"}, []string{"--param"}},
		{"no such job", []string{"run", "--job", "no-such-job"}, []string{"shardfill jobs"}},
	} {
		code, out := cli(t, append(c.args, "--database-url", url)...)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2:\n%s", c.name, code, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out)
			}
		}
	}
	var schema bool
	if err := testenv.Pool(t, url).QueryRow(context.Background(), `SELECT to_regnamespace('shardfill') IS NOT NULL`).Scan(&schema); err != nil || schema {
		t.Fatalf("a refused job wrote its checkpoint schema (%v)", err)
	}
}

// check prints the size of the run a job would plan; run does it, and
// status and progress name the job; the rollup's runs beside it are its
// own.
func TestIssueJobThroughCLI(t *testing.T) {
	t.Parallel()
	url := testenv.DB(t, &testenv.Small)
	pool := testenv.Pool(t, url)
	ctx := context.Background()
	if err := fixture.SeedIssues(ctx, pool, jobsWorkspace, 12_000); err != nil {
		t.Fatal(err)
	}
	kept, err := fixture.KeptActivity(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	code, out := cli(t, "check", "--job", "issue-last-activity", "--database-url", url)
	if code != 0 || !strings.Contains(out, "slices: 3") {
		t.Fatalf("check: exit %d, want 3 slices:\n%s", code, out)
	}
	code, out = cli(t, "plan", "--job", "issue-last-activity", "--database-url", url)
	if code != 0 || !strings.Contains(out, "rows_to_seed") || !strings.Contains(out, "slices: 3 (job issue-last-activity)") || strings.Contains(out, "watermark") {
		t.Fatalf("plan: exit %d, want the job's size and its dry run, no watermark:\n%s", code, out)
	}
	code, out = cli(t, "run", "--job", "issue-last-activity", "--no-progress", "--log-format", "json", "--progress-interval", "10ms", "--database-url", url)
	if code != 0 || !strings.Contains(out, `"job":"issue-last-activity"`) {
		t.Fatalf("run: exit %d, want progress records naming the job:\n%s", code, out)
	}
	bad, err := fixture.IssueDiff(ctx, pool, kept, 5)
	if err != nil || len(bad) > 0 {
		t.Fatalf("issues: %v %v", bad, err)
	}
	code, out = cli(t, "status", "--job", "issue-last-activity", "--json", "--database-url", url)
	var st struct {
		Job   string `json:"job"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Job != "issue-last-activity" || st.State != "done" {
		t.Fatalf("status --json: exit %d, %+v (%v)\n%s", code, st, err, out)
	}
	if code, out := cli(t, "status", "--database-url", url); code == 0 || !strings.Contains(out, "no run of job task-usage-hourly") {
		t.Fatalf("the rollup's status after another job's run: exit %d\n%s", code, out)
	}
	if code, out := cli(t, "verify", "--job", "issue-last-activity", "--database-url", url); code != 0 || !strings.Contains(out, "remaining: 0") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
}

// Preflight refuses a role that lacks a privilege the job's statements
// need, exit 2, with the GRANT that gives it, before any work.
func TestJobPrivilegesRefused(t *testing.T) {
	t.Parallel()
	srv := pgtest.SharedServer(t)
	if srv.External() {
		t.Skip("creates roles on the server (TEST_DATABASE_URL is set)")
	}
	roles, pw := newRoles(t, srv, "reader")
	dbURL := testenv.DB(t, nil)
	pool := testenv.Pool(t, dbURL)
	ctx := context.Background()
	if err := fixture.SeedIssues(ctx, pool, jobsWorkspace, 100); err != nil {
		t.Fatal(err)
	}
	role := pgx.Identifier{roles[0]}.Sanitize()
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{`GRANT SELECT ON issue TO ` + role, `GRANT CREATE ON DATABASE ` + pgx.Identifier{db}.Sanitize() + ` TO ` + role} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	code, out := cli(t, "run", "--job", "issue-last-activity", "--database-url", asRole(t, dbURL, roles[0], pw))
	if code != 2 || !strings.Contains(out, "GRANT UPDATE ON issue TO "+roles[0]) {
		t.Fatalf("run without UPDATE on issue: exit %d, want 2 and the GRANT:\n%s", code, out)
	}
	var n int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM issue WHERE last_activity_at IS NOT NULL AND last_activity_at = updated_at`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows written by a refused run (%v)", n, err)
	}
}
