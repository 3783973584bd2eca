package jobfile

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics, and whatever it accepts compiles in every
// scope with its line count kept.
func FuzzParse(f *testing.F) {
	f.Add(splitJob)
	f.Add(planJob)
	f.Add(compileJob)
	for _, name := range []string{"../jobs/issue-last-activity.sql", "../jobs/codex-usage-cache.sql"} {
		if src, err := os.ReadFile(name); err == nil {
			f.Add(string(src))
		}
	}
	f.Fuzz(func(t *testing.T, src string) {
		file, err := Parse("fuzz.sql", []byte(src))
		if err != nil {
			return
		}
		for _, l := range file.All() {
			for _, sc := range []Scope{{}, {LoOpen: true}, {HiOpen: true}, {LoOpen: true, HiOpen: true}, {Whole: true}} {
				c, err := file.Compile(l.Statement, UUID, "", sc)
				if err != nil {
					continue // a quoted newline inside in_range
				}
				if strings.Count(c.SQL, "\n") != strings.Count(l.Statement.SQL, "\n") {
					t.Fatalf("%s %+v: line count changed:\n%s\n---\n%s", l.Section, sc, l.Statement.SQL, c.SQL)
				}
				c.LineAt(len(c.SQL))
			}
		}
	})
}
