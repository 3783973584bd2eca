package throttle

// Signal names one health signal, as status, metrics and [Preflight]'s
// explicit set spell it.
type Signal string

// The signals, in the order a [Monitor] reads them.
const (
	ReplicaLag     Signal = "replica_lag"
	SlotWAL        Signal = "slot_wal"
	ArchiveBacklog Signal = "archive_backlog"
	Vacuum         Signal = "vacuum"
	Blocked        Signal = "blocked"
	ThrottleQuery  Signal = "throttle_query"
)

// Signals lists every signal in reading order.
var Signals = []Signal{ReplicaLag, SlotWAL, ArchiveBacklog, Vacuum, Blocked, ThrottleQuery}

// Flag is the command-line flag that sets the signal, for errors phrased
// the way the operator wrote the command.
func (s Signal) Flag() string {
	switch s {
	case ReplicaLag:
		return "--max-replica-lag"
	case SlotWAL:
		return "--max-slot-wal"
	case ArchiveBacklog:
		return "--max-archive-backlog"
	case Vacuum:
		return "--hold-on-vacuum"
	case Blocked:
		return "--max-blocked"
	case ThrottleQuery:
		return "--throttle-query"
	}
	return string(s)
}

// State is how much a reading holds shardfill back; a larger State holds
// it back more, so the worst of several readings is their maximum.
type State int

const (
	// Green: within the threshold.
	Green State = iota
	// Red: over the threshold; the [Controller] halves the pace.
	Red
	// Hold: over twice the threshold, red for [Config.HoldAfterRed], a
	// vacuum on a written table, or a signal that cannot be read: no new
	// claims until it clears.
	Hold
)

func (s State) String() string {
	switch s {
	case Green:
		return "green"
	case Red:
		return "red"
	case Hold:
		return "hold"
	}
	return "unknown"
}

// Reading is one signal's value at one poll.
type Reading struct {
	Signal Signal
	// Value is the signal's current value in Unit: the worst standby's
	// lag, the largest slot's retained WAL, the segments waiting, the
	// vacuums running on written tables, the longest wait on shardfill's
	// locks, 1 when the throttle query returned a reason. 0 when the
	// signal could not be read.
	Value float64
	// Threshold is the configured limit in Unit (0 for vacuum).
	Threshold float64
	// Unit is "s", "bytes", "segments", "vacuums" or "" (throttle query).
	Unit  string
	State State
	// Reason says why the reading is not green, naming the standby, slot
	// or table and the threshold; "" when green.
	Reason string
	// Unreadable marks a signal that could not be read: a hold whose
	// Reason says what to grant or fix.
	Unreadable bool
}

// Worst is the highest State among readings (Green for none).
func Worst(readings []Reading) State {
	w := Green
	for _, r := range readings {
		w = max(w, r.State)
	}
	return w
}
