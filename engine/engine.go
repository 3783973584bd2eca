package engine

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shardfill/shardfill/checkpoint"
	"github.com/shardfill/shardfill/job"
	"github.com/shardfill/shardfill/shard"
	"github.com/shardfill/shardfill/throttle"
)

// Job is what the engine asks of the backfill it drives: a job file bound
// to the database (package sqljob) is the implementation. Every
// statement on the job's own tables is the job's: the engine only
// schedules, checkpoints and retries. A job does its slices' work one of
// two ways: a [Queuer] sends a batch's statements in one round trip (the
// rollup's batch forms), a [SliceRunner] runs one slice's statements in
// turn.
type Job interface {
	// Name names the job's runs in the checkpoint tables.
	Name() string
	// Version identifies the slice logic; a run is only resumed by the
	// same version.
	Version() string
	// Lock is the advisory lock the engine holds while it works, and how.
	Lock() job.Lock
	// Tables are the tables the job writes: a run of another job that
	// writes one of them is refused while this one works, and the health
	// throttle watches their vacuums.
	Tables() []string
	// Needs are the table privileges the job's statements need, checked
	// before a run or repair writes anything.
	Needs() []job.Need
	// Preflight checks, without writing, that the database is ready; the
	// job may also learn from it what its statements can rely on. It runs
	// before any batch is queued.
	Preflight(ctx context.Context, q job.Querier) error
	// Pieces plans a run's slices (pieceRows: Config.PlanPieceRows).
	Pieces(pieceRows int64) checkpoint.Pieces
	// Preview tells what a run would do, reading only, in tx.
	Preview(ctx context.Context, tx pgx.Tx, opts job.PreviewOpts) (job.Preview, error)
	// Stamp runs the job's finish once every slice is done, in the
	// fenced transaction that closes the run: for the rollup, the hand-
	// over to the incremental job at the watermark at, for a run over the
	// history from from (nil: all of it). It reports false when there was
	// nothing to stamp.
	Stamp(ctx context.Context, tx job.Querier, at time.Time, from *time.Time) (bool, error)
}

// Queuer is a job whose batch work is a fixed list of statements.
type Queuer interface {
	// Queue appends the statements that do a batch's work to tx, the
	// batch's transaction; *written receives the rows written.
	Queue(tx *pgx.Batch, batch shard.Batch, written *int64)
}

// SliceRunner is a job whose slice work depends on its own results (a
// statement repeated until it changes no row); its batches hold one
// slice each.
type SliceRunner interface {
	// RunSlice does one slice's work in tx, the slice's fenced
	// transaction, and says whether it is done; rows is what it changed.
	RunSlice(ctx context.Context, tx pgx.Tx, sl shard.Slice) (v checkpoint.Verdict, rows int64, err error)
}

// Parameterized is a job run with the operator's parameters, which are
// stored with its run.
type Parameterized interface {
	Params() map[string]*string
}

func paramsOf(j Job) map[string]*string {
	if p, ok := j.(Parameterized); ok {
		return p.Params()
	}
	return nil
}

// Ranged is a job over a history that it hands over to an incremental
// job at a watermark (the rollup): its runs can be limited to recent
// history (Config.MonthsBack), and its finish stamps the watermark.
type Ranged interface {
	// HasRowsBefore reports whether raw rows older than at exist: history
	// that a run limited to start at at would leave out.
	HasRowsBefore(ctx context.Context, q job.Querier, at time.Time) (bool, error)
}

// EventKind says what happened to a slice.
type EventKind int

const (
	SliceDone      EventKind = iota // committed with its done mark
	SliceRetry                      // transient error, will be tried again
	SliceFailed                     // permanent error stored with the slice
	SliceLost                       // claim taken over by another worker
	RunStarted                      // the run was planned or resumed (Run, Counts)
	ControlApplied                  // this process applied the run's control record (Applied)
	HealthPolled                    // this process read the database's health signals (Health)
	PiecePlanned                    // a further piece of the run was planned (Run: its totals so far)
)

// Event reports one slice's progress to the caller (progress bars, metrics).
type Event struct {
	Kind  EventKind
	Slice shard.Slice
	Rows  int64 // rollup rows written (SliceDone; on the first slice of its batch)
	// BatchSlices is the size of the slice's batch, on the first SliceDone
	// event of a batch only (0 on the others): Duration is then the
	// batch's.
	BatchSlices int
	Duration    time.Duration
	Err         error
	Run         *checkpoint.Run   // RunStarted, PiecePlanned
	Counts      checkpoint.Counts // RunStarted: slices by state when this process joined
	Applied     *Applied          // ControlApplied: the limits and holds now in force
	Health      *Health           // HealthPolled: the readings and the pace they allow
}

// Engine runs backfills against one database.
type Engine struct {
	db    *pgxpool.Pool
	store *checkpoint.Store
	job   Job
	cfg   Config
}

// New returns an Engine that keeps its checkpoints in schema. cfg may be
// nil; its zero fields take their defaults, and the result is validated.
func New(db *pgxpool.Pool, schema string, j Job, cfg *Config) (*Engine, error) {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	if len(c.Health.Tables) == 0 {
		c.Health.Tables = j.Tables() // the vacuums that matter are the job's tables'
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := checkpoint.ValidSchema(schema); err != nil {
		return nil, &ConfigError{"{Schema}: " + err.Error()}
	}
	_, queues := j.(Queuer)
	_, runs := j.(SliceRunner)
	if !queues && !runs {
		return nil, fmt.Errorf("job %s neither queues nor runs slices", j.Name())
	}
	if _, ranged := j.(Ranged); !ranged && (c.MonthsBack != 0 || c.MonthsBackGiven) {
		return nil, &ConfigError{fmt.Sprintf("{MonthsBack} applies to a job planned by months; job %s is sliced by its own ranges", j.Name())}
	}
	l := j.Lock()
	store := checkpoint.NewJob(db, schema, j.Name(), l.Key, l.Fence).Writes(j.Tables())
	return &Engine{db: db, store: store, job: j, cfg: c}, nil
}

// Result is what a run did in this process.
type Result struct {
	Run         *checkpoint.Run
	Planned     bool // the run was planned by this call (not resumed)
	NothingToDo bool // the latest run was already done
	Executed    int64
	RowsWritten int64
	Outcome     checkpoint.Outcome
	Start       checkpoint.Counts // slice counts when this process joined
}

// StaleRunError refuses to resume a run planned by other slice logic: its
// done marks were made by statements this binary does not run. Start a new
// run (Config.NewRun).
type StaleRunError struct {
	RunID         int64
	Planned, Have string // logic versions
}

func (e *StaleRunError) Error() string {
	return fmt.Sprintf("run %d was planned by another version of the slice logic (%s, this binary has %s); its progress cannot be trusted",
		e.RunID, e.Planned, e.Have)
}

// Run plans or resumes the backfill and works until every slice is done, a
// slice fails permanently, or ctx is cancelled (ErrInterrupted). It goes
// through its phases in turn: checks that write nothing, joining the run's
// work under the job's lock, starting (or resuming) the run, working, and
// concluding it.
func (e *Engine) Run(ctx context.Context) (*Result, error) {
	pre, err := e.prepare(ctx)
	if err != nil {
		return nil, err
	}
	s, err := e.join(ctx)
	if err != nil {
		return nil, interrupted(ctx, err)
	}
	defer s.leave()
	res, err := e.start(s, pre)
	switch {
	case err != nil || res.NothingToDo:
		return res, err
	case e.cfg.PlanOnly:
		return res, s.stopped(e.planOnly(s.ctx, res))
	}
	ctl, err := e.steer(s, pre.health, res.Run.ID)
	defer ctl.exit(s.ctx) // after the run is concluded: this process is live until then
	if err != nil {
		return res, err
	}
	if err := e.workOn(s, ctl, res); err != nil {
		return res, err
	}
	defer e.refresh(s.ctx, res)
	return res, s.stopped(e.conclude(s, res))
}

// prepared is what the checks before a run found.
type prepared struct {
	health    *throttle.Monitor // nil: no health signal on (or planning only)
	rangeFrom *time.Time        // the run's lower time bound, nil = all history
}

// prepare checks, writing nothing and holding no lock, that the run can
// go ahead: the server takes writes, the job's statements and privileges
// check out, the health signals the operator asked for can be read, and
// the range asked for leaves no history out unless forced.
func (e *Engine) prepare(ctx context.Context) (prepared, error) {
	var pre prepared
	if err := e.requireWritable(ctx, "a run (or planning one, {PlanOnly}), which writes the rollup and its checkpoint tables,"); err != nil {
		return pre, err
	}
	if err := e.Preflight(ctx, true); err != nil {
		return pre, err
	}
	var err error
	if !e.cfg.PlanOnly {
		if pre.health, err = e.healthPreflight(ctx); err != nil {
			return pre, err
		}
	}
	pre.rangeFrom, err = e.rangeFrom(ctx)
	return pre, err
}

// session is this process's part in a run's work: the job's lock, held on
// a connection of its own and watched from the moment it is taken,
// planning included. Should the lock's connection die, ctx ends with
// ErrLockLost; should a session want the lock exclusively, it is yielded
// (and the run's claims re-pointed to the new connection).
type session struct {
	lock   *cronLock
	parent context.Context // the caller's
	ctx    context.Context // parent, ended too should the lock be lost
	runID  atomic.Int64    // the run whose claims a yield re-points; 0 before it is known
	lost   context.CancelCauseFunc
	watch  func() // stops the watcher and waits for it
}

// join takes the job's lock (and the schema's membership with it) and
// starts watching it.
func (e *Engine) join(ctx context.Context) (*session, error) {
	lock, err := acquireLock(ctx, e.db, e.job.Lock(), e.store.Join, e.cfg.Logger)
	if err != nil {
		return nil, err
	}
	s := &session{lock: lock, parent: ctx}
	s.ctx, s.lost = context.WithCancelCause(ctx)
	s.watch = lock.watching(s.ctx, s.lost, ctx, func(rctx context.Context, pid int) error {
		if id := s.runID.Load(); id != 0 {
			return e.store.Repoint(rctx, id, e.cfg.Owner, pid)
		}
		return nil
	})
	return s, nil
}

// leave ends the session. The order is the invariant: the watcher must be
// gone before the lock's connection closes.
func (s *session) leave() {
	s.watch()
	s.lost(nil)
	s.lock.Close()
}

// stopped maps an error of a step under the session (see stopped).
func (s *session) stopped(err error) error { return stopped(s.parent, s.ctx, err) }

// start migrates the checkpoint tables, makes sure no other backfill
// writes what this job writes, and plans a run or resumes the latest.
func (e *Engine) start(s *session, pre prepared) (*Result, error) {
	ctx, log := s.ctx, e.cfg.Logger
	var untrusted *checkpoint.UntrustedError
	if err := e.store.Migrate(ctx); errors.As(err, &untrusted) {
		return nil, &ConfigError{fmt.Sprintf("refusing {Schema} %s: %s. Whoever controls them could make this role run "+
			"their code (a trigger) with its privileges; use a schema this role owns, or hand this one over (ALTER SCHEMA … OWNER TO, ALTER TABLE … OWNER TO)",
			untrusted.Schema, untrusted.Error())}
	} else if err != nil {
		return nil, s.stopped(err)
	}
	if err := e.alone(ctx, s.lock.backend()); err != nil {
		return nil, s.stopped(err)
	}
	run, planned, err := e.store.Start(ctx, checkpoint.PlanSpec{
		Pieces: e.job.Pieces(e.cfg.PlanPieceRows), Params: paramsOf(e.job),
		RangeFrom: pre.rangeFrom, MaxSliceRows: e.cfg.MaxSliceRows, Timeout: e.cfg.PlanTimeout,
		LogicVersion: e.job.Version(), NewRun: e.cfg.NewRun, Force: e.cfg.Force, Self: s.lock.backend(),
	})
	var busy *checkpoint.BusyError
	if errors.As(err, &busy) {
		return nil, &ConfigError{fmt.Sprintf("{NewRun} would supersede run %d while %d other processes still work on it (lock backends %v): "+
			"stop them first, or add {Force} to supersede it anyway (they stop within seconds)", busy.RunID, len(busy.PIDs), busy.PIDs)}
	}
	if err != nil {
		return nil, s.stopped(err)
	}
	s.runID.Store(run.ID)
	res := &Result{Run: run, Planned: planned}
	if !planned && run.Finished() {
		log.Info("latest run is already done; nothing to do", "run", run.ID)
		res.NothingToDo = true
		return res, nil
	}
	if run.LogicVersion != e.job.Version() {
		return nil, &StaleRunError{RunID: run.ID, Planned: run.LogicVersion, Have: e.job.Version()}
	}
	if res.Start, err = e.store.Counts(ctx, run.ID); err != nil {
		return nil, s.stopped(err)
	}
	if planned {
		log.Info("planned run", "run", run.ID, "slices", run.SlicesTotal, "rows", run.RowsTotal,
			"watermark_target", run.WatermarkTarget.UTC().Format(time.RFC3339))
	} else {
		log.Info("resuming run", "run", run.ID, "done", res.Start.Done, "of", res.Start.Total)
		// Only a range the operator asked for is worth a warning: a resume
		// with no range given simply keeps the planned one.
		if (e.cfg.MonthsBack != 0 || e.cfg.MonthsBackGiven) && !sameBound(run.RangeFrom, pre.rangeFrom) {
			log.Warn("resuming keeps the range the run was planned with; a range applies to a new run",
				"run", run.ID, "planned_from", run.RangeFrom, "asked_from", pre.rangeFrom)
		}
	}
	if e.cfg.OnEvent != nil {
		e.cfg.OnEvent(Event{Kind: RunStarted, Run: run, Counts: res.Start})
	}
	return res, nil
}

// planOnly plans every piece of the run left and leaves it planned.
func (e *Engine) planOnly(ctx context.Context, res *Result) error {
	if err := e.planAll(ctx, res.Run.ID); err != nil {
		return err
	}
	var err error
	if res.Planned {
		err = e.store.SetState(ctx, res.Run.ID, checkpoint.StatePlanned)
	}
	e.refresh(ctx, res)
	return err
}

// steer sets up the control of this process's part in the run and reads
// the run's control record and health signals once, before any worker
// starts, so a paused run, or one on a database in trouble, claims nothing
// when joined.
func (e *Engine) steer(s *session, health *throttle.Monitor, runID int64) (*controller, error) {
	ctl := e.newController(runID, s.lock)
	if health != nil {
		ctl.health = e.newHealth(ctl, health)
	}
	if err := ctl.poll(s.ctx); err != nil {
		return ctl, s.stopped(err)
	}
	if ctl.health != nil {
		if err := ctl.health.poll(s.ctx); err != nil {
			return ctl, s.stopped(err)
		}
	}
	return ctl, nil
}

// workOn works until no slice is left for this process. Should the work
// stop short, this process's claims are handed back.
func (e *Engine) workOn(s *session, ctl *controller, res *Result) error {
	if err := e.workWhilePlanning(s.ctx, s.lock, ctl, res.Run, res); err != nil {
		e.handBack(s.parent, res.Run.ID, err)
		return s.stopped(err)
	}
	return nil
}

// conclude closes the run once every slice is done (see finish) and says
// how it ended.
func (e *Engine) conclude(s *session, res *Result) error {
	run, log := res.Run, e.cfg.Logger
	var err error
	if res.Outcome, err = e.finish(s.ctx, s.lock, run); err != nil {
		return err
	}
	switch {
	case res.Outcome.State == checkpoint.StateFailed:
		return &FailedError{RunID: run.ID, Failed: res.Outcome.Counts.Failed}
	case res.Outcome.State != checkpoint.StateDone:
	case !e.Watermarked() && res.Outcome.Closed:
		log.Info("run done; the job's finish ran", "run", run.ID, "job", e.job.Name())
	case !e.Watermarked():
		log.Info("run already done by another process", "run", run.ID, "job", e.job.Name())
	case res.Outcome.Stamped && res.Outcome.Closed:
		log.Info("run done; watermark stamped", "run", run.ID, "watermark_at", run.WatermarkTarget.UTC().Format(time.RFC3339))
	case res.Outcome.Stamped:
		log.Info("run already done; the watermark was stamped by another process", "run", run.ID,
			"watermark_at", run.WatermarkTarget.UTC().Format(time.RFC3339), "stamped_at", res.Outcome.StampedAt.UTC().Format(time.RFC3339))
	default:
		log.Warn("run done but the job found nothing to stamp: watermark NOT stamped; "+
			"insert the state row and set watermark_at yourself", "run", run.ID, "watermark_target", run.WatermarkTarget)
	}
	return nil
}

// workWhilePlanning runs the workers while this process's planner plans
// the run's remaining pieces (none for a run fully planned). A planning
// error stops the workers and is returned.
func (e *Engine) workWhilePlanning(ctx context.Context, lock *cronLock, ctl *controller, run *checkpoint.Run, res *Result) error {
	if run.PlanningDone {
		return e.workUntilDone(ctx, lock, ctl, nil, res)
	}
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	p := newPlanner(e, run.ID)
	planning := make(chan error, 1)
	go func() {
		err := p.run(wctx)
		if err != nil && wctx.Err() == nil {
			stop(fmt.Errorf("plan: %w", err))
		}
		planning <- err
	}()
	err := e.workUntilDone(wctx, lock, ctl, p, res)
	if cause := context.Cause(wctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause // the planner failed and stopped the workers
	}
	stop(nil)
	<-planning
	return err
}

// refresh re-reads the run into res: its totals are final once planning
// is done, which may be after it was started.
func (e *Engine) refresh(ctx context.Context, res *Result) {
	if run, err := e.store.GetRun(context.WithoutCancel(ctx), res.Run.ID); err == nil && run != nil {
		res.Run = run
	}
}

// finish closes the run and stamps the watermark when every slice is done,
// fenced by the cron lock like a slice. A session queued for the cron lock
// exclusively (a cron tick, the application) only delays it: contention
// never fails a run.
func (e *Engine) finish(ctx context.Context, lock *cronLock, run *checkpoint.Run) (checkpoint.Outcome, error) {
	stamp := func(ctx context.Context, tx pgx.Tx, at time.Time) (bool, error) {
		return e.job.Stamp(ctx, tx, at, run.RangeFrom)
	}
	for attempt := 1; ; attempt++ {
		pid, leave := lock.enter()
		out, err := e.store.Finish(ctx, run.ID, checkpoint.Claimant{Owner: e.cfg.Owner, PID: pid}, stamp)
		leave()
		if !errors.Is(err, checkpoint.ErrLockContended) {
			return out, err
		}
		e.cfg.Logger.Info("the stamp waits for a session queued for the cron lock", "attempt", attempt)
		if err := sleep(ctx, backoff(e.cfg.Backoff, attempt)); err != nil {
			return out, err
		}
	}
}

// alone makes sure that no backfill of another checkpoint schema works on
// the same rollup: each would take the other's writes for its own. This
// process took its membership lock with the cron lock, before looking: two
// processes of two schemas starting together both see the other and both
// refuse, rather than both going on.
func (e *Engine) alone(ctx context.Context, self int) error {
	other, err := e.store.OtherJobs(ctx, self)
	if err != nil {
		return err
	}
	if other != "" {
		return &ConfigError{fmt.Sprintf("another job is writing a table job %s writes (%s): two jobs must never replace the same rows at once; "+
			"wait for it to end, or stop it", e.job.Name(), other)}
	}
	other, err = e.store.OtherSchemas(ctx, self)
	if err != nil || other == "" {
		return err
	}
	return &ConfigError{fmt.Sprintf("another backfill, with other checkpoint tables ({Schema}), is working on this database's rollup (%s): "+
		"two runs must never write the same rollup; wait for it to end or stop it, then use one schema", other)}
}

// stopped maps an error of a step after the lock was taken: the lock lost
// (the watcher cancelled watched with ErrLockLost) is said as such, a stop
// of the caller's context as ErrInterrupted.
func stopped(parent, watched context.Context, err error) error {
	if cause := context.Cause(watched); err != nil && parent.Err() == nil && errors.Is(cause, ErrLockLost) {
		return cause
	}
	return interrupted(parent, err)
}

// workUntilDone runs the pool until no slice is left for this process.
// Anything still claimed by it once every worker is done was stranded (its
// batch was partly taken over mid-way): it is handed back and worked again,
// so the run cannot end unfinished.
func (e *Engine) workUntilDone(ctx context.Context, lock *cronLock, ctl *controller, p *planner, res *Result) error {
	runID := ctl.runID
	for {
		if err := e.work(ctx, lock, ctl, p, res); err != nil {
			return err
		}
		stranded, err := e.store.Release(ctx, runID, e.cfg.Owner)
		if err != nil || stranded == 0 {
			return err
		}
		e.cfg.Logger.Warn("slices left claimed by this process were handed back; working on", "slices", stranded)
	}
}

// handBack releases this process's claims after the work stopped with
// workErr, and records the run as interrupted or failed unless another
// process still works on it. It uses a context of its own: ctx may be the
// cancelled one.
func (e *Engine) handBack(ctx context.Context, runID int64, workErr error) {
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := e.store.Release(cleanup, runID, e.cfg.Owner); err != nil {
		e.cfg.Logger.Warn("could not release claims; they are reclaimed once this process's lock is gone", "err", err)
	}
	state := checkpoint.StateInterrupted
	if ctx.Err() == nil && !errors.Is(workErr, ErrLockLost) {
		state = checkpoint.StateFailed
	}
	if others, err := e.store.OthersActive(cleanup, runID, e.cfg.Owner); err == nil && !others {
		_ = e.store.SetState(cleanup, runID, state)
	}
}

// sameBound reports whether two optional range bounds are equal.
func sameBound(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// rangeFrom turns MonthsBack into a lower bound, refusing to abandon
// older history unless the operator forced it.
func (e *Engine) rangeFrom(ctx context.Context) (*time.Time, error) {
	if e.cfg.MonthsBack == 0 {
		return nil, nil
	}
	from, err := e.monthsBackStart(ctx)
	if err != nil {
		return nil, err
	}
	older, err := e.job.(Ranged).HasRowsBefore(ctx, e.db, from)
	if err != nil {
		return nil, err
	}
	if older && !e.cfg.ForcePartial {
		return nil, &ConfigError{fmt.Sprintf("refusing {MonthsBack} %d: the history holds rows before %s that this run would not roll up, "+
			"yet the watermark would still advance past them; add {ForcePartial} to accept that, or drop {MonthsBack}",
			e.cfg.MonthsBack, from.Format("2006-01-02"))}
	}
	if older {
		e.cfg.Logger.Warn("forced partial range: history before it stays out of the rollup", "from", from.Format("2006-01-02"))
	}
	return &from, nil
}

// monthsBackStart is the first instant MonthsBack covers, by the
// database's clock (the one the watermark is taken from).
func (e *Engine) monthsBackStart(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := e.db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return time.Time{}, err
	}
	return shard.MonthsBackStart(now, e.cfg.MonthsBack), nil
}

// Preflight checks, without writing, that the database is ready for the
// job, and with writes set that the role holds every privilege its
// statements need.
func (e *Engine) Preflight(ctx context.Context, writes bool) error {
	if err := e.job.Preflight(ctx, e.db); err != nil {
		return err
	}
	if !writes {
		return nil
	}
	return job.CheckPrivileges(ctx, e.db, e.job.Name(), e.job.Needs())
}

// Watermarked reports whether the job's finish stamps a watermark (see
// Ranged), which is how its runs end.
func (e *Engine) Watermarked() bool {
	_, ok := e.job.(Ranged)
	return ok
}

// JobName is the name of the job the engine runs.
func (e *Engine) JobName() string { return e.job.Name() }

// JobVersion is the version of its slice logic.
func (e *Engine) JobVersion() string { return e.job.Version() }

// Store is the checkpoint store of the job's runs, for progress and
// status.
func (e *Engine) Store() *checkpoint.Store { return e.store }
