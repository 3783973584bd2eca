package jobfile

import (
	"fmt"
	"strings"
)

// kind is the lexical class of a span of SQL text.
type kind int

const (
	kCode         kind = iota // plain SQL: keywords, identifiers, operators, whitespace
	kString                   // '...', E'...' (also the prefix letters stay code)
	kQuotedIdent              // "..."
	kDollar                   // $$...$$ or $tag$...$tag$
	kLineComment              // -- ... (up to, not including, the newline)
	kBlockComment             // /* ... */ (nested, as PostgreSQL does)
)

type span struct {
	kind       kind
	start, end int // byte offsets, end exclusive
}

// lexError is an unterminated string, identifier, dollar quote or comment;
// off is the byte offset where it starts.
type lexError struct {
	off int
	msg string
}

func (e *lexError) Error() string { return e.msg }

// closeQuote finds the end of the quoted text that opens with q at
// s[i]: the index after its closing quote, a doubled quote standing for
// itself (and, with backslash, a backslash escaping the next byte).
// closed is false when s ends first.
func closeQuote(s string, i int, q byte, backslash bool) (end int, closed bool) {
	j := i + 1
	for j < len(s) {
		switch {
		case backslash && s[j] == '\\':
			j += 2
		case s[j] != q:
			j++
		case j+1 < len(s) && s[j+1] == q:
			j += 2
		default:
			return j + 1, true
		}
	}
	return j, false
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentChar(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$'
}

// lex cuts s into spans the way PostgreSQL's scanner sees quoting: code,
// string literals, quoted identifiers, dollar-quoted strings and comments.
// Consecutive code characters form one code span.
func lex(s string) ([]span, error) {
	var out []span
	codeStart := 0
	flush := func(i int) {
		if i > codeStart {
			out = append(out, span{kCode, codeStart, i})
		}
	}
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			flush(i)
			j := strings.IndexByte(s[i:], '\n')
			end := len(s)
			if j >= 0 {
				end = i + j
			}
			out = append(out, span{kLineComment, i, end})
			i, codeStart = end, end
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			flush(i)
			depth, j := 1, i+2
			for j < len(s) && depth > 0 {
				switch {
				case s[j] == '/' && j+1 < len(s) && s[j+1] == '*':
					depth++
					j += 2
				case s[j] == '*' && j+1 < len(s) && s[j+1] == '/':
					depth--
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return nil, &lexError{i, "unterminated /* comment"}
			}
			out = append(out, span{kBlockComment, i, j})
			i, codeStart = j, j
		case c == '\'':
			flush(i)
			// E'...' (and e'...') strings take backslash escapes; the E
			// itself must start a token.
			backslash := i >= 1 && (s[i-1] == 'e' || s[i-1] == 'E') && (i < 2 || !isIdentChar(s[i-2]))
			j, closed := closeQuote(s, i, '\'', backslash)
			if !closed {
				return nil, &lexError{i, "unterminated string literal"}
			}
			out = append(out, span{kString, i, j})
			i, codeStart = j, j
		case c == '"':
			flush(i)
			j, closed := closeQuote(s, i, '"', false)
			if !closed {
				return nil, &lexError{i, "unterminated quoted identifier"}
			}
			out = append(out, span{kQuotedIdent, i, j})
			i, codeStart = j, j
		case c == '$' && (i == 0 || !isIdentChar(s[i-1])):
			tag, ok := dollarTag(s[i:])
			if !ok {
				i++ // $1 and friends: code
				continue
			}
			flush(i)
			k := strings.Index(s[i+len(tag):], tag)
			if k < 0 {
				return nil, &lexError{i, fmt.Sprintf("unterminated dollar-quoted string %s", tag)}
			}
			end := i + len(tag) + k + len(tag)
			out = append(out, span{kDollar, i, end})
			i, codeStart = end, end
		default:
			i++
		}
	}
	flush(len(s))
	return out, nil
}

// dollarTag returns the opening tag ($$ or $name$) at the start of s.
func dollarTag(s string) (string, bool) {
	if len(s) < 2 || s[0] != '$' {
		return "", false
	}
	if s[1] == '$' {
		return "$$", true
	}
	if !isIdentStart(s[1]) {
		return "", false
	}
	j := 2
	for j < len(s) && s[j] != '$' {
		if !isIdentChar(s[j]) {
			return "", false
		}
		j++
	}
	if j >= len(s) {
		return "", false
	}
	return s[:j+1], true
}

// splitStatements cuts s on the semicolons of code spans. Each piece is
// trimmed of leading and trailing whitespace and comments; pieces with
// nothing left are dropped. It returns the byte offset of each piece in s.
func splitStatements(s string) ([]string, []int, error) {
	spans, err := lex(s)
	if err != nil {
		return nil, nil, err
	}
	var stmts []string
	var offs []int
	first, last := -1, -1 // significant bytes of the current piece
	emit := func() {
		if first >= 0 {
			stmts = append(stmts, s[first:last])
			offs = append(offs, first)
		}
		first, last = -1, -1
	}
	mark := func(a, b int) {
		if first < 0 {
			first = a
		}
		last = b
	}
	for _, sp := range spans {
		switch sp.kind {
		case kLineComment, kBlockComment:
			continue
		case kCode:
			i := sp.start
			for i < sp.end {
				c := s[i]
				switch {
				case c == ';':
					emit()
				case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
				default:
					mark(i, i+1)
				}
				i++
			}
		default:
			mark(sp.start, sp.end)
		}
	}
	emit()
	return stmts, offs, nil
}

// canonical is s without comments, with every run of whitespace outside
// quotes made one space: the form the version is computed over, so an
// edited comment or re-indented statement keeps the job's version.
func canonical(s string) string {
	spans, err := lex(s)
	if err != nil {
		return s
	}
	var b strings.Builder
	space := false
	put := func(str string) {
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteString(str)
	}
	for _, sp := range spans {
		switch sp.kind {
		case kLineComment, kBlockComment:
			space = true
		case kCode:
			text := s[sp.start:sp.end]
			if len(text) > 0 && isSpaceRune(rune(text[0])) {
				space = true
			}
			fields := strings.FieldsFunc(text, isSpaceRune)
			for k, f := range fields {
				if k > 0 {
					space = true
				}
				put(f)
			}
			if len(text) > 0 && isSpaceRune(rune(text[len(text)-1])) {
				space = true
			}
		default:
			put(s[sp.start:sp.end])
		}
	}
	return b.String()
}

func isSpaceRune(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v'
}

// Verb is the first keyword of a statement, upper case, comments skipped
// ("INSERT", "UPDATE", "SET", "WITH", ...).
func Verb(sql string) string {
	f := strings.Fields(canonical(sql))
	if len(f) == 0 {
		return ""
	}
	w := f[0]
	if i := strings.IndexAny(w, "(;"); i >= 0 {
		w = w[:i]
	}
	return strings.ToUpper(w)
}

// Code is a statement's code alone: comments dropped, whitespace outside
// quotes collapsed (what the version hashes).
func Code(sql string) string { return canonical(sql) }
