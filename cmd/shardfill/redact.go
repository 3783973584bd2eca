package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// redactor is a writer that blanks out secrets (the database password) in
// everything written through it. Every byte shardfill prints passes through
// one, so no error text, log line or progress output can leak a password,
// whichever library produced it.
type redactor struct {
	mu      sync.Mutex
	w       io.Writer
	secrets [][]byte
}

func newRedactor(w io.Writer) *redactor { return &redactor{w: w} }

// publicPassword is the password of the documented default URL
// (defaultDatabaseURL): printed in the help and the CLI reference, it is no
// secret, and blanking it would blank every user= and database= of the
// default setup, whose user and database have the same name.
const publicPassword = "multica"

// Add registers a secret, whole, along with the forms it takes when it is
// escaped: in a URL, in Go's %q (usage errors), in a JSON string (JSON
// logs). Never a piece of it: blanking a fragment shorter than the secret
// mangles every word that holds the fragment, and hides nothing.
func (r *redactor) Add(secret string) {
	if secret == "" || secret == publicPassword {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	quoted := strconv.Quote(secret)
	for _, s := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret), url.UserPassword("x", secret).String()[2:],
		quoted[1 : len(quoted)-1], jsonString(secret, true), jsonString(secret, false)} {
		if !slices.ContainsFunc(r.secrets, func(have []byte) bool { return string(have) == s }) {
			r.secrets = append(r.secrets, []byte(s))
		}
	}
	// Longest first: a form that holds another is blanked whole.
	slices.SortFunc(r.secrets, func(a, b []byte) int { return len(b) - len(a) })
}

// jsonString is s as it appears inside a JSON string, with or without
// HTML escaping (encoding/json escapes <, > and &; log/slog does not).
func jsonString(s string, escapeHTML bool) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s)
	js := strings.TrimSuffix(b.String(), "\n")
	return js[1 : len(js)-1]
}

func (r *redactor) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := p
	for _, s := range r.secrets {
		if bytes.Contains(out, s) {
			out = bytes.ReplaceAll(out, s, []byte("xxxxx"))
		}
	}
	if _, err := r.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// urlPassword finds the password of a URL even where url.Parse gives up:
// everything from the user's colon to the last '@' of the authority, so a
// password with an unescaped '@' is found whole, never cut at its first '@'.
var urlPassword = regexp.MustCompile(`://[^:/@\s]*:([^/\s]*)@`)

// dsnPassword finds password=... in a key/value connection string.
var dsnPassword = regexp.MustCompile(`password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// secretsIn returns the passwords an argument may carry: a URL's user
// password (after a --flag= prefix, if any) or a DSN's password=. Each is
// whole (see [redactor.Add]).
func secretsIn(arg string) []string {
	if i := strings.Index(arg, "="); strings.HasPrefix(arg, "--") && i > 0 {
		arg = arg[i+1:]
	}
	var out []string
	if u, err := url.Parse(arg); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			out = append(out, pw)
		}
	}
	for _, m := range urlPassword.FindAllStringSubmatch(arg, -1) {
		out = append(out, m[1])
		if pw, err := url.PathUnescape(m[1]); err == nil && pw != m[1] {
			out = append(out, pw)
		}
	}
	for _, m := range dsnPassword.FindAllStringSubmatch(arg, -1) {
		out = append(out, strings.Trim(m[1], "'"))
	}
	return out
}
