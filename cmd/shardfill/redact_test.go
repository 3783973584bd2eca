package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestSecretsInArguments(t *testing.T) {
	for arg, want := range map[string]string{
		"postgres://u:p%40ss@h/db":                "p@ss",
		"--database-url=postgres://u:hunter2@h/":  "hunter2",
		"postgres://u:broken@[::1/x":              "broken",
		"host=h user=u password='a b c' dbname=d": "a b c",
		"host=h password=plain":                   "plain",
	} {
		got := secretsIn(arg)
		if len(got) == 0 || !slices.Contains(got, want) {
			t.Errorf("secretsIn(%q) = %q, want %q among them", arg, got, want)
		}
	}
	if got := secretsIn("--concurrency=4"); len(got) != 0 {
		t.Errorf("found secrets in a plain flag: %q", got)
	}
}

func TestRedactorBlanksEveryForm(t *testing.T) {
	var buf bytes.Buffer
	r := newRedactor(&buf)
	r.Add("p@ss w/rd")
	for _, s := range []string{"p@ss w/rd", "p%40ss+w%2Frd", "p%40ss%20w%2Frd"} {
		buf.Reset()
		if _, err := r.Write([]byte("x " + s + " y")); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), s) || !strings.Contains(buf.String(), "xxxxx") {
			t.Errorf("%q written as %q", s, buf.String())
		}
	}
}
