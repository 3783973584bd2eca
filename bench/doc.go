// Command bench (shardfill-bench) measures shardfill against the two
// references it has to be judged by, on one generated database per size:
//
//   - serial: the command shardfill replaces, i.e. one call of
//     rollup_task_usage_hourly_window per calendar month over all
//     workspaces (our fixture's copy of the window function);
//   - limit: one INSERT … SELECT … GROUP BY of the whole history into the
//     empty rollup, the fastest a single statement can go on this machine;
//
// and the real shardfill binary, run as a subprocess at several
// concurrencies, with wall time, peak RSS and per-slice timings read back
// from its checkpoint tables. Every shardfill result is checked against the
// fixture's oracle (fixture.Diff) before it is reported: a wrong rollup
// fails the benchmark instead of being reported as fast.
//
// Extra scenarios isolate one property each: latency (a loopback proxy that
// adds a delay each way, to show that concurrency hides round trips), skew
// (one workspace holding a large share of the rows, to show the tail when
// the pool drains), and plan1m (planning a million slices).
//
// It writes bench/results/<size>.{md,csv}, a throughput chart and
// bench/RESULTS.md:
//
//	go run ./bench -size small -bin bin/shardfill
//
// `make bench SIZE=...` runs it. The measuring library and the command are
// one package main: they have one consumer, so nothing of it is importable.
package main
