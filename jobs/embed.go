// Package jobs holds the job files shipped with shardfill (*.sql in this
// directory, one job each, named after the job), embedded in the binary.
// jobfile parses them; docs/jobs.md describes the format.
package jobs

import (
	"embed"
	"path"
	"sort"
	"strings"
)

//go:embed *.sql
var files embed.FS

// Names lists the shipped jobs (file names without .sql), sorted.
func Names() []string {
	entries, err := files.ReadDir(".")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			names = append(names, strings.TrimSuffix(e.Name(), ".sql"))
		}
	}
	sort.Strings(names)
	return names
}

// Source returns a shipped job's file: its path as in the repository
// ("jobs/<name>.sql", for messages) and its bytes. name may carry the
// .sql suffix.
func Source(name string) (filePath string, src []byte, ok bool) {
	file := strings.TrimSuffix(name, ".sql") + ".sql"
	if strings.ContainsAny(name, "/\\") {
		return "", nil, false
	}
	src, err := files.ReadFile(file)
	if err != nil {
		return "", nil, false
	}
	return path.Join("jobs", file), src, true
}
