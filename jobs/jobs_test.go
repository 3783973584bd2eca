package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/shardfill/shardfill/jobfile"
)

func TestEveryJobParses(t *testing.T) {
	names := Names()
	if len(names) < 2 {
		t.Fatalf("Names() = %v, want the shipped jobs", names)
	}
	for _, name := range names {
		p, src, ok := Source(name)
		if !ok {
			t.Fatalf("Source(%q): not found", name)
		}
		if p != "jobs/"+name+".sql" {
			t.Errorf("Source(%q) path = %q", name, p)
		}
		f, err := jobfile.Parse(p, src)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if f.Name != name {
			t.Errorf("%s: job name %q, want the file's name %q", p, f.Name, name)
		}
		if f.Description == "" || f.Verify == nil || f.Lock == nil {
			t.Errorf("%s: a shipped job has a description, a lock and verify", p)
		}
		if len(f.Batches) == 0 && (f.Remaining == nil || f.DryRun == nil) {
			t.Errorf("%s: a shipped job with a slice section has remaining and dry-run", p)
		}
		// Every statement compiles in every scope.
		facts := map[string]bool{}
		for _, fact := range f.Facts {
			facts[strings.TrimPrefix(fact.Name, "fact ")] = len(facts)%2 == 0
		}
		for _, l := range f.All() {
			for _, sc := range []jobfile.Scope{{}, {Whole: true}, {LoOpen: true}, {HiOpen: true}, {LoOpen: true, HiOpen: true}} {
				c, err := f.CompileFacts(l.Statement, "uuid", "uuid", sc, facts)
				if err != nil {
					t.Errorf("%s: section %s %+v: %v", p, l.Section, sc, err)
					continue
				}
				if strings.Count(c.SQL, "\n") != strings.Count(l.Statement.SQL, "\n") {
					t.Errorf("%s: section %s %+v: the compiled SQL lost or gained lines", p, l.Section, sc)
				}
				if strings.Contains(c.SQL, "@") || strings.Contains(strings.ToLower(c.SQL), "shardfill.") {
					t.Errorf("%s: section %s: placeholder left in %q", p, l.Section, c.SQL)
				}
			}
		}
	}
	if _, _, ok := Source("no-such-job"); ok {
		t.Error("Source(no-such-job) found something")
	}
	if _, _, ok := Source("../jobs/issue-last-activity"); ok {
		t.Error("Source accepts a path")
	}
}

func TestIssueLastActivity(t *testing.T) {
	p, src, _ := Source("issue-last-activity")
	f, err := jobfile.Parse(p, src)
	if err != nil {
		t.Fatal(err)
	}
	if f.Split == nil || f.Split.Table != "issue" || f.Split.Column != "id" || f.Split.Rows != 5000 ||
		f.Split.Where != "last_activity_at IS NULL AND updated_at IS NOT NULL" {
		t.Errorf("split = %+v", f.Split)
	}
	if !f.Repeat || f.MaxStalls != 5 {
		t.Errorf("repeat %v max-stalls %d", f.Repeat, f.MaxStalls)
	}
	if l := f.Lock; l.Key != "hashtextextended('issue_last_activity_backfill', 0)" || l.Exclusive || !l.Check || l.Yield {
		t.Errorf("lock = %+v", l)
	}
	if len(f.Tables) != 1 || f.Tables[0] != "issue" {
		t.Errorf("tables = %v", f.Tables)
	}
	// The slice only takes rows it can fill, so repeating it ends.
	if !strings.Contains(f.Slice.Statements[0].SQL, "updated_at IS NOT NULL") {
		t.Error("the slice must skip rows without updated_at")
	}
}

func TestCodexUsageCache(t *testing.T) {
	p, src, _ := Source("codex-usage-cache")
	f, err := jobfile.Parse(p, src)
	if err != nil {
		t.Fatal(err)
	}
	if f.Plan == nil || f.Split != nil || !f.Repeat || f.Then == nil || len(f.Then.Statements) != 2 {
		t.Fatalf("shape: plan %v split %v repeat %v then %+v", f.Plan, f.Split, f.Repeat, f.Then)
	}
	if l := f.Lock; l.Key != "4246" || l.Exclusive || !l.Check || !l.Yield {
		t.Errorf("lock = %+v", l)
	}
	if len(f.Params) != 2 || f.Params[0].Name != "cutoff" || !f.Params[0].Required || !f.Params[0].Past ||
		f.Params[1].Name != "workspace" || f.Params[1].Type != jobfile.UUID || f.Params[1].Required || f.Params[1].Default != nil {
		t.Errorf("params = %+v", f.Params)
	}
	// The slice binds cutoff, shard, lo, hi; the plan only the parameters.
	c, err := f.Compile(f.Slice.Statements[0], jobfile.Timestamptz, jobfile.UUID, jobfile.Scope{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Names, ","); got != "shard,lo,hi,cutoff" {
		t.Errorf("slice names = %s", got)
	}
	c, err = f.Compile(f.Plan.Statements[0], "", "", jobfile.Scope{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Names, ","); got != "cutoff,workspace" {
		t.Errorf("plan names = %s", got)
	}
	// Remaining over the whole job: no slice names left to bind.
	c, err = f.Compile(f.Remaining.Statements[0], jobfile.Timestamptz, jobfile.UUID, jobfile.Scope{Whole: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Names, ","); got != "workspace,cutoff" {
		t.Errorf("whole remaining names = %s in %s", got, c.SQL)
	}
	if !strings.Contains(c.SQL, "(NULL::uuid IS NULL OR") {
		t.Errorf("whole remaining: %s", c.SQL)
	}
	if _, err := f.Values(map[string]string{}, time.Now()); err == nil {
		t.Error("cutoff is required")
	}
}
