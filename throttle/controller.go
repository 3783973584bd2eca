package throttle

import (
	"fmt"
	"strings"
	"time"
)

// Constants of the [Controller]'s additive increase, multiplicative
// decrease; doc.go says why.
const (
	// GreenPolls is how many green polls in a row add back one step.
	GreenPolls = 3
	// RateStep is one step of rate, as a fraction of the full rate; it is
	// also the lowest fraction a red signal cuts the rate to.
	RateStep = 0.10
	// DecreaseInterval is the least time between two halvings while a
	// signal stays red: the database needs a while to show the effect of
	// the last cut (a standby to replay, a slot consumer to catch up).
	DecreaseInterval = 10 * time.Second
)

// Limits are a process's configured pace, as the operator set it (flags,
// then `set` at runtime).
type Limits struct {
	// Concurrency is the number of workers; below 1 counts as 1.
	Concurrency int
	// Rate is slices per second; 0 = unlimited.
	Rate float64
}

// Decision is the pace the Controller allows after a poll.
type Decision struct {
	// EffectiveConcurrency is how many workers may claim, 1 to the
	// configured Concurrency.
	EffectiveConcurrency int
	// EffectiveRate is slices per second; 0 = unlimited (only when the
	// configured rate is unlimited and nothing has cut it).
	EffectiveRate float64
	// Hold stops new claims: batches in flight finish, leases and locks
	// are kept.
	Hold bool
	// Reason says what holds the pace back; "" when nothing does.
	Reason string
	// Changed is true when the pace, the hold or the signals behind them
	// differ from the previous Decision: log a record then, not every poll.
	Changed bool
}

// Controller turns readings into a pace: additive increase,
// multiplicative decrease. A red reading halves concurrency and rate (at
// most every DecreaseInterval, never below one worker and RateStep of the
// full rate); a hold stops new claims (and halves too, so the pace resumes
// gently); GreenPolls green polls in a row add back one worker and RateStep
// of the full rate, up to the configured limits.
//
// With an unlimited configured rate there is no rate to halve until the
// caller reports the measured one ([Controller.SetMeasuredRate]): the first
// cut then limits the rate to half of it, and steps of RateStep of it climb
// back until the rate is unlimited again. Without a measurement only the
// concurrency adapts.
//
// A Controller is deterministic (time comes in through Observe) and not
// safe for concurrent use.
type Controller struct {
	limits   Limits
	conc     int
	rate     float64 // 0 = unlimited
	full     float64 // the rate the steps are fractions of, and the climb's top; 0 = none yet
	fullConc int     // the concurrency the climb goes back to
	measured float64

	greens  int
	lastCut time.Time
	cause   string // what the last cut was for, for the recovering reason
	prev    Decision
	prevKey string
}

// NewController starts at the configured limits.
func NewController(l Limits) *Controller {
	l = l.normal()
	c := &Controller{limits: l, conc: l.Concurrency, rate: l.Rate, full: l.Rate, fullConc: l.Concurrency}
	c.prev, c.prevKey = Decision{EffectiveConcurrency: c.conc, EffectiveRate: c.rate}, Green.String()+" "
	return c
}

func (l Limits) normal() Limits {
	l.Concurrency = max(l.Concurrency, 1)
	l.Rate = max(l.Rate, 0)
	return l
}

// throttled reports whether the pace is below the limits.
func (c *Controller) throttled() bool { return c.concCut() || c.rateCut() }

func (c *Controller) concCut() bool { return c.conc < c.limits.Concurrency }

func (c *Controller) rateCut() bool {
	return c.rate > 0 && (c.limits.Rate == 0 || c.rate < c.limits.Rate)
}

// SetLimits applies the operator's new limits. What the Controller has not
// cut follows them at once, up or down. What it has cut stays cut: a
// lower limit cuts it further at once; a higher one takes effect once the
// climb, which goes back only to where the Controller cut from (its own
// cut), is over: the operator's raise is never climbed step by step.
func (c *Controller) SetLimits(l Limits) {
	l = l.normal()
	concCut, rateCut := c.concCut(), c.rateCut()
	c.limits = l
	if concCut {
		c.conc, c.fullConc = min(c.conc, l.Concurrency), min(c.fullConc, l.Concurrency)
	} else {
		c.conc, c.fullConc = l.Concurrency, l.Concurrency
	}
	switch {
	case !rateCut:
		c.rate, c.full = l.Rate, l.Rate
	case l.Rate > 0:
		c.rate, c.full = min(c.rate, l.Rate), min(c.full, l.Rate)
	}
}

// SetMeasuredRate reports the slices per second the process achieves,
// for a cut of an unlimited rate to start from.
func (c *Controller) SetMeasuredRate(slicesPerSecond float64) {
	c.measured = max(slicesPerSecond, 0)
}

// Observe takes one poll's readings and returns the pace until the next.
func (c *Controller) Observe(now time.Time, readings []Reading) Decision {
	worst := Worst(readings)
	var names, reasons []string
	for _, r := range readings {
		if r.State == worst && worst != Green {
			names = append(names, string(r.Signal))
			reasons = append(reasons, r.Reason)
		}
	}
	d := Decision{}
	key := worst.String() + " " + strings.Join(names, ",")
	switch worst {
	case Red, Hold:
		c.greens = 0
		if c.lastCut.IsZero() || now.Sub(c.lastCut) >= DecreaseInterval {
			c.decrease()
			c.lastCut = now
		}
		c.cause = strings.Join(names, ", ")
		d.Hold = worst == Hold
		d.Reason = strings.Join(reasons, "; ")
	default:
		c.greens++
		if c.greens >= GreenPolls && c.throttled() {
			c.increase()
			c.greens = 0
		}
		if c.throttled() {
			d.Reason = fmt.Sprintf("recovering from %s: %s", c.cause, c.pace())
			key = "recovering"
		}
	}
	d.EffectiveConcurrency, d.EffectiveRate = c.conc, c.rate
	// A new pace is the throttle's news only while it cuts (now or at the
	// last poll): unthrottled, the pace follows the operator's limits,
	// and a `set` has nothing to do with health.
	cut := d.Reason != "" || c.prev.Reason != ""
	d.Changed = d.Hold != c.prev.Hold || key != c.prevKey || cut && (d.EffectiveConcurrency != c.prev.EffectiveConcurrency ||
		d.EffectiveRate != c.prev.EffectiveRate)
	c.prev, c.prevKey = d, key
	return d
}

// pace describes the effective limits against the configured ones.
func (c *Controller) pace() string {
	s := fmt.Sprintf("%d of %d workers", c.conc, c.limits.Concurrency)
	switch {
	case c.rate > 0 && c.limits.Rate > 0:
		s += fmt.Sprintf(", %.3g of %.3g slices/s", c.rate, c.limits.Rate)
	case c.rate > 0:
		s += fmt.Sprintf(", %.3g slices/s (unlimited from %.3g)", c.rate, c.full)
	}
	return s
}

func (c *Controller) decrease() {
	c.conc = max(1, c.conc/2)
	switch {
	case c.rate > 0:
		c.rate = max(c.full*RateStep, c.rate/2)
	case c.measured > 0: // unlimited so far: start from what it achieves
		c.full = c.measured
		c.rate = c.full / 2
	}
}

// increase climbs one step back towards where the Controller cut from;
// once there its cut is over and the operator's limits, whatever they
// became meanwhile, apply.
func (c *Controller) increase() {
	if c.conc++; c.conc >= c.fullConc {
		c.conc, c.fullConc = c.limits.Concurrency, c.limits.Concurrency
	}
	c.conc = min(c.conc, c.limits.Concurrency)
	if c.rate == 0 {
		return
	}
	c.rate += c.full * RateStep
	switch {
	case c.rate >= c.full*(1-RateStep/2): // float steps: back at full
		c.rate = c.limits.Rate // 0: unlimited again
		if c.rate > 0 {
			c.full = c.rate
		}
	case c.limits.Rate > 0:
		c.rate = min(c.rate, c.limits.Rate)
	}
}
