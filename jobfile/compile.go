package jobfile

import (
	"fmt"
	"strconv"
	"strings"
)

// Scope says how the engine's names are bound when a statement is compiled.
type Scope struct {
	// Whole: over the whole job (remaining or verify of a run):
	// in_range(x) -> TRUE; @lo, @hi, @shard -> NULL.
	Whole bool
	// A slice open below / above: in_range(x) -> ((x) < $hi) /
	// ((x) >= $lo) / TRUE when both; else ((x) >= $lo AND (x) < $hi).
	LoOpen, HiOpen bool
}

// Compiled is a statement ready to send: SQL with $1..$n, Names[k-1] the
// name bound to $k (a parameter, or lo, hi, shard).
type Compiled struct {
	SQL   string
	Names []string
	Line  int // the file line where SQL starts
}

// LineAt maps a 1-based character position in c.SQL (as in
// pgconn.PgError.Position) to a line of the job file. Compile keeps every
// newline of the statement, so the mapping is exact up to the line.
func (c Compiled) LineAt(pos int) int {
	line := c.Line
	n := 1
	for _, r := range c.SQL {
		if n >= pos {
			break
		}
		if r == '\n' {
			line++
		}
		n++
	}
	return line
}

type compiler struct {
	f                  *File
	keyType, shardType Type
	scope              Scope
	facts              map[string]bool
	index              map[string]int
	names              []string
}

func (c *compiler) typeOf(name string) Type {
	switch name {
	case "lo", "hi":
		return c.keyType
	case "shard":
		return c.shardType
	case "from", "to", "read_from", "watermark":
		return Timestamptz
	case "slice_rows", "piece_rows":
		return Bigint
	case "shards":
		return c.shardType + "[]"
	case "los", "his":
		return c.keyType + "[]"
	}
	return c.f.param(name).Type
}

func castTo(expr string, t Type) string {
	if t == "" {
		return expr
	}
	return expr + "::" + string(t)
}

// bind returns the text that replaces @name.
func (c *compiler) bind(name string) string {
	if c.scope.Whole && sliceNames[name] {
		return castTo("NULL", c.typeOf(name))
	}
	k, ok := c.index[name]
	if !ok {
		c.names = append(c.names, name)
		k = len(c.names)
		c.index[name] = k
	}
	return castTo("$"+strconv.Itoa(k), c.typeOf(name))
}

// Compile rewrites one statement for the engine: every distinct @name
// becomes $k::<type> (one $k per name, numbered in order of first use;
// parameters cast to their declared type, lo and hi to keyType, shard to
// shardType, no cast for ""), and shardfill.in_range(x) becomes the range
// test the scope calls for. Newlines are kept, so positions map back to
// file lines (LineAt). keyType and shardType may be any PostgreSQL type
// name.
func (f *File) Compile(st Statement, keyType, shardType Type, scope Scope) (Compiled, error) {
	return f.CompileFacts(st, keyType, shardType, scope, nil)
}

// CompileFacts is Compile with the answers to the job's facts, which
// choose each shardfill.if(fact, a, b): a where the fact holds, else b.
func (f *File) CompileFacts(st Statement, keyType, shardType Type, scope Scope, facts map[string]bool) (Compiled, error) {
	refs, err := scanRefs(st.SQL)
	if err != nil {
		le := err.(*lexError)
		return Compiled{}, &Error{Path: f.Path, Line: lineOf(st.SQL, le.off, st.Line), Msg: le.msg}
	}
	var bad error
	walkRefs(refs, func(r ref) {
		if bad == nil && r.kind == refName && !engineNames[r.name] && f.param(r.name) == nil {
			bad = &Error{Path: f.Path, Line: lineOf(st.SQL, r.start, st.Line), Msg: fmt.Sprintf("unknown parameter @%s (%s)", r.name, f.declared())}
		}
	})
	if bad != nil {
		return Compiled{}, bad
	}
	c := &compiler{f: f, keyType: keyType, shardType: shardType, scope: scope, facts: facts, index: map[string]int{}}
	out, err := c.render(st.SQL, 0, len(st.SQL), refs)
	if err != nil {
		return Compiled{}, &Error{Path: f.Path, Line: st.Line, Msg: err.Error()}
	}
	return Compiled{SQL: out, Names: c.names, Line: st.Line}, nil
}

func (c *compiler) render(s string, from, to int, refs []ref) (string, error) {
	var b strings.Builder
	at := from
	for _, r := range refs {
		b.WriteString(s[at:r.start])
		at = r.end
		if r.kind == refName {
			b.WriteString(c.bind(r.name))
			continue
		}
		orig := s[r.start:r.end]
		if r.kind == refIf {
			holds, ok := c.facts[r.name]
			if !ok {
				return "", fmt.Errorf("shardfill.if(%s, ...): the fact has not been asked of the database", r.name)
			}
			ch := r.choice[1]
			if holds {
				ch = r.choice[0]
			}
			text, err := c.render(s, ch.start, ch.end, ch.refs)
			if err != nil {
				return "", err
			}
			b.WriteString(keepLines(text, orig))
			continue
		}
		var core string
		switch {
		case c.scope.Whole || (c.scope.LoOpen && c.scope.HiOpen):
			core = "TRUE"
		default:
			expr, err := c.render(s, r.exprStart, r.exprEnd, r.inner)
			if err != nil {
				return "", err
			}
			switch {
			case c.scope.LoOpen:
				core = "((" + expr + ") < " + c.bind("hi") + ")"
			case c.scope.HiOpen:
				core = "((" + expr + ") >= " + c.bind("lo") + ")"
			default:
				lo := c.bind("lo")
				flat, err := flatten(expr)
				if err != nil {
					return "", err
				}
				core = "((" + expr + ") >= " + lo + " AND (" + flat + ") < " + c.bind("hi") + ")"
			}
		}
		b.WriteString(keepLines(core, orig))
	}
	b.WriteString(s[at:to])
	return b.String(), nil
}

// keepLines pads text with the newlines it lacks of orig, the text it
// replaces, so later positions keep their lines.
func keepLines(text, orig string) string {
	if missing := strings.Count(orig, "\n") - strings.Count(text, "\n"); missing > 0 {
		return text + strings.Repeat("\n", missing)
	}
	return text
}

// flatten is expr on one line: comments and newlines outside quotes become
// spaces. A quoted newline cannot be moved; such an expression is refused.
func flatten(expr string) (string, error) {
	spans, err := lex(expr)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, sp := range spans {
		text := expr[sp.start:sp.end]
		switch sp.kind {
		case kLineComment, kBlockComment:
			b.WriteByte(' ')
		case kCode:
			b.WriteString(strings.Map(func(r rune) rune {
				if r == '\n' || r == '\r' {
					return ' '
				}
				return r
			}, text))
		default:
			if strings.Contains(text, "\n") {
				return "", fmt.Errorf("shardfill.in_range: the key expression holds a quoted newline, which cannot be repeated on one line")
			}
			b.WriteString(text)
		}
	}
	return b.String(), nil
}
