package jobfile

import (
	"fmt"
	"strings"
)

type refKind int

const (
	refName    refKind = iota // @name
	refInRange                // shardfill.in_range(expr)
	refIf                     // shardfill.if(fact, a, b)
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
	// refIf: name is the fact; the two choices, each with its references.
	choice [2]struct {
		start, end int
		refs       []ref
	}
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
			if fn != "in_range" && fn != "if" {
				if k < to && code[k] && s[k] == '(' {
					return nil, &lexError{i, fmt.Sprintf("unknown function shardfill.%s (there are shardfill.in_range and shardfill.if)", fn)}
				}
				i = j // a table of a schema named shardfill: plain SQL
				continue
			}
			if fn == "if" {
				r, err := scanIf(s, code, i, k, to)
				if err != nil {
					return nil, err
				}
				out = append(out, r)
				i = r.end
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

// scanIf reads shardfill.if(fact, a, b) starting at i, its parenthesis
// at k: the fact is a name, a and b any SQL (commas inside parentheses
// belong to them).
func scanIf(s string, code []bool, i, k, to int) (ref, error) {
	const form = "shardfill.if must be written shardfill.if(<fact>, <SQL if true>, <SQL if false>)"
	if k >= to || !code[k] || s[k] != '(' {
		return ref{}, &lexError{i, form}
	}
	depth := 0
	commas := []int{}
	closeAt := -1
	for m := k; m < to && closeAt < 0; m++ {
		if !code[m] {
			continue
		}
		switch s[m] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				closeAt = m
			}
		case ',':
			if depth == 1 {
				commas = append(commas, m)
			}
		}
	}
	if closeAt < 0 {
		return ref{}, &lexError{i, "shardfill.if( has no closing parenthesis"}
	}
	if len(commas) != 2 {
		return ref{}, &lexError{i, form}
	}
	name := strings.TrimSpace(s[k+1 : commas[0]])
	if !paramNameRe.MatchString(name) {
		return ref{}, &lexError{i, fmt.Sprintf("shardfill.if: %q is not a fact's name; %s", name, form)}
	}
	r := ref{kind: refIf, start: i, end: closeAt + 1, name: name}
	bounds := [][2]int{{commas[0] + 1, commas[1]}, {commas[1] + 1, closeAt}}
	for n, b := range bounds {
		if strings.TrimSpace(canonical(s[b[0]:b[1]])) == "" {
			return ref{}, &lexError{i, "shardfill.if: an empty choice; " + form}
		}
		inner, err := scanRange(s, code, b[0], b[1], false)
		if err != nil {
			return ref{}, err
		}
		r.choice[n].start, r.choice[n].end, r.choice[n].refs = b[0], b[1], inner
	}
	return r, nil
}

// walkRefs calls fn for every reference, those inside in_range and if too.
func walkRefs(refs []ref, fn func(ref)) {
	for _, r := range refs {
		fn(r)
		walkRefs(r.inner, fn)
		walkRefs(r.choice[0].refs, fn)
		walkRefs(r.choice[1].refs, fn)
	}
}

// lineOf is the line of byte offset off in s, s starting on line first.
func lineOf(s string, off int, first int) int {
	if off > len(s) {
		off = len(s)
	}
	return first + strings.Count(s[:off], "\n")
}
