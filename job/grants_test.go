package job

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The grant lists the README and the runbook give the run role hold every
// privilege the rollup's preflight demands: a role set up as either says
// passes it (and its slices find no missing grant part-way).
func TestDocumentedGrantsCoverPreflight(t *testing.T) {
	grantRe := regexp.MustCompile(`(?m)^GRANT ([A-Z, ]+) ON ([a-z_, ]+) TO (\w+);`)
	for doc, role := range map[string]string{"../README.md": "shardfill_run", "../docs/runbook.md": "backfill"} {
		src, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		granted := map[Need]bool{}
		for _, m := range grantRe.FindAllStringSubmatch(string(src), -1) {
			if m[3] != role || strings.Contains(m[2], "DATABASE") {
				continue
			}
			for _, p := range strings.Split(m[1], ",") {
				for _, tab := range strings.Split(m[2], ",") {
					granted[Need{strings.TrimSpace(p), strings.TrimSpace(tab)}] = true
				}
			}
		}
		for _, n := range new(Hourly).Needs() {
			if !granted[n] {
				t.Errorf("%s grants %s no %s ON %s, which preflight demands", doc, role, n.Privilege, n.Table)
			}
		}
	}
}
