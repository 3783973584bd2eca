package sqljob_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/jobfile"
	"github.com/shardfill/shardfill/jobs"
	"github.com/shardfill/shardfill/sqljob"
)

// The grant lists the README and the runbook give the run role hold every
// privilege the default job's (the rollup's) preflight demands: a role set up as either says
// passes it (and its slices find no missing grant part-way).
func TestDocumentedGrantsCoverPreflight(t *testing.T) {
	grantRe := regexp.MustCompile(`(?m)^GRANT ([A-Z, ]+) ON ([a-z_, ]+) TO (\w+);`)
	for doc, role := range map[string]string{"../README.md": "shardfill_run", "../docs/runbook.md": "backfill"} {
		src, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		granted := map[job.Need]bool{}
		for _, m := range grantRe.FindAllStringSubmatch(string(src), -1) {
			if m[3] != role || strings.Contains(m[2], "DATABASE") {
				continue
			}
			for _, p := range strings.Split(m[1], ",") {
				for _, tab := range strings.Split(m[2], ",") {
					granted[job.Need{Privilege: strings.TrimSpace(p), Table: strings.TrimSpace(tab)}] = true
				}
			}
		}
		path, src, ok := jobs.Source(checkpoint.DefaultJob)
		if !ok {
			t.Fatal("the default job is not shipped")
		}
		f, err := jobfile.Parse(path, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range sqljob.Needs(f) {
			if !granted[n] {
				t.Errorf("%s grants %s no %s ON %s, which preflight demands", doc, role, n.Privilege, n.Table)
			}
		}
	}
}

// The rollup's statements need exactly what it does: read the raw rows,
// replace rollup rows, stamp the watermark, and drain the dirty keys
// (locking them first, which takes UPDATE).
func TestRollupNeeds(t *testing.T) {
	path, src, _ := jobs.Source(checkpoint.DefaultJob)
	f, err := jobfile.Parse(path, src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range sqljob.Needs(f) {
		got = append(got, n.Privilege+" "+n.Table)
	}
	want := []string{"SELECT agent", "SELECT agent_task_queue", "SELECT issue", "SELECT task_usage",
		"DELETE task_usage_hourly", "INSERT task_usage_hourly", "SELECT task_usage_hourly",
		"DELETE task_usage_hourly_dirty", "SELECT task_usage_hourly_dirty", "UPDATE task_usage_hourly_dirty",
		"SELECT task_usage_hourly_rollup_state", "UPDATE task_usage_hourly_rollup_state"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("needs:\n got %v\nwant %v", got, want)
	}
}

// No Go package outside the tests, the fixture and the benchmarks names
// a table the shipped jobs touch: every statement on them lives in a job
// file. (Names without an underscore, such as issue, are ordinary words
// and are not looked for.)
func TestNoPackageNamesATargetTable(t *testing.T) {
	tables := map[string]bool{}
	for _, name := range jobs.Names() {
		path, src, _ := jobs.Source(name)
		f, err := jobfile.Parse(path, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range sqljob.Needs(f) {
			if strings.Contains(n.Table, "_") {
				tables[n.Table] = true
			}
		}
	}
	if !tables["task_usage_hourly"] || !tables["agent_task_queue"] {
		t.Fatalf("the shipped jobs' tables were not found: %v", tables)
	}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "internal" || d.Name() == "bench" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for table := range tables {
			if strings.Contains(string(src), table) {
				t.Errorf("%s names %s: a statement on it belongs in a job file", path, table)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
