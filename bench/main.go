package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shardfill/shardfill/internal/pgserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "shardfill-bench: FAILED:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

type options struct {
	size         string
	bin          string
	modes        []string
	concurrency  []int
	out          string
	resultsDoc   string
	scenarios    []string
	serialMonths int
	rounds       int
	scaleWith    string
	extraArgs    []string
	explain      bool
	latency      LatencyConfig
	skew         SkewConfig
	plan1m       Plan1MConfig
	variants     []string
	issueRows    int // the lastactivity scenario's issues
}

func parse(args []string) (*options, error) {
	fs := flag.NewFlagSet("shardfill-bench", flag.ContinueOnError)
	o := &options{latency: DefaultLatency(), skew: DefaultSkew(), plan1m: DefaultPlan1M()}
	fs.StringVar(&o.size, "size", "small", "data set: small (~100k usage rows), medium (~1M), large (~4M), xlarge (~10M, 36 months; manual)")
	fs.StringVar(&o.bin, "bin", "bin/shardfill", "shardfill binary (make build)")
	modes := fs.String("modes", "serial,limit,shardfill", "modes to measure: serial, limit, shardfill")
	conc := fs.String("concurrency", "1,2,4,8,16", "shardfill concurrencies")
	fs.StringVar(&o.out, "out", "bench/results", "directory for <size>.md, <size>.csv, <size>-throughput.png")
	fs.StringVar(&o.resultsDoc, "results-doc", "bench/RESULTS.md", "summary document rebuilt from the results directory (empty: none)")
	scen := fs.String("scenarios", "default", "extra scenarios: latency,skew,plan1m,health,eta, all, none, or default (the size's: medium runs latency,skew,plan1m)")
	fs.IntVar(&o.serialMonths, "serial-months", -1, "months the serial reference runs on, the rest extrapolated (0 = all; -1 = the size's default)")
	fs.IntVar(&o.rounds, "rounds", 0, "rounds of limit and shardfill, interleaved; each is reported by its median (0 = the size's default)")
	scaleWith := fs.String("scale-with", "default", "a smaller size measured in the same run, interleaved, for the size ratio (none; default: the size's, medium for large)")
	variants := fs.String("variants", "", "server and layout variants, each against the limit on the same server: tuned,defaults,shuffled (empty: the usual report on the tuned server)")
	extra := fs.String("args", "", "extra flags for every `shardfill run`, e.g. \"--batch-rows 5000\"")
	fs.BoolVar(&o.explain, "explain", true, "write <size>-explain.txt: EXPLAIN ANALYZE of the largest slice's statements")
	fs.IntVar(&o.latency.Fixture.Workspaces, "latency-workspaces", o.latency.Fixture.Workspaces, "latency scenario: workspaces")
	fs.IntVar(&o.latency.Fixture.Rows, "latency-rows", o.latency.Fixture.Rows, "latency scenario: usage rows")
	fs.IntVar(&o.latency.Fixture.Months, "latency-months", o.latency.Fixture.Months, "latency scenario: months")
	fs.DurationVar(&o.latency.Delay, "latency-delay", o.latency.Delay, "latency scenario: delay added each way")
	fs.IntVar(&o.skew.Fixture.Rows, "skew-rows", o.skew.Fixture.Rows, "skew scenario: usage rows")
	fs.IntVar(&o.plan1m.Workspaces, "plan-workspaces", o.plan1m.Workspaces, "plan1m scenario: workspaces (× plan-months = slices)")
	fs.IntVar(&o.plan1m.Months, "plan-months", o.plan1m.Months, "plan1m scenario: months")
	issueRows := fs.String("issue-rows", "2000000", "lastactivity scenario: issues (it runs alone: -scenarios lastactivity)")
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	rows, err := lastActivityRows(*issueRows)
	if err != nil {
		return nil, err
	}
	o.issueRows = rows
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	size, err := SizeByName(o.size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	for _, m := range splitList(*modes) {
		if !slices.Contains([]string{ModeSerial, ModeLimit, ModeShardfill}, m) {
			return nil, fmt.Errorf("%w: unknown mode %q", errUsage, m)
		}
		o.modes = append(o.modes, m)
	}
	for _, c := range splitList(*conc) {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: bad concurrency %q", errUsage, c)
		}
		o.concurrency = append(o.concurrency, n)
	}
	switch *scen {
	case "default":
		o.scenarios = size.Scenarios
	case "all":
		o.scenarios = AllScenarios
	case "none", "":
	case ScenarioLastActivity:
		o.scenarios = []string{ScenarioLastActivity}
	default:
		for _, s := range splitList(*scen) {
			if !slices.Contains(AllScenarios, s) {
				return nil, fmt.Errorf("%w: unknown scenario %q", errUsage, s)
			}
			o.scenarios = append(o.scenarios, s)
		}
	}
	if o.rounds <= 0 {
		o.rounds = max(size.Rounds, 1)
	}
	if o.serialMonths < 0 {
		o.serialMonths = size.SerialMonths
	}
	switch *scaleWith {
	case "default":
		o.scaleWith = size.ScaleWith
	case "none", "":
	default:
		if _, err := SizeByName(*scaleWith); err != nil {
			return nil, fmt.Errorf("%w: -scale-with: %w", errUsage, err)
		}
		if *scaleWith == o.size {
			return nil, fmt.Errorf("%w: -scale-with names the size being measured", errUsage)
		}
		o.scaleWith = *scaleWith
	}
	for _, v := range splitList(*variants) {
		if !slices.Contains(AllVariants, v) {
			return nil, fmt.Errorf("%w: unknown variant %q (want %s)", errUsage, v, strings.Join(AllVariants, ","))
		}
		o.variants = append(o.variants, v)
	}
	o.extraArgs = strings.Fields(*extra)
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// command renders how the bench was called, for the report.
func command(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \"'$") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.TrimSpace("go run ./bench " + strings.Join(q, " "))
}

func run(ctx context.Context, args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	size, _ := SizeByName(o.size)
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w: shardfill binary %s not found (run `make build` first)", errUsage, o.bin)
	}
	started := time.Now()
	h := &Harness{
		Bin:       bin,
		ExtraArgs: o.extraArgs,
		LogDir:    filepath.Join(o.out, "tmp", o.size),
		Log:       os.Stderr,
	}

	srv, err := pgserver.Start(ctx)
	if err != nil {
		return err
	}
	defer srv.Stop()
	if err := Tune(ctx, srv); err != nil {
		return err
	}
	if slices.Equal(o.scenarios, []string{ScenarioLastActivity}) {
		return LastActivity(ctx, h, srv, o.issueRows, o.rounds, o.out, o.resultsDoc)
	}

	cfg := size.Fixture.WithDefaults()
	fmt.Fprintf(os.Stderr, "%s  %s: generating %d workspaces × %d months, ~%d rows (seed %d, skew %.1f)\n",
		time.Now().Format("15:04:05"), o.size, cfg.Workspaces, cfg.Months, cfg.Rows, cfg.Seed, cfg.Skew)
	db, err := GenerateDB(ctx, srv, "bench_"+o.size, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	st := db.Stats
	rep := &Report{
		Size:    o.size,
		Command: command(args),
		Started: started,
		Machine: DescribeMachine(ctx, db),
		DataSet: fmt.Sprintf("fixture seed %d: %d workspaces (long tail, skew %.1f), %d agents, %d tasks, **%d task_usage rows** over %d UTC months (%s → %s), generated in %s.",
			cfg.Seed, st.Workspaces, cfg.Skew, st.Agents, st.Tasks, st.Usage, cfg.Months,
			st.MinCreated.Format("2006-01-02"), st.MaxCreated.Format("2006-01-02"), db.GenerateTime.Round(time.Millisecond)),
	}

	// The smaller size of the size-ratio target lives in the same server
	// and is measured in the same rounds.
	var small *DB
	if o.scaleWith != "" {
		ssize, err := SizeByName(o.scaleWith)
		if err != nil {
			return err
		}
		scfg := ssize.Fixture.WithDefaults()
		fmt.Fprintf(os.Stderr, "%s  %s: generating %s for the size ratio, measured in the same rounds\n",
			time.Now().Format("15:04:05"), o.size, o.scaleWith)
		if small, err = GenerateDB(ctx, srv, "bench_"+o.scaleWith, scfg); err != nil {
			return err
		}
		defer small.Close()
	}

	if len(o.variants) > 0 {
		return runVariants(ctx, h, o, srv, db, small, rep.DataSet, started, args)
	}

	// Limit and shardfill run in interleaved rounds, so a slow spell of the
	// machine hits every mode alike, and each is reported by its median
	// round. Serial, minutes long, runs once.
	var lastRun int64
	this, scaled := newRounds(), newRounds()
	for round := 1; round <= o.rounds; round++ {
		if o.rounds > 1 {
			fmt.Fprintf(os.Stderr, "%s  %s: round %d of %d\n", time.Now().Format("15:04:05"), o.size, round, o.rounds)
		}
		runID, err := measure(ctx, h, o, db, round == 1, this)
		if err != nil {
			return err
		}
		lastRun = max(lastRun, runID)
		if small != nil {
			if _, err := measure(ctx, h, o, small, false, scaled); err != nil {
				return err
			}
		}
	}
	rep.Results = this.medians()
	if o.rounds > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("limit and shardfill ran in %d interleaved rounds; each row is the round with the median wall time (all rounds in the log).", o.rounds))
	}
	if o.explain && lastRun > 0 {
		text, err := h.Explain(ctx, db, lastRun)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(o.out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(o.out, o.size+"-explain.txt"), []byte(text), 0o644); err != nil {
			return err
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("EXPLAIN ANALYZE of the largest slice's statements: [%s-explain.txt](%s-explain.txt).", o.size, o.size))
	}

	for _, s := range o.scenarios {
		switch s {
		case ScenarioLatency:
			res, err := h.Latency(ctx, srv, o.latency)
			if err != nil {
				return err
			}
			rep.Scenarios = append(rep.Scenarios, res...)
		case ScenarioSkew:
			res, err := h.Skew(ctx, srv, o.skew)
			if err != nil {
				return err
			}
			rep.Scenarios = append(rep.Scenarios, res)
		case ScenarioPlan1M:
			res, err := h.Plan1M(ctx, srv, o.plan1m)
			if err != nil {
				return err
			}
			rep.Scenarios = append(rep.Scenarios, res)
		case ScenarioHealth:
			res, err := h.Health(ctx, srv, db, DefaultHealth())
			rep.Scenarios = append(rep.Scenarios, res...)
			if err != nil {
				return err
			}
		case ScenarioETA:
			res, err := h.ETA(ctx, db, 2)
			if err != nil {
				return err
			}
			rep.Scenarios = append(rep.Scenarios, res)
		}
	}

	if small != nil {
		rep.MediumSameRun = true
		rep.MediumWall = map[int]time.Duration{}
		for _, res := range scaled.medians() {
			switch res.Mode {
			case ModeLimit:
				rep.MediumLimit = res.Wall
			case ModeShardfill:
				rep.MediumWall[res.Concurrency] = res.Wall
			}
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("Size ratio: %s (%d usage rows, checked against its oracle) was measured in this run, "+
			"each round right after this size's, in the same server; its medians: %s.", o.scaleWith, small.Stats.Usage, scaled.summary()))
	} else if o.size == "large" {
		rep.MediumLimit = ReadWall(filepath.Join(o.out, "medium.csv"), ModeLimit, 0)
		rep.MediumWall = map[int]time.Duration{}
		for _, c := range o.concurrency {
			rep.MediumWall[c] = ReadWall(filepath.Join(o.out, "medium.csv"), ModeShardfill, c)
		}
	}
	rep.Notes = append(rep.Notes, "Slice times are claim → commit of the slice's batch (slices claimed together share their batch's time).",
		"Server: a throwaway PostgreSQL 15 with fsync off and shared_buffers = "+SharedBuffers()+" (a quarter of the machine's memory: the rollup and its indexes outgrow the test default).")
	rep.Notes = append(rep.Notes, "Peak RSS is the shardfill process's VmHWM, sampled every 10 ms from /proc. "+
		"wait4's ru_maxrss (CSV column rusage_maxrss_kib) is not used: Go starts children with vfork semantics and exec "+
		"records the peak of the replaced address space, i.e. the bench process's own RSS, so it reports at least the bench's size.")
	if len(o.extraArgs) > 0 {
		rep.Notes = append(rep.Notes, "Extra shardfill flags: `"+strings.Join(o.extraArgs, " ")+"`.")
	}
	rep.Total = time.Since(started)
	if err := rep.Write(o.out, o.resultsDoc); err != nil {
		return err
	}
	fmt.Print(rep.Markdown())
	fmt.Fprintf(os.Stderr, "wrote %s\n", filepath.Join(o.out, o.size+".md"))
	return nil
}

// rounds collects each mode's results over the rounds, in first-seen order.
type rounds struct {
	order []string
	byKey map[string][]Result
}

func newRounds() *rounds { return &rounds{byKey: map[string][]Result{}} }

func (r *rounds) keep(res Result) {
	key := res.Label()
	if _, ok := r.byKey[key]; !ok {
		r.order = append(r.order, key)
	}
	r.byKey[key] = append(r.byKey[key], res)
}

// medians is each mode's median round.
func (r *rounds) medians() []Result {
	var out []Result
	for _, key := range r.order {
		out = append(out, Median(r.byKey[key]))
	}
	return out
}

// summary lists the medians as "mode wall", for a note.
func (r *rounds) summary() string {
	var parts []string
	for _, res := range r.medians() {
		parts = append(parts, fmt.Sprintf("%s %.2f s", res.Label(), res.Wall.Seconds()))
	}
	return strings.Join(parts, ", ")
}

// measure runs one round of the modes on db into r and returns the last
// shardfill run's id. Serial, minutes long, runs only when withSerial (the
// first round of the measured size).
func measure(ctx context.Context, h *Harness, o *options, db *DB, withSerial bool, r *rounds) (int64, error) {
	var lastRun int64
	for _, mode := range o.modes {
		switch mode {
		case ModeLimit:
			res, err := h.Limit(ctx, db)
			if err != nil {
				return 0, err
			}
			r.keep(res)
		case ModeSerial:
			if !withSerial {
				continue
			}
			res, err := h.Serial(ctx, db, o.serialMonths)
			if err != nil {
				return 0, err
			}
			r.keep(res)
		case ModeShardfill:
			for _, c := range o.concurrency {
				res, err := h.Shardfill(ctx, db, c)
				if err != nil {
					return 0, err
				}
				lastRun = res.RunID
				r.keep(res)
			}
		}
	}
	return lastRun, nil
}
