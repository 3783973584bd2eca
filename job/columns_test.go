package job

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// tableAlias finds "FROM table alias", "JOIN table AS alias", "DELETE FROM
// table alias" and the like; a CTE or function named there simply maps to
// no required table.
var tableAlias = regexp.MustCompile(`(?i)\b(?:FROM|JOIN|USING|UPDATE)\s+(\w+)\s+(?:AS\s+)?(\w+)`)

// qualified finds alias.column references.
var qualified = regexp.MustCompile(`\b([a-z_]\w*)\.([a-z_]\w*)\b`)

// cteStart cuts a statement where a common table expression begins: each
// has its own aliases (by_time.sql reuses u and t for its CTEs).
var cteStart = regexp.MustCompile(`(?m)^(?:WITH|\),)\s+\w+\s+AS\s+(?:MATERIALIZED\s+)?\(`)

// readColumns returns every table.column the statement names through an
// alias of a table (not a CTE), scope by scope.
func readColumns(sql string) map[string]bool {
	var lines []string
	for _, l := range strings.Split(sql, "\n") {
		if i := strings.Index(l, "--"); i >= 0 {
			l = l[:i]
		}
		lines = append(lines, l)
	}
	sql = strings.Join(lines, "\n")
	cuts := append([]int{0}, func() []int {
		var at []int
		for _, m := range cteStart.FindAllStringIndex(sql, -1) {
			at = append(at, m[0])
		}
		return at
	}()...)
	cuts = append(cuts, len(sql))
	found := map[string]bool{}
	for i := 0; i+1 < len(cuts); i++ {
		scope := sql[cuts[i]:cuts[i+1]]
		tables := map[string]string{}
		for _, m := range tableAlias.FindAllStringSubmatch(scope, -1) {
			tables[m[2]] = m[1]
		}
		for _, m := range qualified.FindAllStringSubmatch(scope, -1) {
			if table, ok := tables[m[1]]; ok && required(table) != nil {
				found[table+"."+m[2]] = true
			}
		}
	}
	return found
}

// required returns the required columns of table, or nil if it is not one
// of the job's tables.
func required(table string) []string {
	for _, rel := range requiredColumns {
		if rel.table == table {
			return append([]string{}, rel.columns...)
		}
	}
	return nil
}

// Preflight checks every column the plan and slice statements read: a
// column missing from requiredColumns would pass the preflight and fail
// every slice on a database without it.
func TestRequiredColumnsCoverStatements(t *testing.T) {
	statements := map[string]string{
		"plan": planSQL, "delete": deleteSQL, "queue": queueSQL,
		"by_workspace": distinctInserts.byWorkspace, "by_time": distinctInserts.byTime, "by_window": distinctInserts.byWindow,
	}
	seen := map[string]bool{}
	for name, sql := range statements {
		for col := range readColumns(sql) {
			seen[col] = true
			table, column, _ := strings.Cut(col, ".")
			if !slices.Contains(required(table), column) {
				t.Errorf("%s.sql reads %s, which the preflight does not check (add it to requiredColumns)", name, col)
			}
		}
	}
	// The parser must see through the statements' aliases at all.
	for _, col := range []string{"agent_task_queue.created_at", "task_usage.created_at", "agent.workspace_id", "task_usage_hourly.bucket_hour"} {
		if !seen[col] {
			t.Errorf("the statements' parse misses %s; fix the test's parser", col)
		}
	}
}
