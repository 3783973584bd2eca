package jobfile

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const compileJob = `-- shardfill:job c
-- shardfill:param cutoff timestamptz required
-- shardfill:param ws uuid
-- shardfill:param note text
-- shardfill:tables t
-- shardfill:plan
SELECT 1 AS lo, 2 AS hi, 3 AS est_rows WHERE @cutoff IS NOT NULL;
-- shardfill:slice
SELECT 1;
`

func TestCompileScopes(t *testing.T) {
	f := mustParse(t, compileJob)
	st := Statement{SQL: "UPDATE t SET a = @cutoff\nWHERE shardfill.in_range(t.k) AND w = @shard AND b < @cutoff", Line: 20}
	cases := []struct {
		name  string
		scope Scope
		sql   string
		names []string
	}{
		{"closed", Scope{},
			"UPDATE t SET a = $1::timestamptz\nWHERE ((t.k) >= $2::bigint AND (t.k) < $3::bigint) AND w = $4::uuid AND b < $1::timestamptz",
			[]string{"cutoff", "lo", "hi", "shard"}},
		{"open below", Scope{LoOpen: true},
			"UPDATE t SET a = $1::timestamptz\nWHERE ((t.k) < $2::bigint) AND w = $3::uuid AND b < $1::timestamptz",
			[]string{"cutoff", "hi", "shard"}},
		{"open above", Scope{HiOpen: true},
			"UPDATE t SET a = $1::timestamptz\nWHERE ((t.k) >= $2::bigint) AND w = $3::uuid AND b < $1::timestamptz",
			[]string{"cutoff", "lo", "shard"}},
		{"open both ends", Scope{LoOpen: true, HiOpen: true},
			"UPDATE t SET a = $1::timestamptz\nWHERE TRUE AND w = $2::uuid AND b < $1::timestamptz",
			[]string{"cutoff", "shard"}},
		{"whole", Scope{Whole: true},
			"UPDATE t SET a = $1::timestamptz\nWHERE TRUE AND w = NULL::uuid AND b < $1::timestamptz",
			[]string{"cutoff"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := f.Compile(st, Bigint, UUID, c.scope)
			if err != nil {
				t.Fatal(err)
			}
			if got.SQL != c.sql || !reflect.DeepEqual(got.Names, c.names) || got.Line != 20 {
				t.Fatalf("got  %q %v line %d\nwant %q %v", got.SQL, got.Names, got.Line, c.sql, c.names)
			}
		})
	}
}

func TestCompileUntypedAndLoHi(t *testing.T) {
	f := mustParse(t, compileJob)
	got, err := f.Compile(Statement{SQL: "SELECT @lo, @hi, @shard, @LO, @note", Line: 1}, "", "", Scope{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "SELECT $1, $2, $3, $1, $4::text"; got.SQL != want || !reflect.DeepEqual(got.Names, []string{"lo", "hi", "shard", "note"}) {
		t.Errorf("got %q %v, want %q", got.SQL, got.Names, want)
	}
	got, err = f.Compile(Statement{SQL: "SELECT @lo, @shard", Line: 1}, "", "", Scope{Whole: true})
	if err != nil {
		t.Fatal(err)
	}
	if got.SQL != "SELECT NULL, NULL" || len(got.Names) != 0 {
		t.Errorf("whole untyped: %q %v", got.SQL, got.Names)
	}
}

func TestCompileLeavesQuotedTextAlone(t *testing.T) {
	f := mustParse(t, compileJob)
	for _, sql := range []string{
		"SELECT tags @> ARRAY['a'] FROM t",
		"SELECT tags<@ARRAY['a'], a<@b, x @@to_tsquery('y'), @-5, @ 5 FROM t",
		"SELECT '@cutoff', 'shardfill.in_range(x)', E'\\'@cutoff' FROM t",
		`SELECT "@cutoff", "shardfill.in_range(x)" FROM t`,
		"SELECT $$ @cutoff shardfill.in_range(x) $$, $q$ @ws $q$ FROM t",
		"SELECT 1 -- @cutoff shardfill.in_range(x)\n, 2 /* @ws shardfill.in_range( */ FROM t",
		"SELECT shardfill.checkpoint_table.x, myshardfill.in_range, x.shardfill.in_range FROM shardfill.runs",
		"SELECT $1, a$b, email FROM t WHERE x = 'a@b.c'",
	} {
		got, err := f.Compile(Statement{SQL: sql, Line: 1}, UUID, UUID, Scope{})
		if err != nil {
			t.Errorf("%q: %v", sql, err)
			continue
		}
		if got.SQL != sql || len(got.Names) != 0 {
			t.Errorf("%q changed to %q (names %v)", sql, got.SQL, got.Names)
		}
	}
	// Operators right next to a placeholder.
	got, err := f.Compile(Statement{SQL: "SELECT tags @> @note::text[], x=@ws, (@cutoff)", Line: 1}, "", "", Scope{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "SELECT tags @> $1::text::text[], x=$2::uuid, ($3::timestamptz)"; got.SQL != want {
		t.Errorf("got %q, want %q", got.SQL, want)
	}
}

func TestCompileKeepsLines(t *testing.T) {
	f := mustParse(t, compileJob)
	sql := "UPDATE t\nSET a = 1 -- café ☕\nWHERE shardfill.in_range(\n  t.k -- the key\n  + 0\n)\n  AND b = @cutoff\n  AND c = ‘x’ + broken"
	st := Statement{SQL: sql, Line: 10}
	for _, sc := range []Scope{{}, {LoOpen: true}, {HiOpen: true}, {LoOpen: true, HiOpen: true}, {Whole: true}} {
		got, err := f.Compile(st, UUID, "", sc)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(got.SQL, "\n") != strings.Count(sql, "\n") {
			t.Fatalf("%+v: %d newlines, want %d:\n%s", sc, strings.Count(got.SQL, "\n"), strings.Count(sql, "\n"), got.SQL)
		}
		// Every line after the in_range call keeps its line: a position in
		// "broken" (the last line) maps to file line 17.
		runes := []rune(got.SQL)
		pos := len([]rune(got.SQL[:strings.Index(got.SQL, "broken")])) + 1
		if string(runes[pos-1:pos+5]) != "broken" {
			t.Fatalf("position arithmetic: %q", string(runes[pos-1:pos+5]))
		}
		if l := got.LineAt(pos); l != 17 {
			t.Errorf("%+v: LineAt(broken) = %d, want 17\n%s", sc, l, got.SQL)
		}
		// And the first bound's line.
		pos = len([]rune(got.SQL[:strings.Index(got.SQL, "$")])) + 1
		if !sc.Whole && !(sc.LoOpen && sc.HiOpen) {
			if l := got.LineAt(pos); l != 15 { // ") >= $1" is on the sixth line
				t.Errorf("%+v: LineAt(first $) = %d", sc, l)
			}
		}
	}
	got, _ := f.Compile(st, UUID, "", Scope{})
	want := "UPDATE t\nSET a = 1 -- café ☕\nWHERE ((\n  t.k -- the key\n  + 0\n) >= $1::uuid AND (   t.k     + 0 ) < $2::uuid)\n  AND b = $3::timestamptz\n  AND c = ‘x’ + broken"
	if got.SQL != want {
		t.Errorf("closed:\n got %q\nwant %q", got.SQL, want)
	}
	for pos, line := range map[int]int{-3: 10, 0: 10, 1: 10, 9: 10, 10: 11, 1000: 17} {
		if l := got.LineAt(pos); l != line {
			t.Errorf("LineAt(%d) = %d, want %d", pos, l, line)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	f := mustParse(t, compileJob)
	for _, c := range []struct {
		sql  string
		line int
		msg  string
	}{
		{"SELECT 1\nFROM t WHERE x = @nope", 6, "unknown parameter @nope"},
		{"SELECT 'x", 5, "unterminated string literal"},
		{"SELECT shardfill.in_range(x", 5, "no closing parenthesis"},
		{"SELECT 1 WHERE shardfill.in_range(x = 'a\nb')", 5, "quoted newline"},
	} {
		_, err := f.Compile(Statement{SQL: c.sql, Line: 5}, UUID, "", Scope{})
		var e *Error
		if !errors.As(err, &e) || e.Line != c.line || !strings.Contains(e.Msg, c.msg) {
			t.Errorf("%q: got %v, want line %d %q", c.sql, err, c.line, c.msg)
		}
	}
	// A quoted newline is fine where the expression is not repeated.
	if _, err := f.Compile(Statement{SQL: "SELECT 1 WHERE shardfill.in_range(x = 'a\nb')", Line: 5}, UUID, "", Scope{LoOpen: true}); err != nil {
		t.Errorf("open below: %v", err)
	}
}

func TestValues(t *testing.T) {
	f := mustParse(t, `-- shardfill:job v
-- shardfill:param cutoff timestamptz required past
-- shardfill:param since timestamptz default 2020-01-01T01:00:00+01:00
-- shardfill:param ws uuid
-- shardfill:param n bigint default 7
-- shardfill:param flag boolean default yes
-- shardfill:param label text default 'a b'
-- shardfill:param nothing text default NULL
-- shardfill:param later timestamptz default 2999-01-01T00:00:00Z past
-- shardfill:tables t
-- shardfill:plan
SELECT 1 AS lo, 2 AS hi, 3 AS est_rows;
-- shardfill:slice
SELECT 1;
`)
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	deref := func(m map[string]*string) map[string]any {
		out := map[string]any{}
		for k, v := range m {
			if v == nil {
				out[k] = nil
			} else {
				out[k] = *v
			}
		}
		return out
	}
	got, err := f.Values(map[string]string{
		"cutoff": "2026-01-31T10:00:00.5+02:00", "ws": "0B6C3A5E-8F1D-4C2A-9E7B-1F2D3C4B5A69",
		"n": "+0042", "flag": "OFF", "later": "2026-12-05T12:00:00Z",
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"cutoff": "2026-01-31T08:00:00.5Z", "since": "2020-01-01T00:00:00Z",
		"ws": "0b6c3a5e-8f1d-4c2a-9e7b-1f2d3c4b5a69", "n": "42", "flag": "false",
		"label": "a b", "nothing": nil, "later": "2026-12-05T12:00:00Z",
	}
	if !reflect.DeepEqual(deref(got), want) {
		t.Errorf("Values:\n got %v\nwant %v", deref(got), want)
	}

	base := map[string]string{"cutoff": "2026-01-01T00:00:00Z", "later": "2026-01-01T00:00:00Z"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range base {
			m[a] = b
		}
		if v == "<delete>" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	if _, err := f.Values(base, now); err != nil {
		t.Fatalf("base: %v", err)
	}
	for _, c := range []struct {
		name    string
		given   map[string]string
		param   string
		msg     string
		wantErr bool
	}{
		{"unknown", with("cut_off", "x"), "cut_off", "no such parameter", true},
		{"missing required", with("cutoff", "<delete>"), "cutoff", "required", true},
		{"past default later than now", with("later", "<delete>"), "later", "later than now", true},
		{"future", with("cutoff", "2026-12-05T12:00:01Z"), "cutoff", "later than now", true},
		{"now is not later", with("cutoff", "2026-12-05T12:00:00Z"), "", "", false},
		{"timestamptz without zone", with("cutoff", "2026-01-01T00:00:00"), "cutoff", "not a timestamptz", true},
		{"timestamptz date only", with("since", "2026-01-01"), "since", "not a timestamptz", true},
		{"uuid short", with("ws", "0b6c3a5e-8f1d-4c2a-9e7b-1f2d3c4b5a6"), "ws", "not a uuid", true},
		{"uuid braces", with("ws", "{0b6c3a5e-8f1d-4c2a-9e7b-1f2d3c4b5a69}"), "ws", "not a uuid", true},
		{"uuid without dashes", with("ws", "0b6c3a5e8f1d4c2a9e7b1f2d3c4b5a69"), "ws", "not a uuid", true},
		{"bigint overflow", with("n", "9223372036854775808"), "n", "not a bigint", true},
		{"bigint float", with("n", "1.5"), "n", "not a bigint", true},
		{"bigint min", with("n", "-9223372036854775808"), "", "", false},
		{"boolean bad", with("flag", "maybe"), "flag", "not a boolean", true},
		{"boolean t", with("flag", "t"), "", "", false},
		{"text anything", with("label", ""), "", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.Values(c.given, now)
			if !c.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var pe *ParamError
			if !errors.As(err, &pe) || pe.Name != c.param || !strings.Contains(pe.Msg, c.msg) {
				t.Fatalf("got %v, want param %s %q", err, c.param, c.msg)
			}
			if !strings.HasPrefix(err.Error(), "--param "+c.param+"=...: ") {
				t.Fatalf("Error() = %q", err.Error())
			}
		})
	}
	for v, want := range map[string]string{"true": "true", "T": "true", "yes": "true", "on": "true", "1": "true", "FALSE": "false", "f": "false", "no": "false", "off": "false", "0": "false"} {
		got, err := f.Values(with("flag", v), now)
		if err != nil || *got["flag"] != want {
			t.Errorf("boolean %q: %v %v", v, err, got["flag"])
		}
	}
}
