package jobfile

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// A complete split job: each case below edits it in one place.
const splitJob = `-- shardfill:job demo
-- shardfill:description A demo job.
-- shardfill:param cutoff timestamptz required past
-- shardfill:tables issue
-- shardfill:split issue.id where last_activity_at IS NULL rows 100

-- shardfill:slice repeat
UPDATE issue SET x = 1 WHERE shardfill.in_range(id) AND y < @cutoff;

-- shardfill:remaining
SELECT count(*) FROM issue WHERE shardfill.in_range(id);
`

// A complete plan job.
const planJob = `-- shardfill:job demo
-- shardfill:param cutoff timestamptz required
-- shardfill:tables t
-- shardfill:plan
SELECT w AS shard, d AS lo, d + 1 AS hi, 1 AS est_rows FROM x WHERE d < @cutoff;
-- shardfill:slice
UPDATE t SET x = 1 WHERE w = @shard AND d >= @lo AND d < @hi;
`

func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("jobs/demo.sql", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

func TestParseErrors(t *testing.T) {
	rep := func(base, old, new string) string {
		if !strings.Contains(base, old) {
			panic("test case: " + old + " not in the base job")
		}
		return strings.Replace(base, old, new, 1)
	}
	const sliceLine = "UPDATE issue SET x = 1 WHERE shardfill.in_range(id) AND y < @cutoff;"
	const remLine = "SELECT count(*) FROM issue WHERE shardfill.in_range(id);"
	cases := []struct {
		name    string
		src     string
		line    int
		section string
		msg     string
	}{
		{"missing job", rep(splitJob, "-- shardfill:job demo\n", "-- no job\n"), 1, "", "missing -- shardfill:job"},
		{"bad job name", rep(splitJob, "job demo", "job Demo"), 1, "", `job name "Demo"`},
		{"job name too long", rep(splitJob, "job demo", "job a"+strings.Repeat("b", 63)), 1, "", "at most 63"},
		{"duplicate job", rep(splitJob, "-- shardfill:description", "-- shardfill:job other\n-- shardfill:description"), 2, "", "duplicate -- shardfill:job (first on line 1)"},
		{"empty description", rep(splitJob, "description A demo job.", "description"), 2, "", "empty description"},
		{"unknown directive", rep(splitJob, "-- shardfill:tables", "-- shardfill:owner me\n-- shardfill:tables"), 4, "", "unknown directive -- shardfill:owner"},
		{"unknown section", rep(splitJob, "-- shardfill:remaining", "-- shardfill:cleanup"), 10, "", "unknown directive -- shardfill:cleanup"},
		{"directive without name", rep(splitJob, "-- shardfill:tables issue", "-- shardfill:"), 4, "", "directive without a name"},
		{"malformed directive", rep(splitJob, "-- shardfill:remaining", "--shardfill:remaining"), 10, "slice", "malformed directive"},
		{"malformed directive case", rep(splitJob, "-- shardfill:tables", "-- Shardfill:tables"), 4, "", "malformed directive"},
		{"sql outside a section", rep(splitJob, "-- shardfill:tables issue\n", "-- shardfill:tables issue\nSELECT 1;\n"), 5, "", "SQL outside a section"},
		{"sql after a header inside sections", rep(splitJob, "-- shardfill:remaining\n", "-- shardfill:tables t2\nSELECT 1;\n-- shardfill:remaining\n"), 10, "", "duplicate -- shardfill:tables"},

		{"param bad name", rep(splitJob, "param cutoff", "param Cutoff"), 3, "", `param name "Cutoff"`},
		{"param engine name", rep(splitJob, "param cutoff", "param lo"), 3, "", "one of the engine's names"},
		{"param duplicate", rep(splitJob, "-- shardfill:tables", "-- shardfill:param cutoff text\n-- shardfill:tables"), 4, "", "duplicate param cutoff (first on line 3)"},
		{"param bad type", rep(splitJob, "cutoff timestamptz", "cutoff timestamp"), 3, "", `unknown type "timestamp"`},
		{"param missing type", rep(splitJob, "cutoff timestamptz required past", "cutoff"), 3, "", "want \"<name> <type>"},
		{"param past on text", rep(splitJob, "cutoff timestamptz required past", "cutoff text past"), 3, "", "past is only for timestamptz"},
		{"param required and default", rep(splitJob, "required past", "required default 2020-01-01T00:00:00Z"), 3, "", "required and default exclude each other"},
		{"param bad default", rep(splitJob, "timestamptz required past", "bigint default 12x"), 3, "", `default "12x": not a bigint`},
		{"param bad uuid default", rep(splitJob, "timestamptz required past", "uuid default 'abc'"), 3, "", "not a uuid"},
		{"param default without value", rep(splitJob, "required past", "default"), 3, "", "default needs a value"},
		{"param unknown option", rep(splitJob, "required past", "optional"), 3, "", `unknown option "optional"`},
		{"param unterminated quote", rep(splitJob, "timestamptz required past", "text default 'a b"), 3, "", "unterminated quoted value"},
		{"param twice required", rep(splitJob, "required past", "required required"), 3, "", "required given twice"},

		{"lock no key", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock shared\n-- shardfill:tables"), 4, "", "lock: want"},
		{"lock unbalanced", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock hashtext('x' shared\n-- shardfill:tables"), 4, "", "unbalanced parentheses"},
		{"lock conflicting modes", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock 1 shared exclusive\n-- shardfill:tables"), 4, "", "shared and exclusive given together"},
		{"lock semicolon", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock 1; DROP TABLE x\n-- shardfill:tables"), 4, "", "';' is not allowed"},
		{"lock placeholder", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock hashtext(@cutoff::text)\n-- shardfill:tables"), 4, "", "placeholders are not allowed"},
		{"lock twice", rep(splitJob, "-- shardfill:tables", "-- shardfill:lock 1\n-- shardfill:lock 2\n-- shardfill:tables"), 5, "", "duplicate -- shardfill:lock (first on line 4)"},

		{"tables missing", rep(splitJob, "-- shardfill:tables issue\n", ""), 1, "", "missing -- shardfill:tables"},
		{"tables bad name", rep(splitJob, "tables issue", "tables issue, a.b.c"), 4, "", `"a.b.c" is not a table name`},
		{"tables empty entry", rep(splitJob, "tables issue", "tables issue,"), 4, "", `"" is not a table name`},
		{"tables twice", rep(splitJob, "tables issue", "tables issue, public.x, issue"), 4, "", "issue listed twice"},

		{"split bad key", rep(splitJob, "split issue.id", "split issue"), 5, "", `split: "issue": want <table>.<column>`},
		{"split bad rows", rep(splitJob, "rows 100", "rows 0"), 5, "", `rows "0": want a positive integer`},
		{"split bad rows word", rep(splitJob, "rows 100", "rows many"), 5, "", `rows "many"`},
		{"split where without condition", rep(splitJob, "where last_activity_at IS NULL rows 100", "where rows 100"), 5, "", "where needs a condition"},
		{"split where trailing comma", rep(splitJob, "last_activity_at IS NULL rows", "last_activity_at IS NULL, rows"), 5, "", "ends with ','"},
		{"split junk", rep(splitJob, "where last_activity_at IS NULL", "when x"), 5, "", `unexpected "when x"`},
		{"split where unbalanced", rep(splitJob, "last_activity_at IS NULL", "(a OR b"), 5, "", "unbalanced parentheses"},
		{"split where engine name", rep(splitJob, "last_activity_at IS NULL", "id >= @lo"), 5, "", "@lo is not bound in the split's where"},
		{"split where unknown param", rep(splitJob, "last_activity_at IS NULL", "x < @since"), 5, "", "unknown parameter @since"},
		{"split where in_range", rep(splitJob, "last_activity_at IS NULL", "shardfill.in_range(id)"), 5, "", "shardfill.in_range is not allowed in the split's where"},

		{"split and plan", rep(splitJob, "-- shardfill:slice repeat", "-- shardfill:plan\nSELECT 1 AS lo, 2 AS hi, 3 AS est_rows;\n-- shardfill:slice repeat"), 7, "", "both -- shardfill:split (line 5) and -- shardfill:plan (line 7)"},
		{"neither split nor plan", rep(splitJob, "-- shardfill:split issue.id where last_activity_at IS NULL rows 100\n", ""), 1, "", "missing -- shardfill:split or -- shardfill:plan"},
		{"missing slice", rep(splitJob, "-- shardfill:slice repeat\n"+sliceLine+"\n", ""), 1, "", "missing section -- shardfill:slice"},
		{"slice unknown option", rep(splitJob, "slice repeat", "slice repeat-until-zero"), 7, "slice", `unknown slice option "repeat-until-zero"`},
		{"slice max-stalls without repeat", rep(splitJob, "slice repeat", "slice max-stalls 3"), 7, "slice", "max-stalls is only meaningful with repeat"},
		{"slice bad max-stalls", rep(splitJob, "slice repeat", "slice repeat max-stalls -1"), 7, "slice", `max-stalls "-1"`},
		{"slice max-stalls missing number", rep(splitJob, "slice repeat", "slice repeat max-stalls"), 7, "slice", "max-stalls needs a number"},
		{"repeat without remaining", rep(splitJob, "-- shardfill:remaining\n"+remLine+"\n", ""), 7, "slice", "slice repeat needs a -- shardfill:remaining"},
		{"section with options", rep(splitJob, "-- shardfill:remaining", "-- shardfill:remaining fast"), 10, "remaining", "section remaining takes no options"},
		{"duplicate section", splitJob + "-- shardfill:remaining\nSELECT 1;\n", 12, "remaining", "duplicate section remaining (first on line 10)"},
		{"empty section", splitJob + "-- shardfill:verify\n-- nothing here\n;\n", 12, "verify", "section verify holds no statement"},
		{"two statements in slice", rep(splitJob, sliceLine, sliceLine+"\nSELECT 1;"), 9, "slice", "holds 2 statements; only finish, then and batch may hold several"},
		{"unterminated string", rep(splitJob, "y < @cutoff;", "y < 'abc;"), 8, "slice", "unterminated string literal"},
		{"unterminated dollar quote", splitJob + "-- shardfill:finish\nSELECT 1;\nDO $body$ BEGIN\nEND $bod$;\n", 14, "finish", "unterminated dollar-quoted string $body$"},
		{"unterminated block comment", splitJob + "-- shardfill:finish\nSELECT /* 1;\n", 13, "finish", "unterminated /* comment"},

		{"unknown parameter", rep(splitJob, "y < @cutoff", "y < @since"), 8, "slice", "unknown parameter @since (declared: @cutoff; the engine's names are @lo, @hi, @shard)"},
		{"unknown parameter later line", rep(splitJob, remLine, "SELECT count(*)\nFROM issue\nWHERE shardfill.in_range(id) AND z = @zz;"), 13, "remaining", "unknown parameter @zz"},
		{"lo in split slice", rep(splitJob, "shardfill.in_range(id)", "shardfill.in_range(id) AND id >= @lo"), 8, "slice", "@lo is not allowed in a split job: use shardfill.in_range(id) so open ends cannot be got wrong"},
		{"hi in split remaining", rep(splitJob, remLine, "SELECT count(*) FROM issue\nWHERE shardfill.in_range(id) AND id < @hi;"), 12, "remaining", "@hi is not allowed in a split job"},
		{"hi in split then", splitJob + "-- shardfill:then\nSELECT 1;\nSELECT @hi;\n", 14, "then", "@hi is not allowed in a split job"},
		{"shard in split slice", rep(splitJob, "y < @cutoff", "w = @shard"), 8, "slice", "@shard is not bound in a split job"},
		{"split remaining without in_range", rep(splitJob, remLine, "SELECT count(*)\nFROM issue;"), 11, "remaining", "must count only the slice's rows"},
		{"split slice without in_range", rep(splitJob, "shardfill.in_range(id)", "TRUE"), 8, "slice", "must restrict its rows with shardfill.in_range(id)"},
		{"in_range in verify", splitJob + "-- shardfill:verify\nSELECT id FROM issue\nWHERE shardfill.in_range(id);\n", 14, "verify", "shardfill.in_range is not allowed in the section verify"},
		{"in_range in dry-run", splitJob + "-- shardfill:dry-run\nSELECT shardfill.in_range(id) FROM issue;\n", 13, "dry-run", "shardfill.in_range is not allowed in the section dry-run"},
		{"lo in finish", splitJob + "-- shardfill:finish\nSELECT 1;\nSELECT @lo;\n", 14, "finish", "@lo is not bound in the section finish"},
		{"shard in plan", rep(planJob, "FROM x WHERE", "FROM x WHERE w = @shard AND"), 5, "plan", "@shard is not bound in the section plan"},
		{"hi in plan job's verify", planJob + "-- shardfill:verify\nSELECT @hi;\n", 9, "verify", "@hi is not bound in the section verify"},
		{"unknown shardfill function", rep(splitJob, "y < @cutoff", "shardfill.in_ranges(y)"), 8, "slice", "unknown function shardfill.in_ranges"},
		{"in_range without parenthesis", rep(splitJob, "shardfill.in_range(id)", "shardfill.in_range AND x"), 8, "slice", "must be followed by (<key expression>)"},
		{"in_range unclosed", rep(splitJob, "shardfill.in_range(id)", "shardfill.in_range(id"), 8, "slice", "has no closing parenthesis"},
		{"in_range empty", rep(splitJob, "shardfill.in_range(id)", "shardfill.in_range( /* */ )"), 8, "slice", "needs the key expression"},
		{"in_range nested", rep(splitJob, "shardfill.in_range(id)", "shardfill.in_range(shardfill.in_range(id))"), 8, "slice", "inside shardfill.in_range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("jobs/demo.sql", []byte(c.src))
			if err == nil {
				t.Fatalf("no error; want %q", c.msg)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v, want *Error", err, err)
			}
			if e.Line != c.line || e.Section != c.section || !strings.Contains(e.Msg, c.msg) {
				t.Fatalf("got line %d section %q msg %q\nwant line %d section %q msg containing %q", e.Line, e.Section, e.Msg, c.line, c.section, c.msg)
			}
			want := fmt.Sprintf("jobs/demo.sql:%d: ", c.line)
			if c.section != "" {
				want += "section " + c.section + ": "
			}
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("Error() = %q, want prefix %q", err.Error(), want)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	for _, c := range []struct {
		e    Error
		want string
	}{
		{Error{Path: "jobs/x.sql", Section: "slice", Line: 12, Msg: "unknown parameter @foo"}, "jobs/x.sql:12: section slice: unknown parameter @foo"},
		{Error{Path: "jobs/x.sql", Line: 3, Msg: "bad"}, "jobs/x.sql:3: bad"},
		{Error{Path: "jobs/x.sql", Msg: "bad"}, "jobs/x.sql: bad"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
}

func TestParseFull(t *testing.T) {
	src := `-- A leading comment and blank lines are fine.

-- shardfill:job full-job
-- shardfill:description Everything a job can say.
  -- shardfill:param since timestamptz default '2024-01-01T00:00:00Z' past
-- shardfill:param label text default 'two words'
-- shardfill:param quote text default 'it''s'
-- shardfill:param ws uuid default NULL
-- shardfill:param n bigint default 42
-- shardfill:param flag boolean
-- shardfill:param must text required
-- shardfill:lock hashtextextended('my job', 0) EXCLUSIVE nocheck noyield
-- shardfill:tables public.issue, task_usage
-- shardfill:split public.issue.id where (status = 'open' AND x > @n) rows 250

-- shardfill:slice repeat max-stalls 9
UPDATE public.issue
   SET x = x + 1
 WHERE shardfill.in_range(id);

-- shardfill:then
-- a comment; with a semicolon
INSERT INTO log VALUES ('a;b', "c;d", $$ e;f $$, $t$ g;h $t$, E'it\'s;');
/* block; comment */ DELETE FROM log WHERE false;
;;
-- shardfill:finish
SELECT 1;
SELECT 2
-- shardfill:verify
SELECT id FROM public.issue WHERE x < @n
-- shardfill:remaining
SELECT count(*) FROM public.issue WHERE shardfill.in_range(id)
-- shardfill:dry-run
SELECT count(*) FROM public.issue;
`
	f := mustParse(t, src)
	s := func(v string) *string { return &v }
	wantParams := []Param{
		{Name: "since", Type: Timestamptz, Default: s("2024-01-01T00:00:00Z"), Past: true, Line: 5},
		{Name: "label", Type: Text, Default: s("two words"), Line: 6},
		{Name: "quote", Type: Text, Default: s("it's"), Line: 7},
		{Name: "ws", Type: UUID, Line: 8},
		{Name: "n", Type: Bigint, Default: s("42"), Line: 9},
		{Name: "flag", Type: Boolean, Line: 10},
		{Name: "must", Type: Text, Required: true, Line: 11},
	}
	if !reflect.DeepEqual(f.Params, wantParams) {
		t.Errorf("params:\n got %+v\nwant %+v", f.Params, wantParams)
	}
	if f.Name != "full-job" || f.Description != "Everything a job can say." || f.Path != "jobs/demo.sql" {
		t.Errorf("name %q description %q path %q", f.Name, f.Description, f.Path)
	}
	if want := (&Lock{Key: "hashtextextended('my job', 0)", Exclusive: true, Check: false, Yield: false, Line: 12}); !reflect.DeepEqual(f.Lock, want) {
		t.Errorf("lock %+v", f.Lock)
	}
	if !reflect.DeepEqual(f.Tables, []string{"public.issue", "task_usage"}) {
		t.Errorf("tables %v", f.Tables)
	}
	if want := (&Split{Table: "public.issue", Column: "id", Where: "(status = 'open' AND x > @n)", Rows: 250, Line: 14}); !reflect.DeepEqual(f.Split, want) {
		t.Errorf("split %+v", f.Split)
	}
	if !f.Repeat || f.MaxStalls != 9 || f.Plan != nil {
		t.Errorf("repeat %v max-stalls %d plan %v", f.Repeat, f.MaxStalls, f.Plan)
	}
	wantSlice := Section{Name: "slice", Line: 16, Statements: []Statement{{SQL: "UPDATE public.issue\n   SET x = x + 1\n WHERE shardfill.in_range(id)", Line: 17}}}
	if !reflect.DeepEqual(f.Slice, wantSlice) {
		t.Errorf("slice %+v", f.Slice)
	}
	wantThen := &Section{Name: "then", Line: 21, Statements: []Statement{
		{SQL: `INSERT INTO log VALUES ('a;b', "c;d", $$ e;f $$, $t$ g;h $t$, E'it\'s;')`, Line: 23},
		{SQL: "DELETE FROM log WHERE false", Line: 24},
	}}
	if !reflect.DeepEqual(f.Then, wantThen) {
		t.Errorf("then:\n got %+v\nwant %+v", f.Then, wantThen)
	}
	wantFinish := &Section{Name: "finish", Line: 26, Statements: []Statement{{SQL: "SELECT 1", Line: 27}, {SQL: "SELECT 2", Line: 28}}}
	if !reflect.DeepEqual(f.Finish, wantFinish) {
		t.Errorf("finish %+v", f.Finish)
	}
	if f.Verify.Line != 29 || f.Verify.Statements[0].SQL != "SELECT id FROM public.issue WHERE x < @n" ||
		f.Remaining.Line != 31 || f.DryRun.Statements[0] != (Statement{SQL: "SELECT count(*) FROM public.issue", Line: 34}) {
		t.Errorf("verify %+v remaining %+v dry-run %+v", f.Verify, f.Remaining, f.DryRun)
	}
	var order []string
	for _, l := range f.All() {
		order = append(order, fmt.Sprintf("%s@%d", l.Section, l.Statement.Line))
	}
	if got := strings.Join(order, " "); got != "slice@17 then@23 then@24 finish@27 finish@28 verify@30 remaining@32 dry-run@34" {
		t.Errorf("All() = %s", got)
	}
	if !strings.HasPrefix(f.Version, "full-job-") || len(f.Version) != len("full-job-")+12 {
		t.Errorf("version %q", f.Version)
	}
}

func TestParseDefaultsAndPlan(t *testing.T) {
	f := mustParse(t, planJob)
	if f.Plan == nil || f.Split != nil || f.Repeat || f.MaxStalls != 0 || f.Lock != nil {
		t.Fatalf("plan %v split %v repeat %v max-stalls %d lock %v", f.Plan, f.Split, f.Repeat, f.MaxStalls, f.Lock)
	}
	if f.Plan.Line != 4 || f.Plan.Statements[0].Line != 5 {
		t.Errorf("plan %+v", f.Plan)
	}
	var order []string
	for _, l := range f.All() {
		order = append(order, l.Section)
	}
	if strings.Join(order, ",") != "plan,slice" {
		t.Errorf("All() sections %v", order)
	}

	f = mustParse(t, strings.Replace(splitJob, "-- shardfill:tables", "-- shardfill:lock 4246\n-- shardfill:tables", 1))
	if want := (&Lock{Key: "4246", Check: true, Yield: true, Line: 4}); !reflect.DeepEqual(f.Lock, want) {
		t.Errorf("lock defaults %+v", f.Lock)
	}
	f = mustParse(t, strings.Replace(splitJob, " where last_activity_at IS NULL rows 100", "", 1))
	if f.Split.Rows != 5000 || f.Split.Where != "" {
		t.Errorf("split defaults %+v", f.Split)
	}
	f = mustParse(t, strings.Replace(splitJob, " rows 100", "", 1))
	if f.Split.Rows != 5000 || f.Split.Where != "last_activity_at IS NULL" {
		t.Errorf("split without rows %+v", f.Split)
	}
	// "rows" only counts as the option when it is the last but one word.
	f = mustParse(t, strings.Replace(splitJob, "last_activity_at IS NULL rows 100", "rows > 3", 1))
	if f.Split.Rows != 5000 || f.Split.Where != "rows > 3" {
		t.Errorf("split where with rows %+v", f.Split)
	}
	// CRLF line endings.
	f = mustParse(t, strings.ReplaceAll(splitJob, "\n", "\r\n"))
	if f.Slice.Statements[0].Line != 8 || strings.Contains(f.Slice.Statements[0].SQL, "\r") || f.Name != "demo" {
		t.Errorf("crlf: %+v", f.Slice)
	}
}

func TestSplitStatements(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"SELECT 1", []string{"SELECT 1"}},
		{"SELECT 1;", []string{"SELECT 1"}},
		{"  \n-- lead\nSELECT 1; -- tail\n", []string{"SELECT 1"}},
		{"SELECT ';'; SELECT \";\"", []string{"SELECT ';'", `SELECT ";"`}},
		{"SELECT 'it''s;'; SELECT 2", []string{"SELECT 'it''s;'", "SELECT 2"}},
		{"SELECT E'\\';'; SELECT 2", []string{"SELECT E'\\';'", "SELECT 2"}},
		{"SELECT 'a\\'; SELECT 2", []string{"SELECT 'a\\'", "SELECT 2"}},
		{"DO $$ BEGIN PERFORM 1; END $$; SELECT 2", []string{"DO $$ BEGIN PERFORM 1; END $$", "SELECT 2"}},
		{"SELECT $x$ ; $y$ ; $x$", []string{"SELECT $x$ ; $y$ ; $x$"}},
		{"SELECT $1; SELECT a$b", []string{"SELECT $1", "SELECT a$b"}},
		{"SELECT 1 /* ; /* nested ; */ ; */ + 1", []string{"SELECT 1 /* ; /* nested ; */ ; */ + 1"}},
		{"SELECT 1 -- ;\n + 1", []string{"SELECT 1 -- ;\n + 1"}},
		{";;  ; -- only\n", nil},
		{"SELECT 1;\n\nSELECT\n  2;", []string{"SELECT 1", "SELECT\n  2"}},
	} {
		got, _, err := splitStatements(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}

func TestVersion(t *testing.T) {
	base := mustParse(t, splitJob).Version
	if mustParse(t, splitJob).Version != base {
		t.Fatal("version is not deterministic")
	}
	same := []struct{ name, old, new string }{
		{"comment added", "-- shardfill:slice repeat\n", "-- shardfill:slice repeat\n-- why we do this\n"},
		{"reindented", "UPDATE issue SET x = 1 WHERE", "UPDATE issue\n   SET x = 1\n WHERE"},
		{"description", "A demo job.", "Another text."},
		{"trailing comment", "y < @cutoff;", "y < @cutoff; -- done"},
	}
	for _, c := range same {
		if v := mustParse(t, strings.Replace(splitJob, c.old, c.new, 1)).Version; v != base {
			t.Errorf("%s changed the version", c.name)
		}
	}
	changed := []struct{ name, old, new string }{
		{"statement", "SET x = 1", "SET x = 2"},
		{"string literal spacing", "SET x = 1", "SET x = 'a  b'"},
		{"remaining", "SELECT count(*) FROM issue WHERE", "SELECT count(1) FROM issue WHERE"},
		{"split rows", "rows 100", "rows 101"},
		{"split where", "IS NULL rows", "IS NOT NULL rows"},
		{"param", "required past", "required"},
		{"slice option", "slice repeat", "slice repeat max-stalls 6"},
		{"tables", "tables issue", "tables issue, other"},
		{"lock", "-- shardfill:tables", "-- shardfill:lock 1\n-- shardfill:tables"},
		{"name", "job demo", "job demo2"},
		{"section added", "-- shardfill:remaining", "-- shardfill:finish\nSELECT 1;\n-- shardfill:remaining"},
	}
	for _, c := range changed {
		if v := mustParse(t, strings.Replace(splitJob, c.old, c.new, 1)).Version; v == base {
			t.Errorf("%s kept the version %s", c.name, v)
		}
	}
	// A lock option changes it too.
	a := mustParse(t, strings.Replace(splitJob, "-- shardfill:tables", "-- shardfill:lock 1 shared\n-- shardfill:tables", 1)).Version
	b := mustParse(t, strings.Replace(splitJob, "-- shardfill:tables", "-- shardfill:lock 1 exclusive\n-- shardfill:tables", 1)).Version
	if a == b {
		t.Error("lock mode kept the version")
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"SELECT  1\n\t+ 2":        "SELECT 1 + 2",
		"SELECT 'a  b' -- c\n, 2": "SELECT 'a  b' , 2",
		"a/* x */b":               "a b",
		"  SELECT \"x  y\"  ":     `SELECT "x  y"`,
		"SELECT $$ a\n  b $$ ,x":  "SELECT $$ a\n  b $$ ,x",
		"SELECT 1 AS\"x\"":        `SELECT 1 AS"x"`,
	} {
		if got := canonical(in); got != want {
			t.Errorf("canonical(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("testdata/does-not-exist.sql"); err == nil {
		t.Error("Load of a missing file: no error")
	}
	f, err := Load("../jobs/issue-last-activity.sql")
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != "../jobs/issue-last-activity.sql" || f.Name != "issue-last-activity" {
		t.Errorf("path %q name %q", f.Path, f.Name)
	}
}
