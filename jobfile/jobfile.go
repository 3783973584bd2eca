// Package jobfile parses and compiles shardfill job files: one .sql file
// whose named sections are marked by "-- shardfill:" comment lines (the
// goose/sqlc convention), so the file stays plain SQL to every other tool.
// docs/jobs.md is the reference of the syntax.
//
// The package is pure Go: it never talks to a database. Parse checks
// everything that can be checked without one (sections, options,
// parameters, the placeholders each section may use); Compile turns one
// statement into the SQL the engine sends, with $n parameters; Values
// checks the operator's --param values.
package jobfile

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Type is a parameter's type (and, for Compile, the cast given to the
// engine's names).
type Type string

// The parameter types a job file may declare.
const (
	Timestamptz Type = "timestamptz"
	UUID        Type = "uuid"
	Bigint      Type = "bigint"
	Text        Type = "text"
	Boolean     Type = "boolean"
)

var paramTypes = map[string]Type{
	"timestamptz": Timestamptz, "uuid": UUID, "bigint": Bigint, "text": Text, "boolean": Boolean,
}

// Param is one -- shardfill:param line.
type Param struct {
	Name     string
	Type     Type
	Required bool
	Default  *string // nil = NULL; as written (Values normalises it)
	Past     bool
	Line     int
}

// Lock is the -- shardfill:lock line: an advisory lock the run holds.
type Lock struct {
	Key                     string // an SQL expression
	Exclusive, Check, Yield bool
	Line                    int
}

// Split is the -- shardfill:split line: the engine slices the key range
// of Table.Column itself. Where may use the job's parameters (compile it
// as a Statement{SQL: Where, Line: Line}).
type Split struct {
	Table, Column, Where string
	Rows                 int64
	Line                 int
}

// Statement is one SQL statement of a section.
type Statement struct {
	SQL  string
	Line int // the file line where SQL starts
}

// Section is a section directive with its statements.
type Section struct {
	Name       string
	Line       int // of the directive
	Statements []Statement
}

// File is a parsed job file.
type File struct {
	Path, Name, Description string
	Params                  []Param
	Lock                    *Lock // nil: no lock
	Tables                  []string
	Split                   *Split // exactly one of Split, Plan
	Plan                    *Section
	// PlanMonths: the plan is run piece by piece over whole UTC months
	// (-- shardfill:plan months), bounded by the Bounds query.
	PlanMonths bool
	Bounds     *Section
	Slice      Section // empty when the job has only batch forms
	// Batches are the batch sections by access path: "" (the plain
	// batch, run first for every batch) and by-shard, by-range,
	// by-window (the form the batch's cost picks, run after it).
	Batches              map[string]*Section
	Repeat               bool
	MaxStalls            int // with Repeat: default 5; 0 without
	Then, Finish, Verify *Section
	Remaining, DryRun    *Section
	Extent, Check        *Section
	// Facts are the preflight's questions, in file order: each a query
	// of one boolean that shardfill.if(name, a, b) chooses by.
	Facts []*Section
	// Version is Name + "-" + the first 12 hex digits of a SHA-256 over
	// every directive and statement in canonical form (comments dropped,
	// whitespace outside quotes collapsed; the description left out), so
	// any change of logic changes it and a reworded comment does not.
	Version string
}

// Located is a statement with the name of its section.
type Located struct {
	Section   string
	Statement Statement
}

// Error is a problem in a job file. Section is "" for the header.
type Error struct {
	Path, Section string
	Line          int
	Msg           string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Section != "" {
		fmt.Fprintf(&b, "section %s: ", e.Section)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// The section names, in the order All lists them (batch and fact may
// appear several times).
var sectionOrder = []string{"plan", "bounds", "slice", "batch", "then", "finish", "verify", "extent", "remaining", "dry-run", "check", "fact"}

// BatchPaths are the access paths a batch form may name.
var BatchPaths = []string{"by-shard", "by-range", "by-window"}

var (
	jobNameRe   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	paramNameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	identRe     = `(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")`
	tableRe     = regexp.MustCompile(`^` + identRe + `(?:\.` + identRe + `)?$`)
	splitKeyRe  = regexp.MustCompile(`^(` + identRe + `(?:\.` + identRe + `)?)\.(` + identRe + `)$`)
	// A line that looks meant as a directive but is not spelled as one.
	nearDirectiveRe = regexp.MustCompile(`(?i)^\s*--\s*shardfill\s*:`)
)

// engineNames are the names the engine binds, with their places: slice,
// then and remaining run within a slice; a job planned by months binds
// its piece to plan and bounds, a batch's slices to batch, the run's range
// and watermark to finish, and a month to verify.
var engineNames = map[string]bool{
	"lo": true, "hi": true, "shard": true,
	"from": true, "to": true, "slice_rows": true, "piece_rows": true,
	"shards": true, "los": true, "his": true, "read_from": true, "watermark": true,
}

// sliceNames are the engine's names of one slice.
var sliceNames = map[string]bool{"lo": true, "hi": true, "shard": true}

// monthNames are the engine's names each section of a job planned by
// months may use, beside the slice's.
var monthNames = map[string][]string{
	"plan":   {"from", "to", "slice_rows"},
	"bounds": {"from", "piece_rows"},
	"batch":  {"shards", "los", "his", "lo", "hi", "read_from", "watermark"},
	"finish": {"watermark", "from"},
	"verify": {"from", "to"},
}

// sectionKind is a section's name without its argument ("batch by-shard" ->
// "batch").
func sectionKind(section string) string {
	if i := strings.IndexByte(section, ' '); i >= 0 {
		return section[:i]
	}
	return section
}

const directivePrefix = "-- shardfill:"

// Load reads and parses the job file at path.
func Load(path string) (*File, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, src)
}

type parser struct {
	path string
	f    *File
	// the section being read
	cur       *Section
	curText   []string
	curFirst  int // line of the first text line
	sections  map[string]*Section
	seen      map[string]int // header directive -> line
	sliceArgs string
	order     []string // section names as they appear
}

func (p *parser) errf(section string, line int, format string, args ...any) error {
	return &Error{Path: p.path, Section: section, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// Parse parses a job file's source; path is only used in messages.
func Parse(path string, src []byte) (*File, error) {
	p := &parser{path: path, f: &File{Path: path}, sections: map[string]*Section{}, seen: map[string]int{}}
	lines := strings.Split(string(src), "\n")
	for i, raw := range lines {
		n := i + 1
		line := strings.TrimRight(raw, "\r")
		trimmed := strings.TrimLeft(line, " \t")
		if strings.HasPrefix(trimmed, directivePrefix) {
			if err := p.endSection(); err != nil {
				return nil, err
			}
			if err := p.directive(n, strings.TrimSpace(trimmed[len(directivePrefix):])); err != nil {
				return nil, err
			}
			continue
		}
		if nearDirectiveRe.MatchString(line) {
			return nil, p.errf(p.curName(), n, "malformed directive %q: write it as \"-- shardfill:<name> ...\"", strings.TrimSpace(line))
		}
		if p.cur != nil {
			if len(p.curText) == 0 {
				p.curFirst = n
			}
			p.curText = append(p.curText, line)
			continue
		}
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "--") {
			return nil, p.errf("", n, "SQL outside a section (only -- comments may stand between header directives; start a section such as -- shardfill:slice first)")
		}
	}
	if err := p.endSection(); err != nil {
		return nil, err
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	return p.f, nil
}

func (p *parser) curName() string {
	if p.cur == nil {
		return ""
	}
	return p.cur.Name
}

func (p *parser) directive(n int, rest string) error {
	var word, args string
	if i := strings.IndexAny(rest, " \t"); i >= 0 {
		word, args = rest[:i], strings.TrimSpace(rest[i+1:])
	} else {
		word, args = rest, ""
	}
	if word == "" {
		return p.errf("", n, "directive without a name after \"-- shardfill:\"")
	}
	switch word {
	case "plan", "bounds", "slice", "batch", "then", "finish", "verify", "extent", "remaining", "dry-run", "check", "fact":
		name, err := p.sectionName(n, word, args)
		if err != nil {
			return err
		}
		if first, ok := p.sections[name]; ok {
			return p.errf(name, n, "duplicate section %s (first on line %d)", name, first.Line)
		}
		s := &Section{Name: name, Line: n}
		p.sections[name] = s
		p.order = append(p.order, name)
		p.cur, p.curText = s, nil
		return nil
	case "job", "description", "lock", "tables", "split":
		if first, ok := p.seen[word]; ok {
			return p.errf("", n, "duplicate -- shardfill:%s (first on line %d)", word, first)
		}
		p.seen[word] = n
	case "param":
	default:
		return p.errf("", n, "unknown directive -- shardfill:%s (directives: job, description, param, lock, tables, split; sections: %s)", word, strings.Join(sectionOrder, ", "))
	}
	switch word {
	case "job":
		if !jobNameRe.MatchString(args) {
			return p.errf("", n, "job name %q: want lower-case letters, digits and '-', starting with a letter, at most 63 characters", args)
		}
		p.f.Name = args
	case "description":
		if args == "" {
			return p.errf("", n, "empty description")
		}
		p.f.Description = args
	case "param":
		return p.param(n, args)
	case "lock":
		return p.lock(n, args)
	case "tables":
		return p.tables(n, args)
	case "split":
		return p.split(n, args)
	}
	return nil
}

// sectionName checks a section directive's options and returns the
// section's name: the word, with the path of a batch form or the name of
// a fact.
func (p *parser) sectionName(n int, word, args string) (string, error) {
	switch word {
	case "slice":
		p.sliceArgs = args
		return word, p.sliceOptions(n, args)
	case "plan":
		switch strings.ToLower(args) {
		case "":
		case "months":
			p.f.PlanMonths = true
		default:
			return "", p.errf(word, n, "unknown plan option %q (the one option is months)", args)
		}
		return word, nil
	case "batch":
		if args == "" {
			return word, nil
		}
		for _, path := range BatchPaths {
			if strings.EqualFold(args, path) {
				return word + " " + path, nil
			}
		}
		return "", p.errf(word, n, "unknown batch path %q (paths: %s)", args, strings.Join(BatchPaths, ", "))
	case "fact":
		if !paramNameRe.MatchString(args) {
			return "", p.errf(word, n, "fact needs a name of lower-case letters, digits and '_' (got %q)", args)
		}
		return word + " " + args, nil
	}
	if args != "" {
		return "", p.errf(word, n, "section %s takes no options (got %q)", word, args)
	}
	return word, nil
}

func (p *parser) sliceOptions(n int, args string) error {
	toks := strings.Fields(args)
	maxStalls := -1
	for i := 0; i < len(toks); i++ {
		switch strings.ToLower(toks[i]) {
		case "repeat":
			if p.f.Repeat {
				return p.errf("slice", n, "repeat given twice")
			}
			p.f.Repeat = true
		case "max-stalls":
			if maxStalls >= 0 {
				return p.errf("slice", n, "max-stalls given twice")
			}
			if i+1 >= len(toks) {
				return p.errf("slice", n, "max-stalls needs a number")
			}
			v, err := strconv.Atoi(toks[i+1])
			if err != nil || v <= 0 {
				return p.errf("slice", n, "max-stalls %q: want a positive integer", toks[i+1])
			}
			maxStalls = v
			i++
		default:
			return p.errf("slice", n, "unknown slice option %q (options: repeat, max-stalls N)", toks[i])
		}
	}
	if maxStalls >= 0 && !p.f.Repeat {
		return p.errf("slice", n, "max-stalls is only meaningful with repeat")
	}
	if p.f.Repeat {
		p.f.MaxStalls = 5
		if maxStalls >= 0 {
			p.f.MaxStalls = maxStalls
		}
	}
	return nil
}

// paramTokens splits a param line's words; a word in single quotes may
// hold spaces (” is a quote inside).
func paramTokens(s string) (toks []string, quoted []bool, err error) {
	i := 0
	for i < len(s) {
		if isSpaceRune(rune(s[i])) {
			i++
			continue
		}
		if s[i] == '\'' {
			var b strings.Builder
			j := i + 1
			closed := false
			for j < len(s) {
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					closed = true
					j++
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if !closed {
				return nil, nil, fmt.Errorf("unterminated quoted value")
			}
			toks, quoted = append(toks, b.String()), append(quoted, true)
			i = j
			continue
		}
		j := i
		for j < len(s) && !isSpaceRune(rune(s[j])) {
			j++
		}
		toks, quoted = append(toks, s[i:j]), append(quoted, false)
		i = j
	}
	return toks, quoted, nil
}

func (p *parser) param(n int, args string) error {
	toks, quoted, err := paramTokens(args)
	if err != nil {
		return p.errf("", n, "param: %v", err)
	}
	if len(toks) < 2 || quoted[0] || quoted[1] {
		return p.errf("", n, "param: want \"<name> <type> [required | default <value>] [past]\"")
	}
	pr := Param{Name: toks[0], Line: n}
	if !paramNameRe.MatchString(pr.Name) {
		return p.errf("", n, "param name %q: want lower-case letters, digits and '_', not starting with a digit", pr.Name)
	}
	if engineNames[pr.Name] {
		return p.errf("", n, "param name %q is one of the engine's names (lo, hi, shard)", pr.Name)
	}
	for _, q := range p.f.Params {
		if q.Name == pr.Name {
			return p.errf("", n, "duplicate param %s (first on line %d)", pr.Name, q.Line)
		}
	}
	t, ok := paramTypes[strings.ToLower(toks[1])]
	if !ok {
		return p.errf("", n, "param %s: unknown type %q (types: timestamptz, uuid, bigint, text, boolean)", pr.Name, toks[1])
	}
	pr.Type = t
	hasDefault := false
	for i := 2; i < len(toks); i++ {
		w := strings.ToLower(toks[i])
		if quoted[i] {
			w = "'" + toks[i] + "'"
		}
		switch w {
		case "required":
			if pr.Required {
				return p.errf("", n, "param %s: required given twice", pr.Name)
			}
			pr.Required = true
		case "past":
			if pr.Past {
				return p.errf("", n, "param %s: past given twice", pr.Name)
			}
			pr.Past = true
		case "default":
			if hasDefault {
				return p.errf("", n, "param %s: default given twice", pr.Name)
			}
			if i+1 >= len(toks) {
				return p.errf("", n, "param %s: default needs a value (quote it in '...' to hold spaces)", pr.Name)
			}
			hasDefault = true
			i++
			if !quoted[i] && strings.EqualFold(toks[i], "null") {
				pr.Default = nil
			} else {
				v := toks[i]
				if _, err := normalise(t, v); err != nil {
					return p.errf("", n, "param %s: default %q: %v", pr.Name, v, err)
				}
				pr.Default = &v
			}
		default:
			return p.errf("", n, "param %s: unknown option %q (options: required, default <value>, past)", pr.Name, toks[i])
		}
	}
	if pr.Required && hasDefault {
		return p.errf("", n, "param %s: required and default exclude each other", pr.Name)
	}
	if pr.Past && t != Timestamptz {
		return p.errf("", n, "param %s: past is only for timestamptz", pr.Name)
	}
	p.f.Params = append(p.f.Params, pr)
	return nil
}

// balanced reports whether the parentheses of the code in s balance and s
// holds no semicolon outside quotes.
func balanced(s string) error {
	spans, err := lex(s)
	if err != nil {
		return err
	}
	depth := 0
	for _, sp := range spans {
		if sp.kind != kCode {
			continue
		}
		for _, c := range s[sp.start:sp.end] {
			switch c {
			case '(':
				depth++
			case ')':
				depth--
				if depth < 0 {
					return fmt.Errorf("unbalanced parentheses")
				}
			case ';':
				return fmt.Errorf("';' is not allowed here")
			}
		}
	}
	if depth != 0 {
		return fmt.Errorf("unbalanced parentheses")
	}
	return nil
}

func (p *parser) lock(n int, args string) error {
	toks := strings.Fields(args)
	var mode, check, yield string
	end := len(toks)
	for end > 0 {
		w := strings.ToLower(toks[end-1])
		var slot *string
		switch w {
		case "shared", "exclusive":
			slot = &mode
		case "check", "nocheck":
			slot = &check
		case "yield", "noyield":
			slot = &yield
		}
		if slot == nil {
			break
		}
		if *slot != "" {
			return p.errf("", n, "lock: %s and %s given together", w, *slot)
		}
		*slot = w
		end--
	}
	// The key is the text before the option words, as written.
	key := args
	for i := len(toks); i > end; i-- {
		key = strings.TrimSpace(key[:strings.LastIndex(key, toks[i-1])])
	}
	if key == "" {
		return p.errf("", n, "lock: want \"<key expression> [shared|exclusive] [check|nocheck] [yield|noyield]\"")
	}
	if err := balanced(key); err != nil {
		return p.errf("", n, "lock key %q: %v", key, err)
	}
	refs, err := scanRefs(key)
	if err != nil {
		return p.errf("", n, "lock key %q: %v", key, err)
	}
	if len(refs) > 0 {
		return p.errf("", n, "lock key %q: placeholders are not allowed in the key", key)
	}
	p.f.Lock = &Lock{Key: key, Exclusive: mode == "exclusive", Check: check != "nocheck", Yield: yield != "noyield", Line: n}
	return nil
}

func (p *parser) tables(n int, args string) error {
	seen := map[string]bool{}
	for _, t := range strings.Split(args, ",") {
		t = strings.TrimSpace(t)
		if !tableRe.MatchString(t) {
			return p.errf("", n, "tables: %q is not a table name (want name or schema.name, comma separated)", t)
		}
		if seen[t] {
			return p.errf("", n, "tables: %s listed twice", t)
		}
		seen[t] = true
		p.f.Tables = append(p.f.Tables, t)
	}
	return nil
}

func (p *parser) split(n int, args string) error {
	key, rest := args, ""
	if i := strings.IndexAny(args, " \t"); i >= 0 {
		key, rest = args[:i], strings.TrimSpace(args[i+1:])
	}
	m := splitKeyRe.FindStringSubmatch(key)
	if m == nil {
		return p.errf("", n, "split: %q: want <table>.<column> (table may be schema-qualified)", key)
	}
	sp := &Split{Table: m[1], Column: m[2], Rows: 5000, Line: n}
	if f := strings.Fields(rest); len(f) >= 2 && strings.EqualFold(f[len(f)-2], "rows") {
		v, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil || v <= 0 {
			return p.errf("", n, "split: rows %q: want a positive integer", f[len(f)-1])
		}
		sp.Rows = v
		i := strings.LastIndex(rest, f[len(f)-2])
		rest = strings.TrimSpace(rest[:i])
	}
	if rest != "" {
		w, cond := rest, ""
		if i := strings.IndexAny(rest, " \t"); i >= 0 {
			w, cond = rest[:i], strings.TrimSpace(rest[i+1:])
		}
		if !strings.EqualFold(w, "where") {
			return p.errf("", n, "split: unexpected %q (want [where <condition>] [rows <N>])", rest)
		}
		if cond == "" {
			return p.errf("", n, "split: where needs a condition")
		}
		if strings.HasSuffix(cond, ",") {
			return p.errf("", n, "split: the where condition ends with ','; write \"where <condition> rows <N>\" without a comma")
		}
		if err := balanced(cond); err != nil {
			return p.errf("", n, "split: where %q: %v", cond, err)
		}
		sp.Where = cond
	}
	p.f.Split = sp
	return nil
}

// endSection turns the current section's text into statements.
func (p *parser) endSection() error {
	s := p.cur
	if s == nil {
		return nil
	}
	text := strings.Join(p.curText, "\n")
	p.cur, p.curText = nil, nil
	stmts, offs, err := splitStatements(text)
	if err != nil {
		le := err.(*lexError)
		return p.errf(s.Name, lineOf(text, le.off, p.curFirst), "%s", le.msg)
	}
	for i, sql := range stmts {
		s.Statements = append(s.Statements, Statement{SQL: sql, Line: lineOf(text, offs[i], p.curFirst)})
	}
	if len(s.Statements) == 0 {
		return p.errf(s.Name, s.Line, "section %s holds no statement", s.Name)
	}
	if k := sectionKind(s.Name); len(s.Statements) > 1 && k != "finish" && k != "then" && k != "batch" {
		return p.errf(s.Name, s.Statements[1].Line, "section %s holds %d statements; only finish, then and batch may hold several", s.Name, len(s.Statements))
	}
	return nil
}

func (p *parser) finish() error {
	f := p.f
	if f.Name == "" {
		return p.errf("", 1, "missing -- shardfill:job <name>")
	}
	jobLine := p.seen["job"]
	if len(f.Tables) == 0 {
		return p.errf("", jobLine, "missing -- shardfill:tables <table>[, <table>...] (the tables the job writes)")
	}
	plan := p.sections["plan"]
	switch {
	case f.Split != nil && plan != nil:
		return p.errf("", max(f.Split.Line, plan.Line), "both -- shardfill:split (line %d) and -- shardfill:plan (line %d): a job has exactly one", f.Split.Line, plan.Line)
	case f.Split == nil && plan == nil:
		return p.errf("", jobLine, "missing -- shardfill:split or -- shardfill:plan: the job must say how it is sliced")
	}
	slice := p.sections["slice"]
	f.Batches = map[string]*Section{}
	for _, name := range p.order {
		switch sectionKind(name) {
		case "batch":
			f.Batches[strings.TrimPrefix(strings.TrimPrefix(name, "batch"), " ")] = p.sections[name]
		case "fact":
			f.Facts = append(f.Facts, p.sections[name])
		}
	}
	if err := p.checkShape(slice, plan); err != nil {
		return err
	}
	f.Plan = plan
	if slice != nil {
		f.Slice = *slice
	}
	f.Then = p.sections["then"]
	f.Finish = p.sections["finish"]
	f.Verify = p.sections["verify"]
	f.Remaining = p.sections["remaining"]
	f.DryRun = p.sections["dry-run"]
	f.Bounds = p.sections["bounds"]
	f.Extent = p.sections["extent"]
	f.Check = p.sections["check"]

	if f.Split != nil && f.Split.Where != "" {
		if err := p.checkRefs("", Statement{SQL: f.Split.Where, Line: f.Split.Line}, false, "split's where"); err != nil {
			return err
		}
	}
	for _, l := range f.All() {
		if err := p.checkRefs(l.Section, l.Statement, true, ""); err != nil {
			return err
		}
	}
	if f.Split != nil && slice != nil {
		if !usesInRange(f.Slice.Statements[0].SQL) {
			return p.errf("slice", f.Slice.Statements[0].Line, "the slice statement of a split job must restrict its rows with shardfill.in_range(%s)", f.Split.Column)
		}
		// A remaining that ignores the slice's range counts every other
		// slice's rows too: no slice would ever be done.
		if r := f.Remaining; r != nil && !usesInRange(r.Statements[0].SQL) {
			return p.errf("remaining", r.Statements[0].Line, "the remaining query of a split job must count only the slice's rows: restrict it with shardfill.in_range(%s) (compiled for the whole job it reads TRUE)", f.Split.Column)
		}
	}
	f.Version = f.Name + "-" + f.digest()
	return nil
}

// checkShape checks which sections go together: a job does its work with
// a slice section or with batch forms (which need a plan by months, whose
// windows they read together); a plan by months needs its bounds.
func (p *parser) checkShape(slice, plan *Section) error {
	f := p.f
	jobLine := p.seen["job"]
	section := func(name string) *Section { return p.sections[name] }
	if len(f.Batches) == 0 {
		if slice == nil {
			return p.errf("", jobLine, "missing section -- shardfill:slice")
		}
		if f.Repeat && section("remaining") == nil {
			return p.errf("slice", slice.Line, "slice repeat needs a -- shardfill:remaining section (how many rows are still to do)")
		}
	} else {
		b := f.firstBatch()
		switch {
		case slice != nil:
			return p.errf("slice", slice.Line, "a job has a slice section or batch forms (line %d), not both", b.Line)
		case !f.PlanMonths:
			return p.errf(b.Name, b.Line, "batch forms need -- shardfill:plan months: a batch reads the slices of one window together")
		case section("then") != nil:
			return p.errf("then", section("then").Line, "then runs after a slice statement; a batch form holds all of a batch's statements")
		case section("remaining") != nil:
			return p.errf("remaining", section("remaining").Line, "remaining is for a repeated slice statement; a batch job has none")
		case f.Batches["by-window"] != nil && f.Batches["by-shard"] == nil && f.Batches["by-range"] == nil:
			return p.errf("batch by-window", f.Batches["by-window"].Line, "batch by-window serves only batches of one window; give a by-shard or by-range form for the others")
		}
	}
	switch {
	case f.PlanMonths && section("bounds") == nil:
		return p.errf("plan", plan.Line, "plan months needs a -- shardfill:bounds section (where the months start and stop)")
	case !f.PlanMonths && section("bounds") != nil:
		return p.errf("bounds", section("bounds").Line, "bounds is for a plan by months (-- shardfill:plan months)")
	case !f.PlanMonths && section("extent") != nil:
		return p.errf("extent", section("extent").Line, "extent is for a plan by months (-- shardfill:plan months), whose verify runs month by month")
	case f.PlanMonths && section("verify") != nil && section("extent") == nil:
		return p.errf("verify", section("verify").Line, "the verify of a plan by months runs month by month over the job's extent: add a -- shardfill:extent section")
	}
	return nil
}

// firstBatch is the batch form that comes first in the file.
func (f *File) firstBatch() *Section {
	var first *Section
	for _, b := range f.Batches {
		if first == nil || b.Line < first.Line {
			first = b
		}
	}
	return first
}

// Batch is the statements of a batch read along path ("by-shard",
// "by-range", "by-window"; see BatchPaths): the plain batch section's,
// then those of the path's form, else of the nearest (by-window falls
// back to by-range, and by-range and by-shard to each other). Nil when
// the job has no batch sections.
func (f *File) Batch(path string) []Statement {
	var out []Statement
	if b := f.Batches[""]; b != nil {
		out = append(out, b.Statements...)
	}
	if form := f.batchForm(path); form != nil {
		out = append(out, form.Statements...)
	}
	return out
}

// batchForm is the form of path, or the nearest one.
func (f *File) batchForm(path string) *Section {
	order := map[string][]string{
		"by-window": {"by-window", "by-range", "by-shard"},
		"by-range":  {"by-range", "by-shard"},
		"by-shard":  {"by-shard", "by-range"},
	}[path]
	for _, p := range order {
		if b := f.Batches[p]; b != nil {
			return b
		}
	}
	return nil
}

func usesInRange(sql string) bool {
	refs, _ := scanRefs(sql)
	for _, r := range refs {
		if r.kind == refInRange {
			return true
		}
	}
	return false
}

// checkRefs checks the placeholders of one statement against the rules of
// its section. what names the place in messages when it is not a section.
func (p *parser) checkRefs(section string, st Statement, isSection bool, what string) error {
	if what == "" {
		what = "section " + section
	}
	refs, err := scanRefs(st.SQL)
	if err != nil {
		le := err.(*lexError)
		return p.errf(section, lineOf(st.SQL, le.off, st.Line), "%s", le.msg)
	}
	k := sectionKind(section)
	// Where the slice's names are bound at all.
	sliceScoped := isSection && (k == "slice" || k == "then" || k == "remaining")
	monthScoped := map[string]bool{}
	if isSection && p.f.PlanMonths {
		for _, name := range monthNames[k] {
			monthScoped[name] = true
		}
	}
	split := p.f.Split != nil
	var bad error
	walkRefs(refs, func(r ref) {
		if bad != nil {
			return
		}
		line := lineOf(st.SQL, r.start, st.Line)
		switch {
		case r.kind == refIf && p.sections["fact "+r.name] == nil:
			bad = p.errf(section, line, "shardfill.if(%s, ...): the job has no -- shardfill:fact %s", r.name, r.name)
		case r.kind == refIf:
		case r.kind == refInRange && !sliceScoped:
			bad = p.errf(section, line, "shardfill.in_range is not allowed in the %s: only slice, then and remaining run within a slice", what)
		case r.kind == refInRange:
		case monthScoped[r.name]:
		case sliceNames[r.name] && !sliceScoped, engineNames[r.name] && !sliceNames[r.name]:
			bad = p.errf(section, line, "@%s is not bound in the %s (%s)", r.name, what, p.f.boundIn(k))
		case (r.name == "lo" || r.name == "hi") && split:
			bad = p.errf(section, line, "@%s is not allowed in a split job: use shardfill.in_range(%s) so open ends cannot be got wrong", r.name, p.f.Split.Column)
		case r.name == "shard" && split:
			bad = p.errf(section, line, "@shard is not bound in a split job (its slices are key ranges of %s.%s, without a shard)", p.f.Split.Table, p.f.Split.Column)
		case engineNames[r.name]:
		case p.f.param(r.name) == nil:
			bad = p.errf(section, line, "unknown parameter @%s (%s)", r.name, p.f.declared())
		}
	})
	return bad
}

// boundIn says which of the engine's names a section of kind k binds.
func (f *File) boundIn(k string) string {
	var names []string
	switch {
	case k == "slice" || k == "then" || k == "remaining":
		names = []string{"lo", "hi", "shard"}
	case f.PlanMonths:
		names = monthNames[k]
	}
	if len(names) == 0 {
		return "it binds none of the engine's names, only the job's parameters"
	}
	return "its engine names are @" + strings.Join(names, ", @")
}

func (f *File) param(name string) *Param {
	for i := range f.Params {
		if f.Params[i].Name == name {
			return &f.Params[i]
		}
	}
	return nil
}

func (f *File) declared() string {
	if len(f.Params) == 0 {
		return "the job declares no parameters; the engine's names are @lo, @hi, @shard"
	}
	var names []string
	for _, p := range f.Params {
		names = append(names, "@"+p.Name)
	}
	return "declared: " + strings.Join(names, ", ") + "; the engine's names are @lo, @hi, @shard"
}

// All lists every statement with its section name, sections in the order
// plan, bounds, slice, batch (plain, by-shard, by-range, by-window), then,
// finish, verify, extent, remaining, dry-run, check, fact (in file order).
func (f *File) All() []Located {
	var out []Located
	for _, s := range f.sectionList() {
		for _, st := range s.Statements {
			out = append(out, Located{Section: s.Name, Statement: st})
		}
	}
	return out
}

// sectionList is the file's sections in the order All lists them.
func (f *File) sectionList() []*Section {
	var out []*Section
	add := func(s *Section) {
		if s != nil {
			out = append(out, s)
		}
	}
	for _, name := range sectionOrder {
		switch name {
		case "batch":
			add(f.Batches[""])
			for _, p := range BatchPaths {
				add(f.Batches[p])
			}
		case "fact":
			out = append(out, f.Facts...)
		default:
			add(f.section(name))
		}
	}
	return out
}

func (f *File) section(name string) *Section {
	switch name {
	case "plan":
		return f.Plan
	case "bounds":
		return f.Bounds
	case "slice":
		if f.Slice.Name == "" {
			return nil
		}
		return &f.Slice
	case "then":
		return f.Then
	case "finish":
		return f.Finish
	case "verify":
		return f.Verify
	case "extent":
		return f.Extent
	case "remaining":
		return f.Remaining
	case "dry-run":
		return f.DryRun
	case "check":
		return f.Check
	}
	return nil
}

// digest hashes the canonical form of every directive and statement.
func (f *File) digest() string {
	var b strings.Builder
	fmt.Fprintf(&b, "job %s\n", f.Name)
	for _, p := range f.Params {
		fmt.Fprintf(&b, "param %s %s", p.Name, p.Type)
		if p.Required {
			b.WriteString(" required")
		}
		if p.Default != nil {
			fmt.Fprintf(&b, " default %q", *p.Default)
		}
		if p.Past {
			b.WriteString(" past")
		}
		b.WriteByte('\n')
	}
	if l := f.Lock; l != nil {
		fmt.Fprintf(&b, "lock %q exclusive=%t check=%t yield=%t\n", canonical(l.Key), l.Exclusive, l.Check, l.Yield)
	}
	fmt.Fprintf(&b, "tables %q\n", f.Tables)
	if s := f.Split; s != nil {
		fmt.Fprintf(&b, "split %q %q where %q rows %d\n", s.Table, s.Column, canonical(s.Where), s.Rows)
	}
	fmt.Fprintf(&b, "slice repeat=%t max-stalls=%d\n", f.Repeat, f.MaxStalls)
	if f.PlanMonths {
		b.WriteString("plan months\n")
	}
	for _, s := range f.sectionList() {
		fmt.Fprintf(&b, "section %s\n", s.Name)
		for _, st := range s.Statements {
			fmt.Fprintf(&b, "statement %q\n", canonical(st.SQL))
		}
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])[:12]
}
