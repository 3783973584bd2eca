package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shardfill/shardfill/internal/fixture"
)

// historyEnd pins the fixture's End so that every run of a size generates
// the same rows (ids included), whatever the day.
var historyEnd = time.Date(2025, time.June, 20, 12, 0, 0, 0, time.UTC)

// Size is one benchmark data set and what runs on it by default.
type Size struct {
	Name    string
	Fixture fixture.Config
	// SerialMonths is how many months the serial reference runs on (the
	// rest is extrapolated by row share); 0 means every month.
	SerialMonths int
	// Scenarios run by default besides the main modes.
	Scenarios []string
	// Rounds of the limit and shardfill modes (median reported); 0 means 1.
	Rounds int
	// ScaleWith names a smaller size measured in the same run, round by
	// round with this one, for the time-ratio target: sizes run in
	// separate invocations minutes apart compare two states of the machine.
	ScaleWith string
}

// Sizes are the data sets of `-size`. Seeds are fixed: same size, same rows.
var Sizes = []Size{
	{
		Name: "small",
		Fixture: fixture.Config{Seed: 1, Workspaces: 200, Months: 12, Rows: 100_000,
			Skew: 1.1, End: historyEnd},
	},
	{
		Name: "medium",
		Fixture: fixture.Config{Seed: 2, Workspaces: 2_000, Months: 24, Rows: 1_000_000,
			Skew: 1.1, End: historyEnd},
		SerialMonths: 2,
		Scenarios:    []string{ScenarioLatency, ScenarioSkew, ScenarioPlan1M},
		// Identical runs differ by ±15 % on a small shared machine; the
		// targets are set on this size.
		Rounds: 3,
	},
	{
		Name: "large",
		Fixture: fixture.Config{Seed: 3, Workspaces: 2_000, Months: 24, Rows: 4_000_000,
			Skew: 1.1, End: historyEnd},
		SerialMonths: 2,
		ScaleWith:    "medium",
	},
	{
		// A manual run, not CI: ten times medium, 5 000 workspaces over three
		// years. Generating it takes several minutes on two cores; every
		// mode and variant of one invocation reuses the one database.
		Name: "xlarge",
		Fixture: fixture.Config{Seed: 4, Workspaces: 5_000, Months: 36, Rows: 10_000_000,
			Skew: 1.1, End: historyEnd},
		SerialMonths: 1,
		ScaleWith:    "medium",
	},
}

// SizeByName returns the size called name.
func SizeByName(name string) (Size, error) {
	i := slices.IndexFunc(Sizes, func(s Size) bool { return s.Name == name })
	if i < 0 {
		names := make([]string, len(Sizes))
		for k, s := range Sizes {
			names[k] = s.Name
		}
		return Size{}, fmt.Errorf("unknown size %q (want one of %s)", name, strings.Join(names, ", "))
	}
	return Sizes[i], nil
}

// Scenario names for `-scenarios`.
const (
	ScenarioLatency = "latency"
	ScenarioSkew    = "skew"
	ScenarioPlan1M  = "plan1m"
	// ScenarioHealth is in health.go, ScenarioETA in eta.go.
)

// AllScenarios lists every scenario in the order they run.
var AllScenarios = []string{ScenarioLatency, ScenarioSkew, ScenarioPlan1M, ScenarioHealth, ScenarioETA}
