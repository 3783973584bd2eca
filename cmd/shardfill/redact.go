package main

import (
	"bytes"
	"io"
	"net/url"
	"regexp"
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

// Add registers a secret, along with its URL-escaped forms.
func (r *redactor) Add(secret string) {
	if secret == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret), url.UserPassword("x", secret).String()[2:]} {
		r.secrets = append(r.secrets, []byte(s))
	}
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

// urlPassword finds the password of a URL even where url.Parse gives up.
var urlPassword = regexp.MustCompile(`://[^:/@\s]*:([^@\s]+)@`)

// dsnPassword finds password=... in a key/value connection string.
var dsnPassword = regexp.MustCompile(`password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// secretsIn returns the passwords an argument may carry: a URL's user
// password (after a --flag= prefix, if any) or a DSN's password=.
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
		if pw, err := url.PathUnescape(m[1]); err == nil {
			out = append(out, pw)
		}
	}
	for _, m := range dsnPassword.FindAllStringSubmatch(arg, -1) {
		out = append(out, strings.Trim(m[1], "'"))
	}
	return out
}
