package main

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shardfill/shardfill/engine"
	"github.com/shardfill/shardfill/throttle"
)

// healthFlags are run's health throttle flags (README, "Throttling on the
// database's health"); --max-slot-wal is read as text (10GB, 512MB).
type healthFlags struct {
	maxSlotWAL string
}

// addHealthFlags binds the health flags to cfg.Health, which starts from
// throttle.DefaultConfig (engine.DefaultConfig).
func addHealthFlags(fs *pflag.FlagSet, cfg *engine.Config) *healthFlags {
	h := &healthFlags{maxSlotWAL: throttle.FormatBytes(cfg.Health.MaxSlotWAL)}
	fs.DurationVar(&cfg.Health.MaxReplicaLag, "max-replica-lag", cfg.Health.MaxReplicaLag,
		"slow down when a standby's replay lags (or stands still) more than this; hold above twice it (0 = off)")
	fs.StringVar(&h.maxSlotWAL, "max-slot-wal", h.maxSlotWAL,
		"slow down when a replication slot retains more WAL than this (10GB, 512MB); hold above twice it (0 = off)")
	fs.IntVar(&cfg.Health.MaxArchiveBacklog, "max-archive-backlog", cfg.Health.MaxArchiveBacklog,
		"slow down when more WAL segments than this wait for the archiver; hold above twice it (0 = off)")
	fs.Var((*vacuumFlag)(&cfg.Health.HoldOnVacuum), "hold-on-vacuum",
		"which vacuums of the tables the job writes hold the run while they run: wraparound (an autovacuum to prevent wraparound), all (every VACUUM and autovacuum; --hold-on-vacuum alone) or off")
	fs.Lookup("hold-on-vacuum").NoOptDefVal = string(throttle.VacuumAll)
	fs.DurationVar(&cfg.Health.MaxBlocked, "max-blocked", cfg.Health.MaxBlocked,
		"slow down when another session has waited longer than this on a lock of shardfill's; hold above twice it (0 = off)")
	fs.StringVar(&cfg.Health.ThrottleQuery, "throttle-query", cfg.Health.ThrottleQuery,
		"your own SQL, run read-only every poll: a non-NULL first column slows down, and is the reason shown (default none)")
	return h
}

// apply parses the text flags and records which signals the operator set
// explicitly: those refuse the run when this role cannot read them.
func (h *healthFlags) apply(cmd *cobra.Command, cfg *engine.Config) error {
	n, err := throttle.ParseBytes(h.maxSlotWAL)
	if err != nil {
		return usageError{fmt.Errorf("--max-slot-wal: %w", err)}
	}
	cfg.Health.MaxSlotWAL = n
	switch {
	case cfg.Health.MaxReplicaLag < 0:
		return usageError{fmt.Errorf("--max-replica-lag must be 0 (off) or positive, got %s", cfg.Health.MaxReplicaLag)}
	case cfg.Health.MaxArchiveBacklog < 0:
		return usageError{fmt.Errorf("--max-archive-backlog must be 0 (off) or positive, got %d", cfg.Health.MaxArchiveBacklog)}
	case cfg.Health.MaxBlocked < 0:
		return usageError{fmt.Errorf("--max-blocked must be 0 (off) or positive, got %s", cfg.Health.MaxBlocked)}
	}
	cfg.HealthExplicit = map[throttle.Signal]bool{}
	for _, s := range throttle.Signals {
		if cmd.Flags().Changed(strings.TrimPrefix(s.Flag(), "--")) {
			cfg.HealthExplicit[s] = true
		}
	}
	return nil
}

// defaultApplicationName names every connection shardfill opens
// "shardfill" unless the URL (or PGAPPNAME) names them: the blocked signal
// tells shardfill's backends by that prefix (the engine reads the name
// back from its connections), and the DBA sees who they are.
func defaultApplicationName(cfg *pgx.ConnConfig) {
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = throttle.DefaultApplicationName
	}
}

// vacuumFlag is --hold-on-vacuum: a mode, which also takes the booleans
// the flag took before it had modes.
type vacuumFlag throttle.VacuumHold

func (f *vacuumFlag) String() string { return string(*f) }
func (f *vacuumFlag) Type() string   { return "mode" }
func (f *vacuumFlag) Set(s string) error {
	v, err := throttle.ParseVacuumHold(s)
	if err == nil {
		*f = vacuumFlag(v)
	}
	return err
}
