package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where the numbers were taken.
type Machine struct {
	CPUs       int
	CPUModel   string
	MemoryGiB  float64
	PGVersion  string
	GoVersion  string
	PGSettings string
}

// DescribeMachine reads the machine's size and the server's version.
func DescribeMachine(ctx context.Context, db *DB) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kib, err := memTotalKiB(); err == nil {
		m.MemoryGiB = float64(kib) / (1 << 20)
	}
	if db != nil {
		_ = db.Pool.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&m.PGVersion)
		_ = db.Pool.QueryRow(ctx, `SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
			FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', 'fsync', 'synchronous_commit', 'max_parallel_workers_per_gather')`).Scan(&m.PGSettings)
	}
	return m
}

// Report is everything one run of the command measured.
type Report struct {
	Size      string
	Command   string
	Started   time.Time
	Total     time.Duration
	Machine   Machine
	DataSet   string
	Results   []Result // main comparison, one data set
	Scenarios []Result
	// MediumWall is the medium size's shardfill wall time per concurrency,
	// for the large/medium target; empty if unknown.
	MediumWall map[int]time.Duration
	// MediumLimit is the medium size's limit wall time, to show how the
	// single statement itself scales; 0 if unknown.
	MediumLimit time.Duration
	// MediumSameRun: the two fields above were measured in this run,
	// interleaved with this size, rather than read from medium.csv.
	MediumSameRun bool
	Notes         []string
}

func (r *Report) find(mode string, c int) (Result, bool) {
	for _, x := range r.Results {
		if x.Mode == mode && (mode != ModeShardfill || x.Concurrency == c) {
			return x, true
		}
	}
	return Result{}, false
}

// RatioToLimit is res.Wall / limit wall on the main data set (0: unknown).
func (r *Report) RatioToLimit(res Result) float64 {
	l, ok := r.find(ModeLimit, 0)
	if !ok || l.Wall <= 0 || res.Scenario != "" {
		return 0
	}
	return res.Wall.Seconds() / l.Wall.Seconds()
}

// SpeedupOverSerial is serial wall / res.Wall on the main data set.
func (r *Report) SpeedupOverSerial(res Result) float64 {
	s, ok := r.find(ModeSerial, 0)
	if !ok || res.Wall <= 0 || res.Scenario != "" {
		return 0
	}
	return s.Wall.Seconds() / res.Wall.Seconds()
}

// Target is one goal shown next to the figures; they are reported, not
// asserted.
type Target struct {
	Name, Want, Got string
	// Status is "met", "missed" or "not measured".
	Status string
}

func target(name, want string, got float64, format string, ok, measured bool) Target {
	t := Target{Name: name, Want: want, Status: "not measured", Got: "—"}
	if measured {
		t.Got = fmt.Sprintf(format, got)
		t.Status = "missed"
		if ok {
			t.Status = "met"
		}
	}
	return t
}

// productionSerialOverLimit is how many times the limit's time the serial
// command took with the production window function, as the performance
// issue measured it on a 2-core machine (1 115 s for 1.1 M rows, about
// 1 000 rows/s).
const productionSerialOverLimit = 60

// Targets evaluates the project's performance targets against the report.
func (r *Report) Targets() []Target {
	var out []Target
	c2, hasC2 := r.find(ModeShardfill, 2)
	c1, hasC1 := r.find(ModeShardfill, 1)
	_, hasLimit := r.find(ModeLimit, 0)
	x := r.RatioToLimit(c2)
	out = append(out, target("shardfill c=2 time / limit time", "≤ 0.7", x, "%.2f", x <= 0.7, hasC2 && hasLimit))
	x = r.RatioToLimit(c1)
	out = append(out, target("shardfill c=1 time / limit time", "≤ 1.2", x, "%.2f", x <= 1.2, hasC1 && hasLimit))

	var best Result
	for _, res := range r.Results {
		if res.Mode == ModeShardfill && (best.Wall == 0 || res.Wall < best.Wall) {
			best = res
		}
	}
	serial, hasSerial := r.find(ModeSerial, 0)
	x = r.SpeedupOverSerial(best)
	name := "speedup over serial (serial = our fixture's window function"
	if serial.Note != "" {
		name += ", extrapolated"
	}
	if best.Wall > 0 {
		name += "; best mode " + best.Label()
	}
	out = append(out, target(name+")", "≥ 100×", x, "%.0f×", x >= 100, hasSerial && best.Wall > 0))
	// The issue measured the serial command with the production window
	// function at 60 times the limit's time on a machine like this one;
	// our fixture's window function is slower, which flattens the line
	// above. Against that reference, scaled by this run's own limit (so a
	// faster or slower machine cancels out), the speedup is 60 / (our time
	// / limit time).
	x = 0
	if ratio := r.RatioToLimit(best); ratio > 0 {
		x = productionSerialOverLimit / ratio
	}
	out = append(out, target(fmt.Sprintf("speedup over the production serial command (%d× the limit's time, as the issue measured it; best mode)",
		productionSerialOverLimit), "≥ 100×", x, "%.0f×", x >= 100, hasLimit && best.Wall > 0))

	if r.Size == "large" {
		// c=2 first: the concurrency the other targets are set at; the
		// others are shown so no figure is left out. The limit's own ratio
		// says how much of the growth is the machine's, not the engine's.
		limitRatio := "limit not measured on both"
		if l, ok := r.find(ModeLimit, 0); ok && r.MediumLimit > 0 {
			limitRatio = fmt.Sprintf("the limit itself: %.2f", l.Wall.Seconds()/r.MediumLimit.Seconds())
		}
		if r.MediumSameRun {
			limitRatio = "medium measured in this run; " + limitRatio
		} else {
			limitRatio = "medium from medium.csv; " + limitRatio
		}
		for _, c := range []int{2, 1, 4} {
			res, ok := r.find(ModeShardfill, c)
			medium := r.MediumWall[c]
			x = 0
			if ok && medium > 0 {
				x = res.Wall.Seconds() / medium.Seconds()
			}
			out = append(out, target(fmt.Sprintf("large / medium time (shardfill c=%d; %s)", c, limitRatio), "≤ 4.4", x, "%.2f", x <= 4.4, ok && medium > 0))
		}
	}

	var rss int64
	for _, res := range append(append([]Result{}, r.Results...), r.Scenarios...) {
		if res.Mode == ModeShardfill {
			rss = max(rss, res.MaxRSSKiB)
		}
	}
	out = append(out, target("peak RSS of any shardfill run", "≤ 64 MiB", float64(rss)/1024, "%.1f MiB", rss <= 64<<10, rss > 0))

	for _, res := range r.Scenarios {
		switch res.Scenario {
		case ScenarioPlan1M:
			s := res.Wall.Seconds()
			out = append(out, target(fmt.Sprintf("plan %d slices: time", res.Slices), "≤ 60 s", s, "%.1f s", s <= 60, true))
			mib := float64(res.MaxRSSKiB) / 1024
			out = append(out, target(fmt.Sprintf("plan %d slices: peak RSS", res.Slices), "≤ 64 MiB", mib, "%.1f MiB", mib <= 64, true))
		case ScenarioSkew:
			out = append(out, target(fmt.Sprintf("skew tail ratio (c=%d)", res.Concurrency), "≤ 10 %", 100*res.TailRatio, "%.1f %%", res.TailRatio <= 0.10, true))
		}
	}
	for _, v := range latencyVariants {
		var lat1, lat16 Result
		for _, res := range r.Scenarios {
			if res.Scenario != ScenarioLatency || res.Variant != v.name {
				continue
			}
			switch res.Concurrency {
			case 1:
				lat1 = res
			case 16:
				lat16 = res
			}
		}
		if lat1.Wall > 0 && lat16.Wall > 0 {
			name := "latency: throughput c=16 / c=1"
			if v.name != "" {
				name += ", " + v.name + " (" + strings.Join(v.args, " ") + ")"
			} else {
				name += fmt.Sprintf(" (defaults; c=1 alone does %s rows/s)", fmtInt(int64(lat1.RowsPerSec())))
			}
			x := lat16.RowsPerSec() / lat1.RowsPerSec()
			out = append(out, target(name, "≥ 6×", x, "%.1f×", x >= 6, true))
		}
	}
	return out
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < 100*time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.0f s", d.Seconds())
	}
}

func fmtRatio(x float64, suffix string) string {
	switch {
	case x <= 0:
		return "—"
	case x >= 100:
		return fmt.Sprintf("%.0f%s", x, suffix)
	default:
		return fmt.Sprintf("%.2f%s", x, suffix)
	}
}

func fmtRSS(kib int64) string {
	if kib <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

func fmtInt(n int64) string {
	if n <= 0 {
		return "—"
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(ch)
	}
	return b.String()
}

// Markdown renders the report; headings start at level 2 so that RESULTS.md
// can include it as a section.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## Size %s\n\n", r.Size)
	w("Measured %s in %s with\n\n```sh\n%s\n```\n\n", r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Total.Round(time.Second), r.Command)
	m := r.Machine
	w("Machine: %d CPUs (%s), %.1f GiB memory; PostgreSQL %s (throwaway cluster from internal/pgserver: %s); %s.\n\n",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.PGVersion, m.PGSettings, m.GoVersion)
	w("Data set: %s\n\n", r.DataSet)

	w("| mode | wall time | rows/s | time / limit | speedup over serial | peak RSS | slices | p50 slice | p95 slice | checked |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, res := range r.Results {
		checked := "no"
		if res.Verified {
			checked = "= oracle"
		}
		label := res.Label()
		if res.Note != "" {
			label += " *"
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label, fmtDur(res.Wall),
			fmtInt(int64(res.RowsPerSec())), fmtRatio(r.RatioToLimit(res), ""),
			fmtRatio(r.SpeedupOverSerial(res), "×"), fmtRSS(res.MaxRSSKiB), fmtInt(res.Slices),
			fmtDur(res.P50), fmtDur(res.P95), checked)
	}
	for _, res := range r.Results {
		if res.Note != "" {
			w("\n\\* %s: %s.\n", res.Label(), res.Note)
		}
	}
	if len(r.Scenarios) > 0 {
		w("\n### Scenarios\n\n")
		w("| scenario | mode | wall time | rows/s | peak RSS | slices | p50 slice | p95 slice | tail ratio | note |\n")
		w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, res := range r.Scenarios {
			tail := "—"
			if res.Scenario == ScenarioSkew {
				tail = fmt.Sprintf("%.1f %%", 100*res.TailRatio)
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", res.Scenario, res.Label(), fmtDur(res.Wall),
				fmtInt(int64(res.RowsPerSec())), fmtRSS(res.MaxRSSKiB), fmtInt(res.Slices),
				fmtDur(res.P50), fmtDur(res.P95), tail, res.Note)
		}
	}
	w("\n### Targets\n\n| target | want | got | status |\n|---|---|---|---|\n")
	for _, t := range r.Targets() {
		w("| %s | %s | %s | %s |\n", t.Name, t.Want, t.Got, t.Status)
	}
	w("\n![throughput against concurrency](%s-throughput.png)\n", r.Size)
	if len(r.Notes) > 0 {
		w("\n### Notes\n\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
	}
	return b.String()
}

// CSV renders one line per result (main modes and scenarios).
func (r *Report) CSV() [][]string {
	out := [][]string{{"scenario", "mode", "concurrency", "wall_s", "rows", "rows_per_s",
		"time_over_limit", "speedup_over_serial", "peak_rss_kib", "slices", "p50_slice_ms", "p95_slice_ms",
		"tail_ratio", "verified", "rusage_maxrss_kib", "note"}}
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	ms := func(d time.Duration) string { return f(float64(d) / float64(time.Millisecond)) }
	for _, res := range append(append([]Result{}, r.Results...), r.Scenarios...) {
		out = append(out, []string{res.Scenario, res.Mode, strconv.Itoa(res.Concurrency),
			f(res.Wall.Seconds()), strconv.FormatInt(res.Rows, 10), f(res.RowsPerSec()),
			f(r.RatioToLimit(res)), f(r.SpeedupOverSerial(res)), strconv.FormatInt(res.MaxRSSKiB, 10),
			strconv.FormatInt(res.Slices, 10), ms(res.P50), ms(res.P95), f(res.TailRatio),
			strconv.FormatBool(res.Verified), strconv.FormatInt(res.RusageMaxRSSKiB, 10), res.Note})
	}
	return out
}

// ReadWall returns the wall time of the main-data-set row (mode, c) from a
// CSV written by Write; 0 if absent.
func ReadWall(path, mode string, c int) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return 0
	}
	for _, row := range rows[min(1, len(rows)):] {
		if len(row) < 4 || row[0] != "" || row[1] != mode || row[2] != strconv.Itoa(c) {
			continue
		}
		s, err := strconv.ParseFloat(row[3], 64)
		if err == nil {
			return time.Duration(s * float64(time.Second))
		}
	}
	return 0
}

// Write writes <size>.md, <size>.csv and <size>-throughput.png into dir and
// rebuilds RESULTS.md (resultsDoc) from every size's .md in dir.
func (r *Report) Write(dir, resultsDoc string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, r.Size+".md"), []byte("# shardfill benchmark\n\n"+r.Markdown()), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, r.Size+".csv"))
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	if err := cw.WriteAll(r.CSV()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := r.Chart(filepath.Join(dir, r.Size+"-throughput.png")); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if resultsDoc != "" {
		return WriteResultsDoc(dir, resultsDoc)
	}
	return nil
}

// WriteResultsDoc rebuilds the summary document from the per-size reports
// present in dir, so it always shows the latest run of every size.
func WriteResultsDoc(dir, path string) error {
	var b strings.Builder
	b.WriteString(resultsIntro)
	rel, err := filepath.Rel(filepath.Dir(path), dir)
	if err != nil {
		rel = dir
	}
	for _, s := range Sizes {
		md, err := os.ReadFile(filepath.Join(dir, s.Name+".md"))
		if err != nil {
			continue
		}
		body := strings.TrimPrefix(string(md), "# shardfill benchmark\n\n")
		// Images are relative to the results directory.
		body = strings.ReplaceAll(body, "]("+s.Name+"-throughput.png)", "]("+filepath.ToSlash(filepath.Join(rel, s.Name+"-throughput.png"))+")")
		b.WriteString("\n")
		b.WriteString(body)
	}
	for _, s := range Sizes {
		if md, err := os.ReadFile(filepath.Join(dir, s.Name+"-variants.md")); err == nil {
			b.WriteString("\n")
			b.Write(md)
		}
	}
	if md, err := os.ReadFile(filepath.Join(dir, ScenarioLastActivity+".md")); err == nil {
		b.WriteString("\n")
		b.Write(md)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

const resultsIntro = `# shardfill benchmark results

What the figures say about the engine, and what is next: [ANALYSIS.md](ANALYSIS.md).

Generated by ` + "`go run ./bench -size SIZE -bin bin/shardfill`" + ` (` + "`make bench SIZE=...`" + `);
each section below is the latest run of that size (raw figures in
bench/results/SIZE.csv). Every shardfill run is the real binary as a
subprocess against a throwaway PostgreSQL on the same machine, on one
generated database per size (fixed seed), with the rollup truncated and the
watermark reset before each mode; every shardfill result (and limit's) is
compared with the fixture's oracle before it is reported.

- **serial**: the command shardfill replaces: one call of our fixture's
  ` + "`rollup_task_usage_hourly_window`" + ` per calendar month over all workspaces, on one
  connection. On medium and large it runs on a sample of months and the total
  is extrapolated by their share of the rows (marked *).
- **limit**: one ` + "`INSERT … SELECT … GROUP BY`" + ` of the whole history into the empty
  rollup (bench/harness.go) — roughly the fastest a single statement goes here.
- **shardfill c=N**: ` + "`shardfill run --concurrency N --rate 0 --no-progress --new-run`" + `;
  wall time includes process start, planning and the watermark stamp. Slice
  times are claim → done from the checkpoint table (a slice's done mark
  takes clock_timestamp() once its batch's write is over).
- Targets are shown next to the figures, not asserted.
`
