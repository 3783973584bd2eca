package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/internal/fixture"
	"github.com/shardfill/shardfill/internal/pgserver"
)

// Harness runs the measured modes. The zero value is not usable: set Bin.
type Harness struct {
	// Bin is the shardfill binary to run. Required.
	Bin string
	// ExtraArgs are appended to every `shardfill run` (e.g. future tuning
	// flags such as --batch-rows). Default none.
	ExtraArgs []string
	// Schema is shardfill's checkpoint schema. Default "shardfill".
	Schema string
	// LogDir receives each subprocess's stdout and stderr. Default: a
	// temporary directory.
	LogDir string
	// Log receives one progress line per step. Default io.Discard.
	Log io.Writer
}

func (h *Harness) schema() string {
	if h.Schema == "" {
		return "shardfill"
	}
	return h.Schema
}

func (h *Harness) logf(format string, args ...any) {
	if h.Log != nil {
		fmt.Fprintf(h.Log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}

// DB is one benchmark database with its generated history.
type DB struct {
	Name string
	// URL holds the password: never print it (use Redacted).
	URL       string
	Pool      *pgxpool.Pool
	UsageRows int64
	Stats     fixture.Stats
	// GenerateTime is how long loading the history took.
	GenerateTime time.Duration
}

// Redacted is the URL without its password, for logs.
func (d *DB) Redacted() string { return redactURL(d.URL) }

// Close closes the pool.
func (d *DB) Close() { d.Pool.Close() }

// CreateDB creates an empty database on srv, loads the target schema and
// connects a pool to it.
func CreateDB(ctx context.Context, srv *pgserver.Server, name string) (*DB, error) {
	url, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		return nil, err
	}
	return OpenDB(ctx, name, url)
}

// OpenDB connects to the empty database at url and loads the target schema.
func OpenDB(ctx context.Context, name, url string) (*DB, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	if err := fixture.LoadSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &DB{Name: name, URL: url, Pool: pool}, nil
}

// GenerateDB creates database name and fills it with the fixture history
// of cfg.
func GenerateDB(ctx context.Context, srv *pgserver.Server, name string, cfg fixture.Config) (*DB, error) {
	db, err := CreateDB(ctx, srv, name)
	if err != nil {
		return nil, err
	}
	if err := db.Fill(ctx, cfg); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Fill loads the fixture history of cfg into the database.
func (db *DB) Fill(ctx context.Context, cfg fixture.Config) error {
	start := time.Now()
	st, err := fixture.Generate(ctx, db.Pool, cfg)
	if err != nil {
		return fmt.Errorf("generate %s: %w", db.Name, err)
	}
	db.GenerateTime = time.Since(start)
	db.Stats = st
	db.UsageRows = st.Usage
	// Leave the history as a production database keeps it: vacuumed, with
	// hint bits set and the visibility map filled. Otherwise the first mode
	// measured pays for that, and autovacuum, waking on the fresh rows,
	// competes with whichever mode runs next for the two cores.
	if _, err := db.Pool.Exec(ctx, `VACUUM (ANALYZE) workspace, agent, issue, agent_task_queue, task_usage`); err != nil {
		return fmt.Errorf("vacuum %s: %w", db.Name, err)
	}
	return nil
}

// Mode names of Result.Mode.
const (
	ModeSerial    = "serial"
	ModeLimit     = "limit"
	ModeShardfill = "shardfill"
)

// Result is one measured mode.
type Result struct {
	// Scenario is "" for the main comparison, else the scenario's name.
	Scenario    string
	Mode        string
	Concurrency int           // shardfill only
	Wall        time.Duration // measured, or extrapolated (see Note)
	Rows        int64         // task_usage rows of the data set
	Note        string
	MaxRSSKiB   int64 // peak RSS (VmHWM) of the shardfill process; 0 for in-database modes
	// RusageMaxRSSKiB is wait4's ru_maxrss, inflated by the bench's own
	// RSS (see Proc); kept in the CSV for comparison.
	RusageMaxRSSKiB int64
	RunID           int64
	Slices          int64
	P50, P95        time.Duration // slice time (claimed → done)
	TailRatio       float64       // skew scenario only
	Verified        bool          // rollup compared equal to the oracle
	// Variant names a shardfill run with non-default flags within a
	// scenario ("unbatched"); "" for the defaults.
	Variant string
	// FirstSlice is the time from the binary's start to the first slice
	// committed (its done mark's clock_timestamp(), same machine clock).
	FirstSlice time.Duration
	// ServerCPU is the CPU time (user + system) every server process spent
	// during the mode; ProcCPU the shardfill process's own.
	ServerCPU, ProcCPU time.Duration
}

// Label names the mode in tables: "serial", "limit", "shardfill c=4",
// "shardfill c=4, unbatched".
func (r Result) Label() string {
	if r.Mode != ModeShardfill {
		return r.Mode
	}
	if r.Variant != "" {
		return fmt.Sprintf("shardfill c=%d, %s", r.Concurrency, r.Variant)
	}
	return fmt.Sprintf("shardfill c=%d", r.Concurrency)
}

// Median returns the result with the median wall time (the slower of the
// two middle ones for an even count).
func Median(results []Result) Result {
	sorted := slices.Clone(results)
	slices.SortFunc(sorted, func(a, b Result) int { return cmp.Compare(a.Wall, b.Wall) })
	return sorted[len(sorted)/2]
}

// RowsPerSec is task_usage rows per second of wall time.
func (r Result) RowsPerSec() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Wall.Seconds()
}

// Reset empties the rollup and the dirty queue, puts the watermark back to
// its default and drops shardfill's checkpoint schema, so every mode starts
// from the same state: a first backfill. (Kept, the slice tables of the
// earlier modes' runs would grow with every mode measured, and so would
// the work of autovacuum during the later ones.)
func (h *Harness) Reset(ctx context.Context, db *DB) error {
	if _, err := db.Pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{h.schema()}.Sanitize()+` CASCADE`); err != nil {
		return fmt.Errorf("reset %s: %w", db.Name, err)
	}
	return resetRollup(ctx, db)
}

// resetRollup empties the rollup and the dirty queue and puts the
// watermark back to its default.
func resetRollup(ctx context.Context, db *DB) error {
	_, err := db.Pool.Exec(ctx, `
		TRUNCATE task_usage_hourly, task_usage_hourly_dirty;
		UPDATE task_usage_hourly_rollup_state
		SET watermark_at = DEFAULT, last_run_started_at = NULL, last_run_finished_at = NULL,
		    last_run_rows = NULL, last_error = NULL
		WHERE id = 1;
		CHECKPOINT`)
	if err != nil {
		return fmt.Errorf("reset %s: %w", db.Name, err)
	}
	return nil
}

// Verify compares the rollup with the oracle and returns an error naming
// the first differences when they differ.
func Verify(ctx context.Context, db *DB, what string) error {
	diffs, total, err := fixture.Diff(ctx, db.Pool, 5)
	if err != nil {
		return fmt.Errorf("%s: verify: %w", what, err)
	}
	if total > 0 {
		return fmt.Errorf("%s: WRONG RESULT: rollup differs from the oracle in %d keys, e.g.\n  %s",
			what, total, strings.Join(diffs, "\n  "))
	}
	return nil
}

// limitSQL is the single-statement reference: the whole history aggregated
// into the empty rollup in one INSERT … SELECT … GROUP BY, as
// spec/target-schema.md defines a rollup row (written here from the spec,
// not taken from job/).
const limitSQL = `
INSERT INTO task_usage_hourly (
    bucket_hour, workspace_id, runtime_id, agent_id, project_id, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    task_count, event_count, cost_usd_ticks,
    uncosted_input_tokens, uncosted_output_tokens,
    uncosted_cache_read_tokens, uncosted_cache_write_tokens)
SELECT date_trunc('hour', u.created_at, 'UTC'),
       a.workspace_id, t.runtime_id, t.agent_id, i.project_id, u.provider, u.model,
       sum(u.input_tokens)::bigint,
       sum(u.output_tokens)::bigint,
       sum(u.cache_read_tokens)::bigint,
       sum(u.cache_write_tokens)::bigint,
       count(DISTINCT u.task_id),
       count(*),
       coalesce(sum(u.cost_usd_ticks), 0)::bigint,
       coalesce(sum(u.input_tokens)       FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint,
       coalesce(sum(u.output_tokens)      FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint,
       coalesce(sum(u.cache_read_tokens)  FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint,
       coalesce(sum(u.cache_write_tokens) FILTER (WHERE u.cost_usd_ticks IS NULL), 0)::bigint
FROM task_usage u
JOIN agent_task_queue t ON t.id = u.task_id
JOIN agent a ON a.id = t.agent_id
LEFT JOIN issue i ON i.id = t.issue_id
WHERE t.runtime_id IS NOT NULL
GROUP BY 1, 2, 3, 4, 5, 6, 7`

// Limit times limitSQL on the empty rollup and checks its result against
// the oracle.
func (h *Harness) Limit(ctx context.Context, db *DB) (Result, error) {
	if err := h.Reset(ctx, db); err != nil {
		return Result{}, err
	}
	h.logf("%s: limit: one INSERT … SELECT … GROUP BY of the whole history", db.Name)
	cpu0 := ServerCPU(ctx, db)
	start := time.Now()
	if _, err := db.Pool.Exec(ctx, limitSQL); err != nil {
		return Result{}, fmt.Errorf("limit: %w", err)
	}
	res := Result{Mode: ModeLimit, Wall: time.Since(start), Rows: db.UsageRows, ServerCPU: ServerCPU(ctx, db) - cpu0}
	if err := Verify(ctx, db, "limit"); err != nil {
		return res, err
	}
	res.Verified = true
	h.logf("%s: limit: %s", db.Name, res.Wall.Round(time.Millisecond))
	return res, nil
}

// month is one calendar month of the serial walk with its share of the
// rows the window function selects (by updated_at, else created_at).
type month struct {
	from, to time.Time
	rows     int64
}

// serialMonths lists the UTC calendar months the serial command walks: from
// the month of the oldest created_at to the month of the newest change, so
// that every row is selected by exactly one window.
func serialMonths(ctx context.Context, db *DB) ([]month, error) {
	rows, err := db.Pool.Query(ctx, `
		WITH per_month AS (
		    SELECT date_trunc('month', coalesce(updated_at, created_at) AT TIME ZONE 'UTC') AS m, count(*) AS n
		    FROM task_usage GROUP BY 1
		), bounds AS (
		    SELECT (SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC') FROM task_usage) AS lo,
		           (SELECT max(m) FROM per_month) AS hi
		)
		SELECT g AT TIME ZONE 'UTC', (g + interval '1 month') AT TIME ZONE 'UTC', coalesce(p.n, 0)
		FROM bounds, generate_series(bounds.lo, bounds.hi, interval '1 month') g
		LEFT JOIN per_month p ON p.m = g
		ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("serial: months: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (month, error) {
		var m month
		err := r.Scan(&m.from, &m.to, &m.rows)
		return m, err
	})
}

// sampleMonths picks n months spread evenly inside the history (never the
// first or last, which are partial); n <= 0 or n >= len picks all.
func sampleMonths(all []month, n int) []month {
	if n <= 0 || n >= len(all) {
		return all
	}
	out := make([]month, 0, n)
	for k := 1; k <= n; k++ {
		out = append(out, all[k*len(all)/(n+1)])
	}
	return out
}

// Serial replays the command shardfill replaces: on one connection holding
// the cron lock (fixture.AppLockKey), one rollup_task_usage_hourly_window call per calendar
// month, oldest first, then the watermark stamp. With sample > 0 only that
// many months run and the total is extrapolated by their share of rows.
func (h *Harness) Serial(ctx context.Context, db *DB, sample int) (Result, error) {
	if err := h.Reset(ctx, db); err != nil {
		return Result{}, err
	}
	all, err := serialMonths(ctx, db)
	if err != nil {
		return Result{}, err
	}
	run := sampleMonths(all, sample)
	full := len(run) == len(all)

	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return Result{}, err
	}
	defer conn.Release()
	start := time.Now()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(fixture.AppLockKey)); err != nil {
		return Result{}, fmt.Errorf("serial: lock: %w", err)
	}
	var took time.Duration
	var rows int64
	for _, m := range run {
		t0 := time.Now()
		if _, err := conn.Exec(ctx, `SELECT rollup_task_usage_hourly_window($1, $2)`, m.from, m.to); err != nil {
			return Result{}, fmt.Errorf("serial: month %s: %w", m.from.Format("2006-01"), err)
		}
		d := time.Since(t0)
		took += d
		rows += m.rows
		h.logf("%s: serial: month %s (%d rows) in %s", db.Name, m.from.Format("2006-01"), m.rows, d.Round(time.Millisecond))
	}
	if full {
		if _, err := conn.Exec(ctx, `UPDATE task_usage_hourly_rollup_state SET watermark_at = now() - interval '5 minutes' WHERE id = 1`); err != nil {
			return Result{}, fmt.Errorf("serial: stamp: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(fixture.AppLockKey)); err != nil {
		return Result{}, fmt.Errorf("serial: unlock: %w", err)
	}
	res := Result{Mode: ModeSerial, Rows: db.UsageRows}
	if full {
		res.Wall = time.Since(start)
		if err := Verify(ctx, db, "serial"); err != nil {
			return res, err
		}
		res.Verified = true
		return res, nil
	}
	if rows == 0 {
		return res, errors.New("serial: the sampled months hold no rows")
	}
	res.Wall = time.Duration(float64(took) * float64(db.UsageRows) / float64(rows))
	res.Note = fmt.Sprintf("extrapolated from %d of %d months (%.1f%% of rows, measured %s)",
		len(run), len(all), 100*float64(rows)/float64(db.UsageRows), took.Round(time.Millisecond))
	return res, nil
}

// Proc is one finished shardfill subprocess.
type Proc struct {
	Wall time.Duration
	// MaxRSSKiB is the child's peak RSS (VmHWM, sampled every 10 ms).
	MaxRSSKiB int64
	// RusageMaxRSSKiB is wait4's ru_maxrss. On Linux it is at least the
	// parent's own peak RSS: Go starts children with vfork semantics, and
	// exec records the peak of the (shared, parent's) address space it
	// replaces. So it measures the bench as much as shardfill.
	RusageMaxRSSKiB int64
	Stdout          string
	// Started is when the process was started; CPU its user + system time.
	Started time.Time
	CPU     time.Duration
}

// watchHWM samples /proc/<pid>/status until the returned function is
// called and returns the largest VmHWM (peak RSS of the exec'd image, KiB)
// seen. VmHWM only grows, so a sample misses at most the last 10 ms.
func watchHWM(pid int) func() int64 {
	path := fmt.Sprintf("/proc/%d/status", pid)
	done := make(chan struct{})
	result := make(chan int64, 1)
	read := func() int64 {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				return n
			}
		}
		return 0
	}
	go func() {
		var peak int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, read())
			select {
			case <-done:
				result <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 { close(done); return <-result }
}

// RunBinary runs `shardfill <args> <ExtraArgs>` against url (passed in
// DATABASE_URL so that the password stays out of argv and logs) and
// returns its wall time and peak RSS. logName names the log files.
func (h *Harness) RunBinary(ctx context.Context, url, logName string, args ...string) (Proc, error) {
	logDir := h.LogDir
	if logDir == "" {
		logDir = os.TempDir()
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return Proc{}, err
	}
	args = append(append([]string{}, args...), "--schema", h.schema())
	if args[0] == "run" {
		args = append(args, h.ExtraArgs...)
	}
	stdoutPath := filepath.Join(logDir, logName+".stdout")
	stderrPath := filepath.Join(logDir, logName+".stderr")
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		return Proc{}, err
	}
	defer stdout.Close()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return Proc{}, err
	}
	defer stderr.Close()

	cmd := exec.CommandContext(ctx, h.Bin, args...)
	// Only DATABASE_URL names the target: no libpq variables, no other URL.
	cmd.Env = append(pgserver.CleanEnv("DATABASE_URL"), "DATABASE_URL="+url)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Proc{}, err
	}
	hwm := watchHWM(cmd.Process.Pid)
	runErr := cmd.Wait()
	p := Proc{Wall: time.Since(start), MaxRSSKiB: hwm(), Started: start}
	if cmd.ProcessState != nil {
		p.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			p.RusageMaxRSSKiB = ru.Maxrss // KiB on Linux
		}
	}
	if p.MaxRSSKiB == 0 {
		p.MaxRSSKiB = p.RusageMaxRSSKiB
	}
	out, _ := os.ReadFile(stdoutPath)
	p.Stdout = string(out)
	if runErr != nil {
		errOut, _ := os.ReadFile(stderrPath)
		return p, fmt.Errorf("%s %s: %w\n%s", filepath.Base(h.Bin), strings.Join(args, " "), runErr, tail(string(errOut), 2000))
	}
	return p, nil
}

// Shardfill runs the binary on the emptied rollup at concurrency c with
// the rate limit off, reads the run's slice timings back and checks the
// rollup against the oracle.
func (h *Harness) Shardfill(ctx context.Context, db *DB, c int) (Result, error) {
	if err := h.Reset(ctx, db); err != nil {
		return Result{}, err
	}
	label := fmt.Sprintf("shardfill c=%d", c)
	h.logf("%s: %s", db.Name, label)
	cpu0 := ServerCPU(ctx, db)
	p, err := h.RunBinary(ctx, db.URL, fmt.Sprintf("%s-c%d", db.Name, c),
		"run", "--concurrency", strconv.Itoa(c), "--rate", "0", "--no-progress", "--new-run")
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", label, err)
	}
	waitBackendsGone(ctx, db)
	res := Result{Mode: ModeShardfill, Concurrency: c, Wall: p.Wall, Rows: db.UsageRows, MaxRSSKiB: p.MaxRSSKiB, RusageMaxRSSKiB: p.RusageMaxRSSKiB,
		ServerCPU: ServerCPU(ctx, db) - cpu0, ProcCPU: p.CPU}
	if err := h.readRun(ctx, db, &res); err != nil {
		return res, fmt.Errorf("%s: %w", label, err)
	}
	var first *time.Time
	slice := pgx.Identifier{h.schema(), "slice"}.Sanitize()
	if err := db.Pool.QueryRow(ctx, `SELECT min(finished_at) FROM `+slice+` WHERE run_id = $1`, res.RunID).Scan(&first); err != nil {
		return res, fmt.Errorf("%s: first slice: %w", label, err)
	}
	if first != nil {
		res.FirstSlice = first.Sub(p.Started)
	}
	if err := Verify(ctx, db, label); err != nil {
		return res, err
	}
	res.Verified = true
	h.logf("%s: %s: %s, %d slices, first slice after %s, p50 %s, p95 %s, peak RSS %d MiB", db.Name, label,
		res.Wall.Round(time.Millisecond), res.Slices, res.FirstSlice.Round(time.Millisecond), res.P50.Round(time.Microsecond),
		res.P95.Round(time.Microsecond), res.MaxRSSKiB/1024)
	return res, nil
}

// readRun fills the latest run's id, slice count and slice-time
// percentiles, and fails unless the run and all its slices are done.
func (h *Harness) readRun(ctx context.Context, db *DB, res *Result) error {
	run := pgx.Identifier{h.schema(), "run"}.Sanitize()
	slice := pgx.Identifier{h.schema(), "slice"}.Sanitize()
	var state string
	if err := db.Pool.QueryRow(ctx, `SELECT id, state FROM `+run+` ORDER BY id DESC LIMIT 1`).Scan(&res.RunID, &state); err != nil {
		return fmt.Errorf("read run: %w", err)
	}
	if state != "done" {
		return fmt.Errorf("run %d ended in state %q, want done", res.RunID, state)
	}
	var notDone int64
	var p50, p95 *float64
	err := db.Pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'done'),
		       count(*) FILTER (WHERE state <> 'done'),
		       percentile_cont(0.5)  WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FILTER (WHERE state = 'done'),
		       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) FILTER (WHERE state = 'done')
		FROM `+slice+` WHERE run_id = $1`, res.RunID).Scan(&res.Slices, &notDone, &p50, &p95)
	if err != nil {
		return fmt.Errorf("read slices of run %d: %w", res.RunID, err)
	}
	if notDone > 0 {
		return fmt.Errorf("run %d is done but %d slices are not", res.RunID, notDone)
	}
	res.P50, res.P95 = seconds(p50), seconds(p95)
	return nil
}

func seconds(v *float64) time.Duration {
	if v == nil {
		return 0
	}
	return time.Duration(*v * float64(time.Second))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// SharedBuffers is the bench server's buffer cache, sized as PostgreSQL's
// documentation suggests for a dedicated server: a quarter of the
// machine's memory (at least 1 GB, at most 8 GB). With less, the large
// size's rollup and indexes outgrow the cache, and every mode, the single
// statement included, then measures page evictions rather than its own
// work.
func SharedBuffers() string {
	const minMB, maxMB = 1024, 8192
	mb := minMB
	if total, err := memTotalKiB(); err == nil {
		mb = min(max(int(total/1024)/4, minMB), maxMB)
	}
	return fmt.Sprintf("%dMB", mb)
}

// memTotalKiB reads the machine's memory from /proc/meminfo.
func memTotalKiB() (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		var kib int64
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kib); err == nil {
			return kib, nil
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

// Tune sets the bench server's memory like a production server's and
// restarts it.
func Tune(ctx context.Context, srv *pgserver.Server) error {
	if srv.External() {
		return nil
	}
	conn, err := pgx.Connect(ctx, srv.AdminURL())
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `ALTER SYSTEM SET shared_buffers = '`+SharedBuffers()+`'`)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("tune server: %w", err)
	}
	if err := srv.StopMode("fast"); err != nil {
		return err
	}
	return srv.Restart(ctx)
}
