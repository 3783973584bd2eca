// Package metrics exposes a shardfill process to Prometheus: counters fed
// by the engine's events (engine.Config.OnEvent), run-wide gauges read from
// the checkpoint tables ([Metrics.ObserveStatus]), the limits in effect,
// and the process and Go collectors. It uses a registry of its own, never
// the global one, so that nothing else in the binary leaks into it.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/throttle"
)

// Metrics holds one process's collectors.
type Metrics struct {
	reg *prometheus.Registry

	slicesDone   prometheus.Counter
	rowsWritten  prometheus.Counter
	sourceRows   prometheus.Counter
	slicesFailed prometheus.Counter
	retries      prometheus.Counter
	lost         prometheus.Counter
	batchSeconds prometheus.Histogram

	slices       *prometheus.GaugeVec // by state
	rowsDone     prometheus.Gauge
	rowsTotal    prometheus.Gauge
	rowsPerSec   prometheus.Gauge
	eta          prometheus.Gauge
	paused       prometheus.Gauge
	throttled    *prometheus.GaugeVec // by reason (the hold's key)
	rate         prometheus.Gauge
	burst        prometheus.Gauge
	concurrency  prometheus.Gauge
	controlVer   prometheus.Gauge
	liveProcs    prometheus.Gauge
	lastObserved prometheus.Gauge

	effConc     prometheus.Gauge
	effRate     prometheus.Gauge
	signal      *prometheus.GaugeVec // by signal: its last value
	threshold   *prometheus.GaugeVec // by signal
	pollSeconds prometheus.Gauge

	jobInfo *prometheus.GaugeVec // 1, labelled with the job and its version

	mu      sync.Mutex
	held    map[string]bool // holds of the gate but the health throttle's, by key
	signals map[string]bool // health signals not green, by name
}

// New returns the collectors, registered in a registry of their own.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		f(c)
		return c
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		f(g)
		return g
	}
	m := &Metrics{reg: reg, held: map[string]bool{}, signals: map[string]bool{}}
	m.slicesDone = counter("shardfill_slices_done_total", "Slices this process completed (committed with their done mark).")
	m.rowsWritten = counter("shardfill_rows_written_total", "Rollup rows this process wrote.")
	m.sourceRows = counter("shardfill_source_rows_done_total", "Raw rows (as planned) of the slices this process completed.")
	m.slicesFailed = counter("shardfill_slices_failed_total", "Slices this process failed permanently.")
	m.retries = counter("shardfill_slice_retries_total", "Slice attempts this process retried after a transient error.")
	m.lost = counter("shardfill_slices_lost_total", "Claims of this process taken over by another worker.")
	m.batchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "shardfill_batch_duration_seconds", Help: "Duration of this process's committed batches (one transaction each).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14), // 5 ms .. ~41 s
	})
	f(m.batchSeconds)
	m.slices = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shardfill_run_slices", Help: "Slices of the run by state (checkpoint tables, all processes).",
	}, []string{"state"})
	f(m.slices)
	m.rowsDone = gauge("shardfill_run_rows_done", "Raw rows (as planned) of the run's done slices, all processes.")
	m.rowsTotal = gauge("shardfill_run_rows_total", "Raw rows (as planned) of the whole run.")
	m.rowsPerSec = gauge("shardfill_run_rows_per_second", "The run's pace over the last minute (or since its live processes started), all processes.")
	m.eta = gauge("shardfill_run_eta_seconds", "Estimated seconds until the run's last slice is done; -1 when unknown (paused, held, interrupted, no pace yet).")
	m.paused = gauge("shardfill_run_paused", "1 while the run is paused (shardfill pause).")
	m.throttled = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shardfill_throttled", Help: "1 while something holds this process back from claiming, by reason (pause, health throttles).",
	}, []string{"reason"})
	f(m.throttled)
	m.rate = gauge("shardfill_limit_rate", "Rate limit in effect in this process, slices per second (0 = no limit).")
	m.burst = gauge("shardfill_limit_burst", "Rate limiter burst in effect in this process.")
	m.concurrency = gauge("shardfill_limit_concurrency", "Workers this process lets claim at once.")
	m.effConc = gauge("shardfill_effective_concurrency", "Workers this process lets claim at once after the health throttle (at most shardfill_limit_concurrency).")
	m.effRate = gauge("shardfill_effective_rate", "Rate in effect in this process after the health throttle, slices per second (0 = no limit).")
	m.signal = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shardfill_health_signal", Help: "Each health signal's last reading, in its unit (replica_lag s, slot_wal bytes, archive_backlog segments, vacuum vacuums, blocked s, throttle_query 1 when it gave a reason); 0 when unreadable.",
	}, []string{"signal"})
	f(m.signal)
	m.threshold = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shardfill_health_threshold", Help: "Each health signal's threshold, in its unit: red above it, hold above twice it (0 for vacuum and the throttle query).",
	}, []string{"signal"})
	f(m.threshold)
	m.jobInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shardfill_job_info", Help: "1, labelled with the job this process runs and the version of its slice logic.",
	}, []string{"job", "version"})
	f(m.jobInfo)
	m.pollSeconds = gauge("shardfill_health_poll_seconds", "How long the last read of the health signals took.")
	m.controlVer = gauge("shardfill_control_version", "Version of the run's control record this process applied.")
	m.liveProcs = gauge("shardfill_run_live_processes", "Live processes working on the run.")
	m.lastObserved = gauge("shardfill_run_observed_timestamp_seconds", "When the run-wide gauges were last read from the checkpoint tables.")
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetJob names the job this process runs.
func (m *Metrics) SetJob(name, version string) {
	m.jobInfo.Reset()
	m.jobInfo.WithLabelValues(name, version).Set(1)
}

// Registry is the registry the collectors live in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Event counts one engine event; it is safe for concurrent use, as
// engine.Config.OnEvent must be.
func (m *Metrics) Event(ev engine.Event) {
	switch ev.Kind {
	case engine.SliceDone:
		m.slicesDone.Inc()
		m.rowsWritten.Add(float64(ev.Rows))
		m.sourceRows.Add(float64(ev.Slice.EstRows))
		if ev.BatchSlices > 0 {
			m.batchSeconds.Observe(ev.Duration.Seconds())
		}
	case engine.SliceFailed:
		m.slicesFailed.Inc()
	case engine.SliceRetry:
		m.retries.Inc()
	case engine.SliceLost:
		m.lost.Inc()
	case engine.RunStarted:
		m.rowsTotal.Set(float64(ev.Run.RowsTotal))
		m.rowsDone.Set(float64(ev.Counts.RowsDone))
		c := ev.Counts
		m.slices.WithLabelValues("pending").Set(float64(c.Pending))
		m.slices.WithLabelValues("running").Set(float64(c.Running))
		m.slices.WithLabelValues("done").Set(float64(c.Done))
		m.slices.WithLabelValues("failed").Set(float64(c.Failed))
		m.eta.Set(-1)
	case engine.ControlApplied:
		a := ev.Applied
		m.rate.Set(a.Limits.Rate)
		m.burst.Set(float64(a.Limits.Burst))
		m.concurrency.Set(float64(a.Limits.Concurrency))
		m.controlVer.Set(float64(a.Version))
		m.paused.Set(boolf(a.Paused))
		m.effConc.Set(float64(a.Effective.Concurrency))
		m.effRate.Set(a.Effective.Rate)
		m.mu.Lock()
		now := map[string]bool{}
		for _, h := range a.Holds {
			if h.Key == "throttle" {
				continue // the health throttle's: labelled by signal (HealthPolled)
			}
			now[h.Key] = true
			m.throttled.WithLabelValues(h.Key).Set(1)
		}
		for k := range m.held {
			if !now[k] {
				m.throttled.WithLabelValues(k).Set(0)
			}
		}
		m.held = now
		m.mu.Unlock()
	case engine.HealthPolled:
		h := ev.Health
		m.pollSeconds.Set(h.PollDuration.Seconds())
		m.effConc.Set(float64(h.Decision.EffectiveConcurrency))
		m.effRate.Set(h.Decision.EffectiveRate)
		m.mu.Lock()
		now := map[string]bool{}
		for _, r := range h.Readings {
			name := string(r.Signal)
			m.signal.WithLabelValues(name).Set(r.Value)
			m.threshold.WithLabelValues(name).Set(r.Threshold)
			if r.State != throttle.Green {
				now[name] = true
				m.throttled.WithLabelValues(name).Set(1)
			}
		}
		for k := range m.signals {
			if !now[k] {
				m.throttled.WithLabelValues(k).Set(0)
			}
		}
		m.signals = now
		m.mu.Unlock()
	}
}

// ObserveStatus sets the run-wide gauges from a status read.
func (m *Metrics) ObserveStatus(st *checkpoint.Status) {
	m.slices.WithLabelValues("pending").Set(float64(st.SlicesPending))
	m.slices.WithLabelValues("running").Set(float64(st.SlicesRunning))
	m.slices.WithLabelValues("done").Set(float64(st.SlicesDone))
	m.slices.WithLabelValues("failed").Set(float64(st.SlicesFailed))
	m.rowsDone.Set(float64(st.RowsDone))
	m.rowsTotal.Set(float64(st.RowsTotal))
	m.rowsPerSec.Set(st.RowsPerSecond)
	if st.ETASeconds != nil {
		m.eta.Set(*st.ETASeconds)
	} else {
		m.eta.Set(-1)
	}
	m.paused.Set(boolf(st.Paused))
	m.liveProcs.Set(float64(len(st.Processes)))
	m.lastObserved.Set(float64(time.Now().Unix()))
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves /metrics (the registry) and /healthz (200 while the
// process serves).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Serve listens on addr (HOST:PORT; port 0 picks a free one) and serves
// Handler until ctx ends. It returns the address it listens on, after
// listening, so that a bad address fails before any work starts.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}
