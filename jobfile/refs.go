package jobfile

import (
	"fmt"
	"strings"
)

type refKind int

const (
	refName    refKind = iota // @name
	refInRange                // shardfill.in_range(expr)
)

// ref is one placeholder in a statement's text: an @name, or a
// shardfill.in_range(...) call with the references inside its argument.
type ref struct {
	kind       refKind
	start, end int    // the whole occurrence in the scanned text
	name       string // refName: the name, lower case
	exprStart  int    // refInRange: the argument, between the parentheses
	exprEnd    int
	inner      []ref // refInRange: references inside the argument (offsets in the same text)
}

const inRangeName = "shardfill.in_range"

// scanRefs finds the placeholders of s, outside strings, quoted
// identifiers, dollar quotes and comments. An error carries the byte
// offset it is about.
func scanRefs(s string) ([]ref, error) {
	spans, err := lex(s)
	if err != nil {
		return nil, err
	}
	code := make([]bool, len(s))
	for _, sp := range spans {
		if sp.kind == kCode {
			for i := sp.start; i < sp.end; i++ {
				code[i] = true
			}
		}
	}
	return scanRange(s, code, 0, len(s), false)
}

func isASCIIIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isASCIIIdentChar(c byte) bool {
	return isASCIIIdentStart(c) || (c >= '0' && c <= '9')
}

func scanRange(s string, code []bool, from, to int, nested bool) ([]ref, error) {
	var out []ref
	i := from
	for i < to {
		if !code[i] {
			i++
			continue
		}
		c := s[i]
		switch {
		case c == '@':
			// @name: '@' right before a letter or '_'. '@' that follows
			// '@' or '<' belongs to an operator (@@, <@).
			if i+1 < to && code[i+1] && isASCIIIdentStart(s[i+1]) &&
				!(i > from && code[i-1] && (s[i-1] == '@' || s[i-1] == '<')) {
				j := i + 1
				for j < to && code[j] && isASCIIIdentChar(s[j]) {
					j++
				}
				out = append(out, ref{kind: refName, start: i, end: j, name: strings.ToLower(s[i+1 : j])})
				i = j
				continue
			}
			i++
		case (c == 's' || c == 'S') && (i == 0 || !(code[i-1] && (isIdentChar(s[i-1]) || s[i-1] == '.'))) &&
			i+len("shardfill.") <= to && strings.EqualFold(s[i:i+len("shardfill.")], "shardfill."):
			j := i + len("shardfill.")
			k := j
			for k < to && code[k] && isIdentChar(s[k]) {
				k++
			}
			fn := strings.ToLower(s[j:k])
			for k < to && code[k] && isSpaceRune(rune(s[k])) {
				k++
			}
			if fn != "in_range" {
				if k < to && code[k] && s[k] == '(' {
					return nil, &lexError{i, fmt.Sprintf("unknown function shardfill.%s (the only one is shardfill.in_range)", fn)}
				}
				i = j // a table of a schema named shardfill: plain SQL
				continue
			}
			if nested {
				return nil, &lexError{i, "shardfill.in_range inside shardfill.in_range"}
			}
			if k >= to || !code[k] || s[k] != '(' {
				return nil, &lexError{i, "shardfill.in_range must be followed by (<key expression>)"}
			}
			open := k
			depth := 0
			closeAt := -1
			for m := open; m < to; m++ {
				if !code[m] {
					continue
				}
				if s[m] == '(' {
					depth++
				} else if s[m] == ')' {
					depth--
					if depth == 0 {
						closeAt = m
						break
					}
				}
			}
			if closeAt < 0 {
				return nil, &lexError{i, "shardfill.in_range( has no closing parenthesis"}
			}
			if strings.TrimSpace(canonical(s[open+1:closeAt])) == "" {
				return nil, &lexError{i, "shardfill.in_range() needs the key expression as its argument"}
			}
			inner, err := scanRange(s, code, open+1, closeAt, true)
			if err != nil {
				return nil, err
			}
			out = append(out, ref{kind: refInRange, start: i, end: closeAt + 1, exprStart: open + 1, exprEnd: closeAt, inner: inner})
			i = closeAt + 1
		default:
			i++
		}
	}
	return out, nil
}

// walkRefs calls fn for every reference, those inside in_range too.
func walkRefs(refs []ref, fn func(ref)) {
	for _, r := range refs {
		fn(r)
		walkRefs(r.inner, fn)
	}
}

// lineOf is the line of byte offset off in s, s starting on line first.
func lineOf(s string, off int, first int) int {
	if off > len(s) {
		off = len(s)
	}
	return first + strings.Count(s[:off], "\n")
}
