package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/shardfill/shardfill/throttle"
)

// holdHealth is the gate hold key of the health throttle.
const holdHealth = "throttle"

// Health is one poll of the database's health signals and what this
// process made of it (Event.Health of a HealthPolled event).
type Health struct {
	// Readings are the enabled signals' readings, in throttle.Signals
	// order.
	Readings []throttle.Reading
	// Decision is the pace the throttle allows until the next poll.
	Decision throttle.Decision
	// PollDuration is how long reading the signals took.
	PollDuration time.Duration
}

// health paces a process on the database's health: every
// Health.PollInterval it reads the signals (throttle.Monitor), turns them
// into a pace (throttle.Controller) and applies it to the controller's
// gate and rate limiter, under the operator's limits, which still rule.
type health struct {
	e   *Engine
	ctl *controller
	mon *throttle.Monitor

	mu   sync.Mutex
	tc   *throttle.Controller // not safe for concurrent use: mu
	last throttle.Decision
}

// healthPreflight builds the Monitor of e's Health config and reads every
// signal once before anything is written: a signal the operator set
// explicitly that this role cannot read refuses the run (a
// *throttle.UnreadableError); one left at its default is logged and holds
// at run time whenever it matters. nil when no signal is on.
func (e *Engine) healthPreflight(ctx context.Context) (*throttle.Monitor, error) {
	if !e.cfg.healthOn() {
		return nil, nil
	}
	log := e.cfg.Logger
	cfg := e.cfg.Health
	if cfg.ApplicationName == "" {
		// The backends of this process are the pool's (and the lock
		// connection's, opened from the pool's configuration).
		if err := e.db.QueryRow(ctx, `SELECT current_setting('application_name')`).Scan(&cfg.ApplicationName); err != nil {
			return nil, err
		}
	}
	if cfg.MaxBlocked > 0 && cfg.ApplicationName == "" {
		if e.cfg.HealthExplicit[throttle.Blocked] {
			return nil, &ConfigError{"{MaxBlocked} needs this process's connections to carry an application_name " +
				"(set application_name in the database URL): the blocked signal tells shardfill's backends from the application's by it"}
		}
		log.Warn("the blocked signal is off: this process's connections carry no application_name to tell its backends by")
		cfg.MaxBlocked = 0
	}
	mon, err := throttle.NewMonitor(cfg)
	if err != nil {
		return nil, &ConfigError{healthMsg(err)}
	}
	warned, err := mon.Preflight(ctx, e.db, e.cfg.HealthExplicit)
	var unreadable *throttle.UnreadableError
	if errors.As(err, &unreadable) {
		return nil, fmt.Errorf("refusing to run: %w", err)
	}
	if err != nil {
		return nil, err
	}
	for _, r := range warned {
		log.Warn("a health signal cannot be read by this role: it holds the run whenever it cannot tell (fail closed)",
			"signal", string(r.Signal), "reason", r.Reason)
	}
	return mon, nil
}

func (e *Engine) newHealth(ctl *controller, mon *throttle.Monitor) *health {
	h := &health{e: e, ctl: ctl, mon: mon,
		tc: throttle.NewController(throttle.Limits{Concurrency: ctl.own.Concurrency, Rate: ctl.own.Rate})}
	// With an unlimited rate only the concurrency adapts: a rate the
	// throttle imposed would cut batches to --burst slices (one by
	// default), far below the pace it meant (SetMeasuredRate is not fed).
	h.last = throttle.Decision{EffectiveConcurrency: ctl.own.Concurrency, EffectiveRate: ctl.own.Rate}
	return h
}

// setLimits passes the operator's limits (flags, then `set`) on to the
// throttle, which never paces above them.
func (h *health) setLimits(l Limits) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tc.SetLimits(throttle.Limits{Concurrency: l.Concurrency, Rate: l.Rate})
}

// effective is the pace under the operator's limits l: l itself while
// the throttle holds nothing back, else the lower of each.
func (h *health) effective(l Limits) (concurrency int, rate float64) {
	if h == nil {
		return l.Concurrency, l.Rate
	}
	h.mu.Lock()
	d := h.last
	h.mu.Unlock()
	if d.Reason == "" {
		return l.Concurrency, l.Rate
	}
	concurrency = min(l.Concurrency, max(d.EffectiveConcurrency, 1))
	switch {
	case d.EffectiveRate == 0:
		rate = l.Rate
	case l.Rate == 0:
		rate = d.EffectiveRate
	default:
		rate = min(l.Rate, d.EffectiveRate)
	}
	return concurrency, rate
}

// decision is the last Decision and whether it holds the gate.
func (h *health) decision() throttle.Decision {
	if h == nil {
		return throttle.Decision{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// run polls every PollInterval until ctx ends or done is closed.
func (h *health) run(ctx context.Context, done <-chan struct{}) error {
	every := h.mon.Config().PollInterval
	return repeat(ctx, done, func() time.Duration { return every }, h.poll,
		h.e.cfg.Logger, "could not acknowledge the health throttle's pace in the registry")
}

// poll reads the signals once and applies the pace they allow.
func (h *health) poll(ctx context.Context) error {
	readings, err := h.mon.Poll(ctx, h.e.db)
	if err != nil {
		return nil // only ctx's: stopping
	}
	h.mu.Lock()
	d := h.tc.Observe(time.Now(), readings)
	h.last = d
	h.mu.Unlock()

	if d.Hold {
		h.ctl.gate.Hold(holdHealth, d.Reason)
	} else {
		h.ctl.gate.Release(holdHealth)
	}
	h.ctl.pace()
	if d.Changed {
		h.logTransition(d, readings)
	}
	if f := h.e.cfg.OnEvent; f != nil {
		f(Event{Kind: HealthPolled, Health: &Health{Readings: readings, Decision: d, PollDuration: h.mon.LastPollDuration()}})
	}
	if d.Changed {
		return h.ctl.acknowledge(ctx, "")
	}
	return nil
}

// logTransition logs one record per change of pace, hold or cause.
func (h *health) logTransition(d throttle.Decision, readings []throttle.Reading) {
	log := h.e.cfg.Logger
	var signals []string
	for _, r := range readings {
		if r.State != throttle.Green {
			signals = append(signals, string(r.Signal))
		}
	}
	attrs := []any{"run", h.ctl.runID, "signals", strings.Join(signals, ","), "reason", d.Reason,
		"effective_concurrency", d.EffectiveConcurrency, "effective_rate", math.Round(d.EffectiveRate*100) / 100}
	switch {
	case d.Hold:
		log.Warn("health: holding, no new claims until it clears (batches in flight finish)", attrs...)
	case len(signals) > 0:
		log.Warn("health: slowing down", attrs...)
	case d.Reason != "":
		log.Info("health: signals green, recovering step by step", attrs...)
	default:
		log.Info("health: back at the configured pace", attrs...)
	}
}
