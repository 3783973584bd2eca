package engine

import (
	"context"
	"errors"
	"sort"
	"sync"
)

// Gate is what a worker passes before each claim. It admits at most its
// limit of workers at a time, and none while anything holds it: a holder
// (the run's pause, a health throttle, a lock yield) calls Hold with a key
// of its own and a reason, and Release once it lets go. Holding does not
// interrupt the workers already inside: they finish their batch and leave,
// so a hold only means "claim nothing new". Every method is safe for
// concurrent use.
type Gate struct {
	mu      sync.Mutex
	limit   int
	inside  int
	holds   map[string]string // key → reason
	changed chan struct{}     // closed and replaced on every change
}

// ErrGateStopped is what Enter returns once the stop channel it was given is
// closed while it waited.
var ErrGateStopped = errors.New("gate stopped")

// NewGate returns a gate that admits limit workers at a time.
func NewGate(limit int) *Gate {
	return &Gate{limit: max(limit, 1), holds: map[string]string{}, changed: make(chan struct{})}
}

// notify wakes every waiter; g.mu is held.
func (g *Gate) notify() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// SetLimit changes how many workers may be inside at once. Lowering it
// lets the workers inside finish; no new one enters until fewer than the
// new limit are inside.
func (g *Gate) SetLimit(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n = max(n, 1); n != g.limit {
		g.limit = n
		g.notify()
	}
}

// Limit is how many workers may be inside at once.
func (g *Gate) Limit() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit
}

// Hold keeps new workers out, for reason, until Release(key). Holding
// again with the same key replaces the reason.
func (g *Gate) Hold(key, reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holds[key] = reason
	g.notify()
}

// Release lets go of key's hold.
func (g *Gate) Release(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.holds[key]; ok {
		delete(g.holds, key)
		g.notify()
	}
}

// Hold is one holder's hold on a gate.
type Hold struct {
	Key    string // who holds: "pause", a throttle's name; stable, fit for a metric label
	Reason string // why, for people
}

// Holds returns the holds on the gate, sorted by key; empty when it is not
// held.
func (g *Gate) Holds() []Hold {
	g.mu.Lock()
	defer g.mu.Unlock()
	holds := make([]Hold, 0, len(g.holds))
	for k, r := range g.holds {
		holds = append(holds, Hold{Key: k, Reason: r})
	}
	sort.Slice(holds, func(i, j int) bool { return holds[i].Key < holds[j].Key })
	return holds
}

// Held reports whether anything holds the gate.
func (g *Gate) Held() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.holds) > 0
}

// Inside is how many workers are inside now.
func (g *Gate) Inside() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inside
}

// Enter waits until the gate is not held and fewer than its limit are
// inside, then admits the caller, who must call leave (once) when done.
// It returns ctx's error when ctx ends, and ErrGateStopped when stop (which
// may be nil) is closed while it waits; a free gate admits even after stop.
func (g *Gate) Enter(ctx context.Context, stop <-chan struct{}) (leave func(), err error) {
	for {
		g.mu.Lock()
		if len(g.holds) == 0 && g.inside < g.limit {
			g.inside++
			g.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					g.mu.Lock()
					defer g.mu.Unlock()
					g.inside--
					g.notify()
				})
			}, nil
		}
		changed := g.changed
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-stop:
			return nil, ErrGateStopped
		case <-changed:
		}
	}
}
