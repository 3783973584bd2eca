package throttle

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Defaults of the [Config] fields ([DefaultConfig]); the CLI's flags show
// the same values. doc.go says why each is what it is.
const (
	DefaultMaxReplicaLag        = 30 * time.Second
	DefaultMaxSlotWAL           = 10 << 30 // 10GB
	DefaultMaxArchiveBacklog    = 42       // segments
	DefaultHoldOnVacuum         = VacuumWraparound
	DefaultMaxBlocked           = 5 * time.Second
	DefaultPollInterval         = 2 * time.Second
	DefaultThrottleQueryTimeout = time.Second
	DefaultApplicationName      = "shardfill"
	DefaultHoldAfterRed         = time.Minute
)

// VacuumHold says which vacuums of [Config.Tables] hold the run.
type VacuumHold string

const (
	// VacuumOff: no vacuum holds.
	VacuumOff VacuumHold = "off"
	// VacuumWraparound: an autovacuum that runs to prevent transaction ID
	// wraparound holds, and no other. That vacuum must not be starved; an
	// ordinary one (which a long backfill's own writes start) is better
	// finished with the run still working, and holding for it held runs
	// for seconds at a time for nothing.
	VacuumWraparound VacuumHold = "wraparound"
	// VacuumAll: every VACUUM and autovacuum holds.
	VacuumAll VacuumHold = "all"
)

// ParseVacuumHold reads a --hold-on-vacuum value: off, wraparound or
// all, and the booleans the flag took before it had modes (true is all,
// false is off).
func ParseVacuumHold(s string) (VacuumHold, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "off", "false":
		return VacuumOff, nil
	case "wraparound":
		return VacuumWraparound, nil
	case "all", "true":
		return VacuumAll, nil
	}
	return "", fmt.Errorf("want off, wraparound or all, got %q", s)
}

// Config says which signals a [Monitor] reads and where each turns red.
// Unlike engine.Config, a zero threshold means the signal is off (as the
// flags have it: --max-replica-lag 0 turns replica lag off), so start from
// [DefaultConfig] rather than from the zero value.
type Config struct {
	// MaxReplicaLag turns red when a standby's replay_lag exceeds it, or
	// when its replay position has not advanced for that long while WAL is
	// waiting for it; hold above twice it. 0 = off. Default
	// DefaultMaxReplicaLag.
	MaxReplicaLag time.Duration
	// MaxSlotWAL turns red when a replication slot retains more WAL than
	// this many bytes; hold above twice it. 0 = off. Default
	// DefaultMaxSlotWAL.
	MaxSlotWAL int64
	// MaxArchiveBacklog turns red when more WAL segments than this wait
	// for the archiver (.ready files); hold above twice it. 0 = off.
	// Default DefaultMaxArchiveBacklog.
	MaxArchiveBacklog int
	// HoldOnVacuum says which vacuums of Tables hold while they run: an
	// anti-wraparound autovacuum only, every vacuum, or none ("" is
	// none). Default DefaultHoldOnVacuum.
	HoldOnVacuum VacuumHold
	// MaxBlocked turns red when a backend other than shardfill's has
	// waited longer than this on a lock one of shardfill's backends holds;
	// hold above twice it. 0 = off. Default DefaultMaxBlocked.
	MaxBlocked time.Duration
	// ThrottleQuery is the operator's own SQL, run every poll in a
	// read-only transaction: a non-NULL first column of the first row is
	// red, and is the reason shown. "" = off. Default "".
	ThrottleQuery string
	// ThrottleQueryTimeout is the ThrottleQuery's statement_timeout; a
	// query that runs longer is unreadable (hold). Default
	// DefaultThrottleQueryTimeout.
	ThrottleQueryTimeout time.Duration
	// PollInterval is how often the caller should Poll; the Monitor itself
	// runs no loop. Default DefaultPollInterval.
	PollInterval time.Duration
	// HoldAfterRed turns a signal that has stayed red this long into a
	// hold. Default DefaultHoldAfterRed.
	HoldAfterRed time.Duration
	// Tables are the tables the job writes (names as to_regclass reads
	// them), whose vacuum holds it; the engine gives the job's. None: no
	// vacuum holds.
	Tables []string
	// ApplicationName is the application_name prefix of shardfill's own
	// backends, the lock holders the blocked signal looks at and the
	// waiters it ignores. Default DefaultApplicationName.
	ApplicationName string
}

// DefaultConfig is every signal at its default.
func DefaultConfig() Config {
	return Config{
		MaxReplicaLag:        DefaultMaxReplicaLag,
		MaxSlotWAL:           DefaultMaxSlotWAL,
		MaxArchiveBacklog:    DefaultMaxArchiveBacklog,
		HoldOnVacuum:         DefaultHoldOnVacuum,
		MaxBlocked:           DefaultMaxBlocked,
		ThrottleQueryTimeout: DefaultThrottleQueryTimeout,
		PollInterval:         DefaultPollInterval,
		HoldAfterRed:         DefaultHoldAfterRed,
		ApplicationName:      DefaultApplicationName,
	}
}

// Validate refuses negative thresholds and an empty ApplicationName while
// the blocked signal is on (every backend would count as shardfill's).
func (c Config) Validate() error {
	switch {
	case c.MaxReplicaLag < 0:
		return errors.New("max replica lag must not be negative")
	case c.MaxSlotWAL < 0:
		return errors.New("max slot WAL must not be negative")
	case c.MaxArchiveBacklog < 0:
		return errors.New("max archive backlog must not be negative")
	case c.MaxBlocked < 0:
		return errors.New("max blocked must not be negative")
	case c.ThrottleQueryTimeout < 0:
		return errors.New("throttle query timeout must not be negative")
	case c.PollInterval < 0:
		return errors.New("poll interval must not be negative")
	case c.HoldAfterRed < 0:
		return errors.New("hold after red must not be negative")
	case c.MaxBlocked > 0 && c.ApplicationName == "":
		return errors.New("max blocked needs the application_name of shardfill's backends")
	case c.HoldOnVacuum != "" && c.HoldOnVacuum != VacuumOff && c.HoldOnVacuum != VacuumWraparound && c.HoldOnVacuum != VacuumAll:
		return fmt.Errorf("hold on vacuum must be off, wraparound or all, got %q", c.HoldOnVacuum)
	}
	return nil
}

// withDefaults fills the settings that are not thresholds.
func (c Config) withDefaults() Config {
	if c.ThrottleQueryTimeout == 0 {
		c.ThrottleQueryTimeout = DefaultThrottleQueryTimeout
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.HoldAfterRed == 0 {
		c.HoldAfterRed = DefaultHoldAfterRed
	}
	return c
}

// Enabled reports whether the signal is on in c.
func (c Config) Enabled(s Signal) bool {
	switch s {
	case ReplicaLag:
		return c.MaxReplicaLag > 0
	case SlotWAL:
		return c.MaxSlotWAL > 0
	case ArchiveBacklog:
		return c.MaxArchiveBacklog > 0
	case Vacuum:
		return c.HoldOnVacuum == VacuumWraparound || c.HoldOnVacuum == VacuumAll
	case Blocked:
		return c.MaxBlocked > 0
	case ThrottleQuery:
		return c.ThrottleQuery != ""
	}
	return false
}

// byteUnits are PostgreSQL's memory units (powers of 1024, as in
// max_slot_wal_keep_size = '10GB'), plus their IEC spellings.
var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseBytes reads a size such as "10GB", "512MB", "1.5 GiB" or "1048576"
// (bytes). Units are powers of 1024, as in PostgreSQL's settings, and case
// does not matter.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult, ok := byteUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (kB, MB, GB, TB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int64(math.Round(v)), nil
}

// FormatBytes writes n in the largest unit ParseBytes reads back to about
// the same value ("10GB", "1.5MB", "512B").
func FormatBytes(n int64) string {
	units := []struct {
		name string
		size int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}}
	for _, u := range units {
		if n >= u.size || -n >= u.size {
			return strconv.FormatFloat(math.Round(float64(n)/float64(u.size)*10)/10, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// formatSeconds writes a duration in seconds the way reasons show it:
// whole seconds from 10 s up, tenths below.
func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	if d >= 10*time.Second {
		return d.Round(time.Second).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
