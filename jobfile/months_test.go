package jobfile

import (
	"errors"
	"strings"
	"testing"
)

// A complete job planned by months with batch forms: each case below
// edits it in one place.
const monthsJob = `-- shardfill:job rollup
-- shardfill:tables r
-- shardfill:fact keyed
SELECT true;
-- shardfill:bounds
SELECT min(t), max(t), count(*), 0 FROM (SELECT t FROM raw WHERE t >= @from LIMIT @piece_rows + 1) s;
-- shardfill:plan months
SELECT w AS shard, t AS lo, t AS hi, 1 AS est_rows, t AS read_from FROM raw WHERE t >= @from AND t < @to LIMIT @slice_rows;
-- shardfill:batch by-shard
SET LOCAL join_collapse_limit = 1;
DELETE FROM r WHERE w = ANY (@shards);
INSERT INTO r SELECT w, shardfill.if(keyed, count(*), count(DISTINCT x)) FROM raw WHERE t >= @read_from GROUP BY 1;
-- shardfill:batch by-range
INSERT INTO r SELECT w, count(*) FROM raw JOIN unnest(@shards, @los, @his) AS s(w, lo, hi) USING (w) WHERE t >= @lo AND t < @hi GROUP BY 1;
-- shardfill:finish
UPDATE state SET at = @watermark WHERE id = 1;
DELETE FROM q WHERE t >= @from;
-- shardfill:verify
SELECT w::text AS shard, @from AS month, count(*) AS rows FROM r WHERE t >= @from AND t < @to GROUP BY 1;
-- shardfill:extent
SELECT min(t), max(t) FROM raw;
-- shardfill:check
SELECT 'table raw' WHERE to_regclass('raw') IS NULL;
`

func TestParseMonthsJob(t *testing.T) {
	f := mustParse(t, monthsJob)
	if !f.PlanMonths || f.Bounds == nil || f.Extent == nil || f.Check == nil || len(f.Facts) != 1 {
		t.Fatalf("months job parsed as %+v", f)
	}
	if len(f.Batches) != 2 || len(f.Batches["by-shard"].Statements) != 3 {
		t.Fatalf("batches: %+v", f.Batches)
	}
	// by-window falls back to by-range, and by-range and by-shard to each
	// other; a plain batch section runs first for every path.
	if got := f.Batch("by-window"); len(got) != 1 || got[0] != f.Batches["by-range"].Statements[0] {
		t.Fatalf("by-window batch: %v", got)
	}
	if got := f.Batch("by-shard"); len(got) != 3 {
		t.Fatalf("by-shard batch: %v", got)
	}
	common := mustParse(t, strings.Replace(monthsJob, "-- shardfill:batch by-range", "-- shardfill:batch\nDELETE FROM q WHERE w = ANY (@shards);\n-- shardfill:batch by-range", 1))
	for _, path := range BatchPaths {
		got := common.Batch(path)
		if len(got) < 2 || !strings.HasPrefix(got[0].SQL, "DELETE FROM q") {
			t.Fatalf("%s: the plain batch's statement does not come first: %v", path, got)
		}
	}
	var names []string
	for _, l := range f.All() {
		if len(names) == 0 || names[len(names)-1] != l.Section {
			names = append(names, l.Section)
		}
	}
	want := "plan bounds batch by-shard batch by-range finish verify extent check fact keyed"
	if strings.Join(names, " ") != want {
		t.Fatalf("All lists sections %q, want %q", strings.Join(names, " "), want)
	}
}

func TestParseMonthsJobErrors(t *testing.T) {
	rep := func(old, new string) string {
		if !strings.Contains(monthsJob, old) {
			panic("test case: " + old + " not in the base job")
		}
		return strings.Replace(monthsJob, old, new, 1)
	}
	cases := []struct {
		name, src, section, msg string
	}{
		{"batch without plan months", rep("-- shardfill:plan months", "-- shardfill:plan"), "batch by-shard", "batch forms need -- shardfill:plan months"},
		{"plan months without bounds", rep("-- shardfill:bounds\n", "-- shardfill:dry-run\n"), "plan", "plan months needs a -- shardfill:bounds section"},
		{"unknown plan option", rep("-- shardfill:plan months", "-- shardfill:plan weeks"), "plan", "unknown plan option"},
		{"unknown batch path", rep("-- shardfill:batch by-range", "-- shardfill:batch by-time"), "batch", "unknown batch path \"by-time\""},
		{"duplicate batch path", rep("-- shardfill:batch by-range", "-- shardfill:batch by-shard"), "batch by-shard", "duplicate section batch by-shard"},
		{"by-window alone", rep("-- shardfill:batch by-shard\nSET LOCAL join_collapse_limit = 1;\nDELETE FROM r WHERE w = ANY (@shards);\nINSERT INTO r SELECT w, shardfill.if(keyed, count(*), count(DISTINCT x)) FROM raw WHERE t >= @read_from GROUP BY 1;\n-- shardfill:batch by-range", "-- shardfill:batch by-window"), "batch by-window", "serves only batches of one window"},
		{"by-window beside a plain batch only", rep("-- shardfill:batch by-shard\nSET LOCAL join_collapse_limit = 1;\nDELETE FROM r WHERE w = ANY (@shards);\nINSERT INTO r SELECT w, shardfill.if(keyed, count(*), count(DISTINCT x)) FROM raw WHERE t >= @read_from GROUP BY 1;\n-- shardfill:batch by-range", "-- shardfill:batch\nDELETE FROM r WHERE w = ANY (@shards);\n-- shardfill:batch by-window"), "batch by-window", "serves only batches of one window"},
		{"slice beside batch", monthsJob + "-- shardfill:slice\nSELECT 1;\n", "slice", "a slice section or batch forms"},
		{"remaining with batch", monthsJob + "-- shardfill:remaining\nSELECT 0;\n", "remaining", "a batch job has none"},
		{"verify without extent", rep("-- shardfill:extent\nSELECT min(t), max(t) FROM raw;\n", ""), "verify", "add a -- shardfill:extent section"},
		{"unknown fact", rep("shardfill.if(keyed,", "shardfill.if(unique,"), "batch by-shard", "the job has no -- shardfill:fact unique"},
		{"if with two arguments", rep("shardfill.if(keyed, count(*), count(DISTINCT x))", "shardfill.if(keyed, count(*))"), "batch by-shard", "shardfill.if must be written"},
		{"fact without a name", rep("-- shardfill:fact keyed", "-- shardfill:fact"), "fact", "fact needs a name"},
		{"batch name in plan", rep("LIMIT @slice_rows", "LIMIT @slice_rows + cardinality(@shards)"), "plan", "@shards is not bound in the section plan (its engine names are @from, @to, @slice_rows)"},
		{"slice name in batch", rep("WHERE t >= @read_from", "WHERE w = @shard"), "batch by-shard", "@shard is not bound in the section batch by-shard"},
		{"month name in a plain plan job's finish", strings.Replace(planJob, "-- shardfill:slice", "-- shardfill:finish\nSELECT @watermark;\n-- shardfill:slice", 1), "finish", "@watermark is not bound in the section finish (it binds none of the engine's names"},
		{"bounds in a plain plan job", strings.Replace(planJob, "-- shardfill:slice", "-- shardfill:bounds\nSELECT 1;\n-- shardfill:slice", 1), "bounds", "bounds is for a plan by months"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("jobs/demo.sql", []byte(c.src))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want an *Error containing %q", err, c.msg)
			}
			if e.Section != c.section || !strings.Contains(e.Msg, c.msg) {
				t.Fatalf("got section %q msg %q\nwant section %q msg containing %q", e.Section, e.Msg, c.section, c.msg)
			}
		})
	}
}

// shardfill.if compiles to one of its arguments by the fact's answer,
// keeps the statement's lines, binds the names inside the chosen
// argument, and refuses a fact that was not asked.
func TestCompileFacts(t *testing.T) {
	f := mustParse(t, monthsJob)
	st := f.Batches["by-shard"].Statements[2]
	for _, keyed := range []bool{true, false} {
		c, err := f.CompileFacts(st, Timestamptz, UUID, Scope{}, map[string]bool{"keyed": keyed})
		if err != nil {
			t.Fatal(err)
		}
		want, not := "count(*)", "count(DISTINCT x)"
		if !keyed {
			want, not = not, want
		}
		if !strings.Contains(c.SQL, want) || strings.Contains(c.SQL, not) || strings.Contains(c.SQL, "shardfill.") {
			t.Fatalf("keyed=%v compiled to %q", keyed, c.SQL)
		}
		if len(c.Names) != 1 || c.Names[0] != "read_from" || !strings.Contains(c.SQL, "$1::timestamptz") {
			t.Fatalf("keyed=%v: names %v in %q", keyed, c.Names, c.SQL)
		}
	}
	multi := Statement{SQL: "SELECT shardfill.if(keyed,\n  @shards,\n  NULL)", Line: 3}
	c, err := f.CompileFacts(multi, Timestamptz, UUID, Scope{}, map[string]bool{"keyed": false})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(c.SQL, "\n") != 2 || len(c.Names) != 0 {
		t.Fatalf("the false choice lost lines or kept the other's names: %q %v", c.SQL, c.Names)
	}
	if _, err := f.Compile(st, Timestamptz, UUID, Scope{}); err == nil || !strings.Contains(err.Error(), "has not been asked") {
		t.Fatalf("a fact not asked compiled: %v", err)
	}
	// The batch's arrays are typed by the key and shard.
	st = f.Batches["by-range"].Statements[0]
	c, err = f.CompileFacts(st, Timestamptz, UUID, Scope{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cast := range []string{"::uuid[]", "::timestamptz[]", "::timestamptz"} {
		if !strings.Contains(c.SQL, cast) {
			t.Fatalf("no %s in %q", cast, c.SQL)
		}
	}
}

func TestVerb(t *testing.T) {
	for sql, want := range map[string]string{
		"-- a comment\nINSERT INTO t VALUES (1)": "INSERT",
		"/* x */ update t set a = 1":             "UPDATE",
		"SET LOCAL join_collapse_limit = 1":      "SET",
		"WITH x AS (SELECT 1) DELETE FROM t":     "WITH",
		"(SELECT 1)":                             "",
	} {
		if got := Verb(sql); got != want {
			t.Errorf("Verb(%q) = %q, want %q", sql, got, want)
		}
	}
}
