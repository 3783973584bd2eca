package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgserver"
)

// Variants of the server and of the data's layout (-variants), each
// measured against the single statement on the same server and data.
const (
	// VariantTuned: the bench server as always (shared_buffers a quarter of
	// memory), rows in time order as generated.
	VariantTuned = "tuned"
	// VariantDefaults: PostgreSQL's memory defaults (shared_buffers 128MB,
	// work_mem 4MB), as on a server nobody tuned.
	VariantDefaults = "defaults"
	// VariantShuffled: the tuned server, with task_usage rewritten in task
	// order (CLUSTER … USING its task_id index; task ids are random), so
	// its physical order is no longer its time order, as after a restore
	// or a CLUSTER by task.
	VariantShuffled = "shuffled"
)

// AllVariants lists the variants in the order they run: shuffling
// rewrites the table in place, so it comes last.
var AllVariants = []string{VariantTuned, VariantDefaults, VariantShuffled}

// variantSettings are the server settings of a variant.
func variantSettings(v string) map[string]string {
	if v == VariantDefaults {
		return map[string]string{"shared_buffers": "128MB", "work_mem": "4MB"}
	}
	return map[string]string{"shared_buffers": SharedBuffers(), "work_mem": "4MB"}
}

// configure restarts the server with variant v's settings and prepares the
// data's layout.
func configure(ctx context.Context, h *Harness, srv *pgserver.Server, db *DB, v string) error {
	if !srv.External() {
		conn, err := pgx.Connect(ctx, srv.AdminURL())
		if err != nil {
			return err
		}
		for name, value := range variantSettings(v) {
			// ALTER SYSTEM takes no bind parameters; the values are ours.
			if _, err := conn.Exec(ctx, fmt.Sprintf(`ALTER SYSTEM SET %s = '%s'`, name, value)); err != nil {
				conn.Close(ctx)
				return fmt.Errorf("variant %s: %w", v, err)
			}
		}
		conn.Close(ctx)
		db.Pool.Reset()
		if err := srv.StopMode("fast"); err != nil {
			return err
		}
		if err := srv.Restart(ctx); err != nil {
			return err
		}
		db.Pool.Reset()
		var sb, wm string
		if err := db.Pool.QueryRow(ctx, `SELECT current_setting('shared_buffers'), current_setting('work_mem')`).Scan(&sb, &wm); err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		h.logf("%s: server restarted for variant %s: shared_buffers %s, work_mem %s", db.Name, v, sb, wm)
	}
	if v == VariantShuffled {
		h.logf("%s: shuffling task_usage (CLUSTER by task_id)", db.Name)
		start := time.Now()
		for _, sql := range []string{`CLUSTER task_usage USING idx_task_usage_task`, `VACUUM (ANALYZE) task_usage`} {
			if _, err := db.Pool.Exec(ctx, sql); err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
		}
		var corr float64
		_ = db.Pool.QueryRow(ctx, `SELECT correlation FROM pg_stats WHERE tablename = 'task_usage' AND attname = 'created_at'`).Scan(&corr)
		h.logf("%s: shuffled in %s; created_at's physical correlation now %.3f", db.Name, time.Since(start).Round(time.Millisecond), corr)
	}
	return nil
}

// VariantResult is one mode's median round in one variant.
type VariantResult struct {
	Variant string
	Result
	Rounds []time.Duration
}

// runVariants measures the limit and shardfill at each concurrency, in
// o.rounds interleaved rounds, once per variant, on one generated
// database, and writes <size>-variants.md and .csv.
// small, when not nil, is the smaller size of the size ratio, measured in
// the same rounds (its rows are labelled variant/size).
func runVariants(ctx context.Context, h *Harness, o *options, srv *pgserver.Server, db, small *DB, dataSet string, started time.Time, args []string) error {
	var out []VariantResult
	for _, v := range AllVariants {
		if !slices.Contains(o.variants, v) {
			continue
		}
		if err := configure(ctx, h, srv, db, v); err != nil {
			return err
		}
		if small != nil && v == VariantShuffled {
			if err := configure(ctx, h, srv, small, v); err != nil {
				return err
			}
		}
		r, rs := newRounds(), newRounds()
		for round := 1; round <= o.rounds; round++ {
			fmt.Fprintf(os.Stderr, "%s  %s/%s: round %d of %d\n", time.Now().Format("15:04:05"), o.size, v, round, o.rounds)
			if _, err := measure(ctx, h, o, db, false, r); err != nil {
				return fmt.Errorf("variant %s: %w", v, err)
			}
			if small != nil {
				if _, err := measure(ctx, h, o, small, false, rs); err != nil {
					return fmt.Errorf("variant %s, %s: %w", v, o.scaleWith, err)
				}
			}
		}
		for _, set := range []struct {
			name string
			r    *rounds
		}{{v, r}, {v + "/" + o.scaleWith, rs}} {
			for _, key := range set.r.order {
				var walls []time.Duration
				for _, res := range set.r.byKey[key] {
					walls = append(walls, res.Wall)
				}
				out = append(out, VariantResult{Variant: set.name, Result: Median(set.r.byKey[key]), Rounds: walls})
			}
		}
	}
	md := variantsMarkdown(o, out, dataSet, started, args)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, o.size+"-variants.md"), []byte(md), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(o.out, o.size+"-variants.csv"))
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write([]string{"variant", "mode", "concurrency", "wall_s", "rounds_s", "ratio_to_limit", "first_slice_s", "server_cpu_s", "server_cpu_ratio", "shardfill_cpu_s", "peak_rss_kib", "slices", "verified"})
	for _, vr := range out {
		var rounds []string
		for _, w := range vr.Rounds {
			rounds = append(rounds, fmt.Sprintf("%.3f", w.Seconds()))
		}
		_ = cw.Write([]string{vr.Variant, vr.Mode, fmt.Sprint(vr.Concurrency), fmt.Sprintf("%.3f", vr.Wall.Seconds()), strings.Join(rounds, " "),
			fmt.Sprintf("%.3f", ratioIn(out, vr)), fmt.Sprintf("%.3f", vr.FirstSlice.Seconds()), fmt.Sprintf("%.2f", vr.ServerCPU.Seconds()), fmt.Sprintf("%.3f", cpuRatioIn(out, vr)),
			fmt.Sprintf("%.2f", vr.ProcCPU.Seconds()), fmt.Sprint(vr.MaxRSSKiB), fmt.Sprint(vr.Slices), fmt.Sprint(vr.Verified)})
	}
	cw.Flush()
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Print(md)
	if o.resultsDoc != "" {
		return WriteResultsDoc(o.out, o.resultsDoc)
	}
	return nil
}

// cpuRatioIn is the server CPU vr made the server spend over what its
// variant's limit did (0 without one): on two cores shared with other
// work the wall ratio swings with whatever else runs, the CPU far less.
func cpuRatioIn(all []VariantResult, vr VariantResult) float64 {
	for _, l := range all {
		if l.Variant == vr.Variant && l.Mode == ModeLimit && l.ServerCPU > 0 {
			return vr.ServerCPU.Seconds() / l.ServerCPU.Seconds()
		}
	}
	return 0
}

// ratioIn is vr's wall time over its variant's limit (0 without one).
func ratioIn(all []VariantResult, vr VariantResult) float64 {
	for _, l := range all {
		if l.Variant == vr.Variant && l.Mode == ModeLimit && l.Wall > 0 {
			return vr.Wall.Seconds() / l.Wall.Seconds()
		}
	}
	return 0
}

// variantTargets are the targets for c=2 per size and variant.
var variantTargets = map[string]float64{
	"medium/" + VariantTuned: 0.60, "medium/" + VariantDefaults: 0.75, "medium/" + VariantShuffled: 0.70,
	"xlarge/" + VariantTuned: 0.65,
}

func variantsMarkdown(o *options, out []VariantResult, dataSet string, started time.Time, args []string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("## Size %s: server and layout variants\n\n", o.size)
	w("Measured %s in %s with\n\n```sh\n%s\n```\n\n", started.UTC().Format("2006-01-02 15:04 UTC"), time.Since(started).Round(time.Second), command(args))
	w("Data set: %s\n\n", dataSet)
	w("Variants: **tuned** = shared_buffers %s, work_mem 4MB; **defaults** = shared_buffers 128MB, work_mem 4MB (PostgreSQL's); "+
		"**shuffled** = tuned, with task_usage CLUSTERed by task_id (random uuids), so rows are out of time order. "+
		"Each variant restarts the server, then runs %d interleaved rounds; each row is the median round.\n\n", SharedBuffers(), o.rounds)
	w("| variant | mode | wall time | rounds | time / limit | target | first slice | server CPU | CPU / limit's | shardfill CPU | peak RSS | checked |\n")
	w("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, vr := range out {
		var rounds []string
		for _, d := range vr.Rounds {
			rounds = append(rounds, fmt.Sprintf("%.2f", d.Seconds()))
		}
		ratio, target, first, proc, rss := "1.00", "—", "—", "—", "—"
		if vr.Mode == ModeShardfill {
			ratio = fmt.Sprintf("%.2f", ratioIn(out, vr))
			if t, ok := variantTargets[o.size+"/"+vr.Variant]; ok && vr.Concurrency == 2 {
				status := "met"
				if ratioIn(out, vr) > t {
					status = "missed"
				}
				target = fmt.Sprintf("≤ %.2f (%s)", t, status)
			}
			first = fmt.Sprintf("%.2f s", vr.FirstSlice.Seconds())
			proc = fmt.Sprintf("%.2f s", vr.ProcCPU.Seconds())
			rss = fmtRSS(vr.MaxRSSKiB)
		}
		checked := "no"
		if vr.Verified {
			checked = "= oracle"
		}
		w("| %s | %s | %.2f s | %s | %s | %s | %s | %.1f s | %.2f | %s | %s | %s |\n", vr.Variant, vr.Label(), vr.Wall.Seconds(),
			strings.Join(rounds, ", "), ratio, target, first, vr.ServerCPU.Seconds(), cpuRatioIn(out, vr), proc, rss, checked)
	}
	for _, vr := range out {
		if vr.Mode != ModeShardfill || !strings.Contains(vr.Variant, "/") {
			continue
		}
		for _, big := range out {
			if big.Variant+"/"+o.scaleWith == vr.Variant && big.Mode == vr.Mode && big.Concurrency == vr.Concurrency && vr.Wall > 0 {
				w("\n%s / %s time, %s, %s: %.2f (target for xlarge / medium: ≤ 11)", o.size, o.scaleWith, big.Variant, vr.Label(), big.Wall.Seconds()/vr.Wall.Seconds())
			}
		}
	}
	w("\n\nServer CPU is user + system time of every server process during the mode (live ones from /proc, exited ones from the postmaster's reaped-children total); " +
		"first slice is from the binary's start to the first committed slice (time to first slice target: ≤ 2 s). " +
		"Figures from one 2-core machine shared with other work: single rounds of one mode differ by 10–30 %%.\n")
	return b.String()
}
