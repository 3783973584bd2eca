package jobfile

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ParamError is a bad --param value (or a missing or unknown one).
type ParamError struct{ Name, Msg string }

func (e *ParamError) Error() string { return fmt.Sprintf("--param %s=...: %s", e.Name, e.Msg) }

var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// normalise checks that v is a value of type t and returns its canonical
// text: uuid lower case; bigint in decimal; boolean true/false;
// timestamptz RFC 3339 in UTC with nanoseconds as needed; text as is.
func normalise(t Type, v string) (string, error) {
	switch t {
	case Text:
		return v, nil
	case UUID:
		if !uuidRe.MatchString(v) {
			return "", fmt.Errorf("not a uuid (want 8-4-4-4-12 hex digits, e.g. 0b6c3a5e-8f1d-4c2a-9e7b-1f2d3c4b5a69)")
		}
		return strings.ToLower(v), nil
	case Bigint:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", fmt.Errorf("not a bigint (want a decimal 64-bit integer)")
		}
		return strconv.FormatInt(n, 10), nil
	case Boolean:
		switch strings.ToLower(v) {
		case "true", "t", "yes", "on", "1":
			return "true", nil
		case "false", "f", "no", "off", "0":
			return "false", nil
		}
		return "", fmt.Errorf("not a boolean (want true/false, t/f, yes/no, on/off or 1/0)")
	case Timestamptz:
		ts, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return "", fmt.Errorf("not a timestamptz (want RFC 3339 with a zone, e.g. 2026-01-31T00:00:00Z)")
		}
		return ts.UTC().Format(time.RFC3339Nano), nil
	}
	return "", fmt.Errorf("unknown type %q", t)
}

// Values validates the operator's parameters (name -> text), applies the
// defaults and returns the normalised text of every declared parameter
// (nil = NULL). It refuses unknown names, missing required parameters,
// values that are not of the parameter's type, and values of a past
// parameter later than now. Errors are *ParamError.
func (f *File) Values(given map[string]string, now time.Time) (map[string]*string, error) {
	names := make([]string, 0, len(given))
	for name := range given {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if f.param(name) == nil {
			msg := "the job has no such parameter"
			if len(f.Params) > 0 {
				var ds []string
				for _, p := range f.Params {
					ds = append(ds, p.Name)
				}
				msg += " (it declares " + strings.Join(ds, ", ") + ")"
			} else {
				msg += " (it declares none)"
			}
			return nil, &ParamError{Name: name, Msg: msg}
		}
	}
	out := make(map[string]*string, len(f.Params))
	for _, p := range f.Params {
		raw, ok := given[p.Name]
		var v *string
		switch {
		case ok:
			v = &raw
		case p.Required:
			return nil, &ParamError{Name: p.Name, Msg: fmt.Sprintf("required (a %s; give --param %s=<value>)", p.Type, p.Name)}
		case p.Default != nil:
			d := *p.Default
			v = &d
		}
		if v == nil {
			out[p.Name] = nil
			continue
		}
		norm, err := normalise(p.Type, *v)
		if err != nil {
			return nil, &ParamError{Name: p.Name, Msg: fmt.Sprintf("%q: %v", *v, err)}
		}
		if p.Past {
			ts, _ := time.Parse(time.RFC3339Nano, norm)
			if ts.After(now) {
				return nil, &ParamError{Name: p.Name, Msg: fmt.Sprintf("%s is later than now (%s): it must lie in the past", norm, now.UTC().Format(time.RFC3339Nano))}
			}
		}
		out[p.Name] = &norm
	}
	return out, nil
}
