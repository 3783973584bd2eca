package engine

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/shardfill/shardfill/checkpoint"
)

// ControlInterval is how often every process of a run reads the run's
// control record and acknowledges it in its registry row. Polling, not
// LISTEN/NOTIFY, so that it works through a session pooler.
const ControlInterval = 2 * time.Second

// Limits are the throttles a process runs under: its flags, overridden by
// the run's control record (shardfill set).
type Limits struct {
	Rate               float64       // slices per second; 0 = no limit
	Burst              int           // rate limiter bucket
	Concurrency        int           // workers allowed to claim at once
	SleepBetweenSlices time.Duration // each worker's pause after a batch
}

// Applied is what a process runs under after it applied a control record
// (Event.Applied of a ControlApplied event).
type Applied struct {
	Version  int64  // control version applied
	Limits   Limits // effective limits
	Paused   bool   // the run is paused
	PausedBy string // who paused it (when Paused)
	Holds    []Hold // what holds the gate (pause, throttles); empty when nothing does
	// Effective is the pace in force: Limits, lowered by the health
	// throttle while the database's signals say so.
	Effective Limits
}

// gate hold keys.
const holdPause = "pause"

// controller applies a run's control record to this process: the gate
// (pause, concurrency), the rate limiter and the sleep between batches; and
// it acknowledges what it applied in the process registry.
type controller struct {
	e       *Engine
	runID   int64
	lock    *cronLock // its backend is what the registry records
	own     Limits    // from Config: what a NULL in the control record means
	gate    *Gate
	limiter *rate.Limiter
	sleep   atomic.Int64 // SleepBetweenSlices in effect, ns
	burst   atomic.Int64 // Burst in effect
	rated   atomic.Bool  // a rate is in effect
	pausing atomic.Bool  // paused with batches still in flight, as last acknowledged
	health  *health      // nil when no health signal is on
	capped  int          // the concurrency last capped to MaxConcurrency, 0 if none (apply's alone)

	paceMu    sync.Mutex // serialises pace
	opLimits  Limits     // the operator's limits last applied (paceMu)
	effective Limits     // the pace in force (paceMu)

	mu      sync.Mutex
	applied Applied
	polled  bool
}

func (e *Engine) newController(runID int64, lock *cronLock) *controller {
	own := Limits{Rate: e.cfg.Rate, Burst: e.cfg.Burst, Concurrency: e.cfg.Concurrency, SleepBetweenSlices: e.cfg.SleepBetweenSlices}
	c := &controller{e: e, runID: runID, lock: lock, own: own, gate: NewGate(own.Concurrency),
		limiter: rate.NewLimiter(rateLimit(own.Rate), own.Burst)}
	c.sleep.Store(int64(own.SleepBetweenSlices))
	c.burst.Store(int64(own.Burst))
	c.rated.Store(own.Rate > 0)
	c.applied.Limits, c.applied.Effective = own, own
	c.opLimits, c.effective = own, own
	return c
}

// pace puts in force the operator's limits, lowered by the health
// throttle: the gate's concurrency and the rate limiter. It returns the
// pace in force.
func (c *controller) pace() Limits {
	c.paceMu.Lock()
	defer c.paceMu.Unlock()
	eff := c.opLimits
	eff.Concurrency, eff.Rate = c.health.effective(c.opLimits)
	c.limiter.SetLimit(rateLimit(eff.Rate))
	c.rated.Store(eff.Rate > 0)
	c.gate.SetLimit(eff.Concurrency)
	c.effective = eff
	return eff
}

// effectiveLimits is the pace in force.
func (c *controller) effectiveLimits() Limits {
	c.paceMu.Lock()
	defer c.paceMu.Unlock()
	return c.effective
}

func rateLimit(r float64) rate.Limit {
	if r > 0 {
		return rate.Limit(r)
	}
	return rate.Inf
}

// batchLimits bound one claim under the limits in effect: with a rate, a
// batch holds at most Burst slices (see Config.batchSlices).
func (c *controller) batchLimits() checkpoint.BatchLimits {
	slices := c.e.cfg.BatchSlices
	if c.rated.Load() {
		slices = min(slices, int(c.burst.Load()))
	}
	return checkpoint.BatchLimits{Rows: c.e.cfg.BatchRows, Slices: slices}
}

// sleepBetween is the pause after each batch in effect.
func (c *controller) sleepBetween() time.Duration { return time.Duration(c.sleep.Load()) }

// run polls the control record every ControlInterval until ctx ends or
// done is closed.
func (c *controller) run(ctx context.Context, done <-chan struct{}) error {
	every := func() time.Duration {
		// While batches in flight finish after a pause, look more often:
		// the registry then says "paused" as soon as the last one is done.
		if c.pausing.Load() {
			return ControlInterval / 8
		}
		return ControlInterval
	}
	return repeat(ctx, done, every, c.poll, c.e.cfg.Logger, "could not read the run's control record; keeping the limits in effect")
}

// repeat calls poll after every interval until ctx ends or done is
// closed. A failed poll is logged (as failed) and the next one tried: the
// process keeps what it applied last.
func repeat(ctx context.Context, done <-chan struct{}, interval func() time.Duration, poll func(context.Context) error,
	log *slog.Logger, failed string) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-done:
			return nil
		case <-time.After(interval()):
		}
		if err := poll(ctx); err != nil && ctx.Err() == nil {
			log.Warn(failed, "err", err)
		}
	}
}

// poll reads the control record, applies it and acknowledges it.
func (c *controller) poll(ctx context.Context) error {
	ctl, err := c.e.store.Control(ctx, c.runID)
	if err != nil {
		return err
	}
	c.apply(ctl)
	return c.acknowledge(ctx, checkpoint.ProcessState(""))
}

// apply puts a control record in force in this process.
func (c *controller) apply(ctl *checkpoint.Control) {
	log := c.e.cfg.Logger
	lim := c.own
	if v := ctl.Limits.Rate; v != nil {
		lim.Rate = *v
	}
	if v := ctl.Limits.Burst; v != nil {
		lim.Burst = *v
	}
	if v := ctl.Limits.Concurrency; v != nil {
		lim.Concurrency = *v
	}
	if v := ctl.Limits.SleepBetweenSlices; v != nil {
		lim.SleepBetweenSlices = *v
	}
	if max := c.e.cfg.MaxConcurrency; lim.Concurrency > max {
		// Said once per value asked for, not at every poll.
		if c.capped != lim.Concurrency {
			log.Warn("the run's concurrency is above this process's --max-concurrency; capped", "asked", lim.Concurrency, "max_concurrency", max)
		}
		c.capped = lim.Concurrency
		lim.Concurrency = max
	} else {
		c.capped = 0
	}
	c.limiter.SetBurst(lim.Burst)
	c.burst.Store(int64(lim.Burst))
	c.sleep.Store(int64(lim.SleepBetweenSlices))
	if c.health != nil {
		c.health.setLimits(lim)
	}
	c.paceMu.Lock()
	c.opLimits = lim
	c.paceMu.Unlock()
	eff := c.pace()
	pausedBy := ""
	if ctl.PausedBy != nil {
		pausedBy = *ctl.PausedBy
	}
	if ctl.Paused {
		reason := "paused"
		if pausedBy != "" {
			reason += " by " + pausedBy
		}
		c.gate.Hold(holdPause, reason)
	} else {
		c.gate.Release(holdPause)
	}

	c.mu.Lock()
	prev, first := c.applied, !c.polled
	c.applied = Applied{Version: ctl.Version, Limits: lim, Paused: ctl.Paused, PausedBy: pausedBy, Holds: c.gate.Holds(), Effective: eff}
	c.polled = true
	now := c.applied
	c.mu.Unlock()

	switch {
	case ctl.Paused && (first || !prev.Paused):
		at := ""
		if ctl.PausedAt != nil {
			at = ctl.PausedAt.UTC().Format(time.RFC3339)
		}
		log.Info("run is paused: finishing the batches in flight, then waiting for `shardfill unpause`",
			"run", c.runID, "paused_by", pausedBy, "paused_at", at)
	case !ctl.Paused && prev.Paused:
		log.Info("run unpaused: claiming again", "run", c.runID)
	}
	if !first && prev.Limits != lim {
		log.Info("limits changed", "run", c.runID, "control_version", ctl.Version, "rate", lim.Rate, "burst", lim.Burst,
			"concurrency", lim.Concurrency, "sleep_between_slices", lim.SleepBetweenSlices.String())
	}
	if first || prev.Version != now.Version || prev.Paused != now.Paused || prev.Limits != now.Limits || prev.Effective != now.Effective ||
		!slices.Equal(prev.Holds, now.Holds) {
		if c.e.cfg.OnEvent != nil {
			c.e.cfg.OnEvent(Event{Kind: ControlApplied, Applied: &now})
		}
	}
}

// acknowledge writes this process's registry row: the control version it
// applied, the limits it runs under and its state (derived from the gate
// unless given).
func (c *controller) acknowledge(ctx context.Context, state checkpoint.ProcessState) error {
	c.mu.Lock()
	a := c.applied
	c.mu.Unlock()
	holds := c.gate.Holds()
	var reasons []string
	heldByHealth := false
	for _, h := range holds {
		reasons = append(reasons, h.Reason)
		heldByHealth = heldByHealth || h.Key == holdHealth
	}
	if d := c.health.decision(); d.Reason != "" && !heldByHealth {
		// Red or recovering: slower, not held; status still says why.
		reasons = append(reasons, d.Reason)
	}
	if w := c.lock.yieldingTo(); w != nil {
		// No claim is made until the session served gives the lock back.
		reasons = append(reasons, fmt.Sprintf("yielding the cron lock to pid %d (%s)", w.pid, orNone(w.app)))
	}
	var reason *string
	if len(reasons) > 0 {
		r := strings.Join(reasons, "; ")
		reason = &r
	}
	eff := c.effectiveLimits()
	if state == "" {
		switch {
		case a.Paused && c.gate.Inside() > 0:
			state = checkpoint.ProcessPausing
		case a.Paused:
			state = checkpoint.ProcessPaused
		case len(holds) > 0, c.lock.yieldingTo() != nil:
			state = checkpoint.ProcessHeld
		default:
			state = checkpoint.ProcessWorking
		}
	}
	c.pausing.Store(state == checkpoint.ProcessPausing)
	host, _ := os.Hostname()
	// The lock backend is read apart from the yield's guard: a process
	// that yields keeps acknowledging, naming the backend queued for the
	// lock.
	return c.lock.naming(func(lockPID int) error {
		return c.e.store.Acknowledge(ctx, c.runID, checkpoint.Process{
			Owner: c.e.cfg.Owner, Host: host, OSPID: os.Getpid(), LockPID: lockPID, ControlVersion: a.Version,
			Rate: a.Limits.Rate, Burst: a.Limits.Burst, Concurrency: a.Limits.Concurrency,
			SleepBetweenSlices: a.Limits.SleepBetweenSlices, State: state, Reason: reason,
			EffectiveConcurrency: &eff.Concurrency, EffectiveRate: &eff.Rate,
		})
	})
}

// orNone is an application_name as a reason shows it.
func orNone(app string) string {
	if app == "" {
		return "no application_name"
	}
	return app
}

// exit marks this process's registry row exited. It uses a context of its
// own: ctx may be the cancelled one.
func (c *controller) exit(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.acknowledge(cctx, checkpoint.ProcessExited); err != nil {
		c.e.cfg.Logger.Debug("could not mark this process exited in the registry", "err", fmt.Sprint(err))
	}
}
