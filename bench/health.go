package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/throttle"
)

// ScenarioHealth measures the health throttle: what polling the signals
// costs (a run with every signal at its default against one with all off,
// and the time of one poll against its 2 s interval), and a standby whose
// replay is paused mid-run (how soon the run holds, how long, how soon it
// picks up again).
const ScenarioHealth = "health"

// HealthConfig shapes the health scenario.
type HealthConfig struct {
	// Concurrency of the runs. Default 2.
	Concurrency int
	// Pause is how long the standby's replay stays paused. Default 10 s.
	Pause time.Duration
	// MaxReplicaLag is the run's --max-replica-lag in the paused-replay
	// run. Default 1 s (the standby reports every second).
	MaxReplicaLag time.Duration
	// Polls is how many polls the direct measurement times. Default 50.
	Polls int
	// Rounds of the off/defaults pair, interleaved; each is reported by
	// its median. Default 3.
	Rounds int
}

// DefaultHealth is the health scenario's default.
func DefaultHealth() HealthConfig {
	return HealthConfig{Concurrency: 2, Pause: 10 * time.Second, MaxReplicaLag: time.Second, Polls: 50, Rounds: 3}
}

// PacedRun is about how long the paused-replay run lasts unpaused.
const PacedRun = 20 * time.Second

// healthOff turns every health signal off.
var healthOff = []string{"--max-replica-lag", "0", "--max-slot-wal", "0", "--max-archive-backlog", "0",
	"--hold-on-vacuum=false", "--max-blocked", "0"}

// Health runs the health scenario on db (the size's data set) of srv.
func (h *Harness) Health(ctx context.Context, srv *pgserver.Server, db *DB, cfg HealthConfig) ([]Result, error) {
	c := strconv.Itoa(cfg.Concurrency)
	var out []Result
	run := func(variant, logName string, extra ...string) (Result, error) {
		if err := h.Reset(ctx, db); err != nil {
			return Result{}, err
		}
		h.logf("health: %s", variant)
		args := append([]string{"run", "--concurrency", c, "--rate", "0", "--no-progress", "--new-run"}, extra...)
		p, err := h.RunBinary(ctx, db.URL, logName, args...)
		res := Result{Scenario: ScenarioHealth, Mode: ModeShardfill, Concurrency: cfg.Concurrency, Variant: variant,
			Wall: p.Wall, Rows: db.UsageRows, MaxRSSKiB: p.MaxRSSKiB, RusageMaxRSSKiB: p.RusageMaxRSSKiB}
		if err != nil {
			return res, fmt.Errorf("health %s: %w", variant, err)
		}
		if err := h.readRun(ctx, db, &res); err != nil {
			return res, err
		}
		if err := Verify(ctx, db, "health "+variant); err != nil {
			return res, err
		}
		res.Verified = true
		return res, nil
	}

	// The polling cost, directly: one poll of every default signal, as
	// each process does every PollInterval.
	mon, err := throttle.NewMonitor(throttle.DefaultConfig())
	if err != nil {
		return nil, err
	}
	var total time.Duration
	for range cfg.Polls {
		if _, err := mon.Poll(ctx, db.Pool); err != nil {
			return nil, err
		}
		total += mon.LastPollDuration()
	}
	perPoll := total / time.Duration(max(cfg.Polls, 1))
	share := perPoll.Seconds() / throttle.DefaultPollInterval.Seconds()
	h.logf("health: one poll of the default signals takes %s: %.3f%% of a process's time at one poll per %s",
		perPoll.Round(time.Microsecond), 100*share, throttle.DefaultPollInterval)

	// Interleaved rounds: the machine is shared, so a pair run back to
	// back says more than two runs minutes apart.
	var offs, ons []Result
	for i := range max(cfg.Rounds, 1) {
		off, err := run("health off", fmt.Sprintf("health-off-%d", i), healthOff...)
		if err != nil {
			return out, err
		}
		on, err := run("health defaults", fmt.Sprintf("health-on-%d", i))
		if err != nil {
			return out, err
		}
		h.logf("health: round %d: off %s, defaults %s", i+1, off.Wall.Round(time.Millisecond), on.Wall.Round(time.Millisecond))
		offs, ons = append(offs, off), append(ons, on)
	}
	off, on := Median(offs), Median(ons)
	walls := func(rs []Result) string {
		var ws []string
		for _, r := range rs {
			ws = append(ws, r.Wall.Round(10*time.Millisecond).String())
		}
		return strings.Join(ws, ", ")
	}
	off.Note = fmt.Sprintf("every signal off; median of %d (%s); one poll of the defaults takes %s (%.2f%% of its %s interval)",
		len(offs), walls(offs), perPoll.Round(time.Microsecond), 100*share, throttle.DefaultPollInterval)
	out = append(out, off)
	on.Note = fmt.Sprintf("every signal at its default; median of %d (%s): %+.1f%% wall against off (polling goal < 2%%; noise ±15%%)",
		len(ons), walls(ons), 100*(on.Wall.Seconds()/off.Wall.Seconds()-1))
	out = append(out, on)

	paused, err := h.pausedReplay(ctx, srv, db, cfg, off.Slices)
	if err != nil {
		return out, err
	}
	return append(out, paused), nil
}

// pausedReplay runs with a streaming standby whose replay is paused for
// cfg.Pause once a fifth of the slices are done.
//
// The run is paced (--rate) to last about PacedRun whatever the data set's
// size, so that the pause falls mid-run; slices is the data set's slice
// count.
func (h *Harness) pausedReplay(ctx context.Context, srv *pgserver.Server, db *DB, cfg HealthConfig, slices int64) (Result, error) {
	// The standby inherits the primary's configuration: it reports its
	// replay position every second, so a stall shows within a second.
	admin, err := pgx.Connect(ctx, srv.AdminURL())
	if err != nil {
		return Result{}, err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, `ALTER SYSTEM SET wal_receiver_status_interval = '1s'`); err != nil {
		return Result{}, err
	}
	defer admin.Exec(context.WithoutCancel(ctx), `ALTER SYSTEM RESET wal_receiver_status_interval`)
	h.logf("health: starting a streaming standby")
	st, err := srv.StartStandby(ctx, pgserver.StandbyOptions{})
	if err != nil {
		return Result{}, fmt.Errorf("health: standby: %w", err)
	}
	defer st.Stop()
	sb, err := pgx.Connect(ctx, st.AdminURL())
	if err != nil {
		return Result{}, err
	}
	defer sb.Close(context.WithoutCancel(ctx))
	if err := h.Reset(ctx, db); err != nil {
		return Result{}, err
	}

	variant := fmt.Sprintf("replay paused %s", cfg.Pause)
	rate := max(float64(slices)/PacedRun.Seconds(), 1)
	burst := max(int(rate/10), 1)
	h.logf("health: %s", variant)
	type ended struct {
		p   Proc
		err error
	}
	end := make(chan ended, 1)
	go func() {
		p, err := h.RunBinary(ctx, db.URL, "health-paused", "run", "--concurrency", strconv.Itoa(cfg.Concurrency),
			"--rate", strconv.FormatFloat(rate, 'f', 1, 64), "--burst", strconv.Itoa(burst),
			"--no-progress", "--new-run", "--max-replica-lag", cfg.MaxReplicaLag.String())
		end <- ended{p, err}
	}()
	schema := pgx.Identifier{h.schema()}.Sanitize()
	progress := func() (done, total int64, state string) {
		_ = db.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE s.state = 'done'), count(*),
			       coalesce((SELECT p.state FROM `+schema+`.process p WHERE p.run_id = r.id AND p.state <> 'exited' LIMIT 1), '')
			FROM `+schema+`.run r JOIN `+schema+`.slice s ON s.run_id = r.id
			WHERE r.id = (SELECT max(id) FROM `+schema+`.run) GROUP BY r.id`).Scan(&done, &total, &state)
		return
	}
	// wait polls until cond holds or the run ends.
	wait := func(cond func(done, total int64, state string) bool) (bool, error) {
		for {
			select {
			case e := <-end:
				end <- e
				return false, e.err
			case <-time.After(50 * time.Millisecond):
			}
			if cond(progress()) {
				return true, nil
			}
		}
	}
	ok, err := wait(func(done, total int64, _ string) bool { return total > 0 && done*5 >= total })
	if err != nil || !ok {
		return Result{}, fmt.Errorf("health: the run ended before a fifth of it was done (%v): make the data set larger", err)
	}
	if _, err := sb.Exec(ctx, `SELECT pg_wal_replay_pause()`); err != nil {
		return Result{}, err
	}
	pausedAt := time.Now()
	var heldAt time.Time
	var doneAtHold int64
	if ok, err := wait(func(done, _ int64, state string) bool { doneAtHold = done; return state == "held" }); err != nil || !ok {
		return Result{}, fmt.Errorf("health: the run was never held while the replay was paused (%v)", err)
	}
	heldAt = time.Now()
	if rest := cfg.Pause - time.Since(pausedAt); rest > 0 {
		time.Sleep(rest)
	}
	doneBeforeResume, _, _ := progress()
	if _, err := sb.Exec(ctx, `SELECT pg_wal_replay_resume()`); err != nil {
		return Result{}, err
	}
	resumedAt := time.Now()
	if ok, err := wait(func(done, _ int64, _ string) bool { return done > doneBeforeResume }); err != nil && !ok {
		return Result{}, err
	}
	pickedUp := time.Since(resumedAt)
	e := <-end
	if e.err != nil {
		return Result{}, fmt.Errorf("health %s: %w", variant, e.err)
	}
	res := Result{Scenario: ScenarioHealth, Mode: ModeShardfill, Concurrency: cfg.Concurrency, Variant: variant,
		Wall: e.p.Wall, Rows: db.UsageRows, MaxRSSKiB: e.p.MaxRSSKiB, RusageMaxRSSKiB: e.p.RusageMaxRSSKiB}
	if err := h.readRun(ctx, db, &res); err != nil {
		return res, err
	}
	if err := Verify(ctx, db, "health "+variant); err != nil {
		return res, err
	}
	res.Verified = true
	res.Note = fmt.Sprintf("paced to ~%s (--rate %.1f --burst %d), --max-replica-lag %s: held %s after the pause, held %s "+
		"(%d slices of batches in flight finished meanwhile), first slice %s after the resume; %s over the paced %s",
		PacedRun, rate, burst, cfg.MaxReplicaLag, heldAt.Sub(pausedAt).Round(100*time.Millisecond), resumedAt.Sub(heldAt).Round(100*time.Millisecond),
		doneBeforeResume-doneAtHold, pickedUp.Round(100*time.Millisecond), (res.Wall - PacedRun).Round(100*time.Millisecond), PacedRun)
	h.logf("health: %s", res.Note)
	return res, nil
}
