-- shardfill's own tables. Every statement is idempotent so any process may
-- run this on start; callers serialise it with an advisory lock because
-- concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
-- _SCHEMA_ is replaced by the sanitized --schema identifier.

CREATE SCHEMA IF NOT EXISTS _SCHEMA_;

-- One row per backfill run. The watermark target is fixed when the run is
-- planned (database now() - 5 minutes) so rows written while the run works
-- remain the cron job's.
CREATE TABLE IF NOT EXISTS _SCHEMA_.run (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state                text NOT NULL DEFAULT 'planned'
                         CHECK (state IN ('planned', 'running', 'done', 'failed', 'interrupted', 'superseded')),
    planned_at           timestamptz NOT NULL DEFAULT now(),
    watermark_target     timestamptz NOT NULL,
    range_from           timestamptz,
    slices_total         bigint NOT NULL DEFAULT 0,
    rows_total           bigint NOT NULL DEFAULT 0,
    logic_version        text NOT NULL,
    started_at           timestamptz,
    finished_at          timestamptz,
    watermark_stamped_at timestamptz,
    last_error           text
);

-- Planning state (see Store.PlanNext): a run is planned in pieces of whole
-- UTC months, newest first, each committed with its slices, so workers
-- start on the first piece while the rest is planned and an interrupted
-- plan continues where it stopped. Everything at or after plan_cursor is
-- planned; the piece below it is next. plan_top and plan_floor are the
-- months of the newest and oldest raw row when the run was created (NULL:
-- no raw rows, the whole range is one piece); plan_top may instead be a
-- day inside the newest month, where its newest rows' own first piece
-- starts. Runs created before these
-- columns existed were planned in one pass: planning_done defaults true.
ALTER TABLE _SCHEMA_.run ADD COLUMN IF NOT EXISTS planning_done boolean NOT NULL DEFAULT true,
                         ADD COLUMN IF NOT EXISTS plan_cursor timestamptz,
                         ADD COLUMN IF NOT EXISTS plan_top timestamptz,
                         ADD COLUMN IF NOT EXISTS plan_floor timestamptz,
                         ADD COLUMN IF NOT EXISTS plan_max_rows bigint,
                         ADD COLUMN IF NOT EXISTS plan_pieces integer NOT NULL DEFAULT 0,
                         ADD COLUMN IF NOT EXISTS plan_piece_months integer NOT NULL DEFAULT 1,
                         ADD COLUMN IF NOT EXISTS planning_ended_at timestamptz;

-- One row per planned piece: [from_ts, to_ts) of raw-row creation and
-- rollup bucket time, with the slices and rows it added. The primary key
-- makes planning a piece twice impossible.
CREATE TABLE IF NOT EXISTS _SCHEMA_.plan_piece (
    run_id     bigint NOT NULL REFERENCES _SCHEMA_.run (id) ON DELETE CASCADE,
    piece      integer NOT NULL,
    from_ts    timestamptz NOT NULL,
    to_ts      timestamptz NOT NULL,
    slices     bigint NOT NULL,
    rows       bigint NOT NULL,
    planned_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, piece)
);

-- The raw rows of each workspace in the pieces planned so far: what a
-- slice's ws_rows is estimated from while planning goes on.
CREATE TABLE IF NOT EXISTS _SCHEMA_.plan_workspace (
    run_id       bigint NOT NULL REFERENCES _SCHEMA_.run (id) ON DELETE CASCADE,
    workspace_id uuid NOT NULL,
    rows         bigint NOT NULL,
    PRIMARY KEY (run_id, workspace_id)
);

-- One row per slice. Slice ids are assigned largest-first at planning, so
-- claiming in id order starts the big slices early and the pool drains
-- evenly. (owner, attempts) is the fencing token of a claim.
CREATE TABLE IF NOT EXISTS _SCHEMA_.slice (
    run_id       bigint NOT NULL REFERENCES _SCHEMA_.run (id) ON DELETE CASCADE,
    id           bigint NOT NULL,
    workspace_id uuid NOT NULL,
    from_ts      timestamptz NOT NULL,
    to_ts        timestamptz NOT NULL,
    est_rows     bigint NOT NULL,
    -- how far back in time the job must read for this slice (for the
    -- rollup: the oldest creation of a task with usage in the slice; a task
    -- can receive usage long after it was created). NULL: nothing to read.
    read_from    timestamptz,
    -- the raw rows of the slice's workspace over the whole run: what
    -- reading a batch through its workspaces' tasks costs.
    ws_rows      bigint,
    -- the raw rows of every workspace in the slice's window: what reading
    -- a batch through time costs.
    window_rows  bigint,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    owner        text,
    -- backend pid of the owner's lock connection: once that backend no
    -- longer holds the cron lock the owner is gone and its slice can be
    -- reclaimed before the lease runs out.
    owner_pid    integer,
    lease_until  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text,
    PRIMARY KEY (run_id, id)
);

CREATE INDEX IF NOT EXISTS slice_pending_idx ON _SCHEMA_.slice (run_id, id) WHERE state = 'pending';
-- A claim's companions: the pending slices of the first one's window. Only
-- pending slices are indexed, so claiming and marking done (most of the
-- checkpoint's writes) add no entry to it; it replaces an index of every
-- slice by (run_id, from_ts), dropped below.
CREATE INDEX IF NOT EXISTS slice_pending_window_idx ON _SCHEMA_.slice (run_id, from_ts, to_ts) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS slice_running_idx ON _SCHEMA_.slice (run_id, lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS slice_failed_idx ON _SCHEMA_.slice (run_id, id) WHERE state = 'failed';

-- Slice tables created before the per-workspace and per-window totals
-- existed get them here (their runs were planned by other slice SQL and are
-- not resumed). This file runs only when something is missing (see
-- Store.Migrate): ALTER TABLE locks the table even when there is nothing to
-- add.
ALTER TABLE _SCHEMA_.slice ADD COLUMN IF NOT EXISTS ws_rows bigint,
                           ADD COLUMN IF NOT EXISTS window_rows bigint;

-- Failed slices are grouped by their cause: the error without the slice it
-- happened to (status lists failures by cause, with counts).
ALTER TABLE _SCHEMA_.slice ADD COLUMN IF NOT EXISTS cause text;

-- The desired state of a run, set from any shell (pause, unpause, set) and
-- polled by every process of the run every few seconds: no LISTEN/NOTIFY,
-- so it works through a session pooler. version grows by one on every
-- change; a process acknowledges the version it applied in its process row.
-- A NULL limit leaves the process's own flag in force.
CREATE TABLE IF NOT EXISTS _SCHEMA_.control (
    run_id                  bigint PRIMARY KEY REFERENCES _SCHEMA_.run (id) ON DELETE CASCADE,
    version                 bigint NOT NULL DEFAULT 0,
    paused                  boolean NOT NULL DEFAULT false,
    paused_by               text,
    paused_at               timestamptz,
    rate                    double precision CHECK (rate >= 0),
    burst                   integer CHECK (burst >= 1),
    concurrency             integer CHECK (concurrency >= 1),
    sleep_between_slices_ms bigint CHECK (sleep_between_slices_ms >= 0),
    updated_by              text,
    updated_at              timestamptz
);

-- One row per process that works on a run: who it is, what it applied and
-- under which limits it runs now. A process is live while its lock backend
-- (lock_pid) holds the cron lock; rows of dead processes stay until the
-- same owner returns or the run is deleted, and status leaves them out.
CREATE TABLE IF NOT EXISTS _SCHEMA_.process (
    run_id                  bigint NOT NULL REFERENCES _SCHEMA_.run (id) ON DELETE CASCADE,
    owner                   text NOT NULL,
    host                    text NOT NULL,
    os_pid                  integer NOT NULL,
    lock_pid                integer NOT NULL,
    started_at              timestamptz NOT NULL DEFAULT now(),
    seen_at                 timestamptz NOT NULL DEFAULT now(),
    control_version         bigint NOT NULL DEFAULT 0,
    rate                    double precision NOT NULL,
    burst                   integer NOT NULL,
    concurrency             integer NOT NULL,
    sleep_between_slices_ms bigint NOT NULL,
    state                   text NOT NULL,
    reason                  text,
    PRIMARY KEY (run_id, owner)
);

-- The pace a process actually runs at, its limits lowered by the health
-- throttle (package throttle); registries created before it get it here.
ALTER TABLE _SCHEMA_.process ADD COLUMN IF NOT EXISTS effective_concurrency integer,
                             ADD COLUMN IF NOT EXISTS effective_rate double precision;

DROP INDEX IF EXISTS _SCHEMA_.slice_from_idx;

-- Runs of several jobs live side by side: each run names its job (the
-- rollup's runs, planned before jobs were files, are its), the
-- operator's parameters (normalised text, see package jobfile), and the
-- types its slices' shard and key bounds are kept in. plan_key is the
-- key-range planner's cursor: the lower bound of the range not planned
-- yet (NULL: from the start of the key space).
ALTER TABLE _SCHEMA_.run ADD COLUMN IF NOT EXISTS job text NOT NULL DEFAULT 'task-usage-hourly',
                         ADD COLUMN IF NOT EXISTS params jsonb,
                         ADD COLUMN IF NOT EXISTS key_type text,
                         ADD COLUMN IF NOT EXISTS shard_type text,
                         ADD COLUMN IF NOT EXISTS plan_key text;
CREATE INDEX IF NOT EXISTS run_job_idx ON _SCHEMA_.run (job, id);

-- A job file's slice: an optional shard value and a key range [lo, hi),
-- both as text in the run's types (NULL lo or hi: open at that end). The
-- rollup's (workspace, window) columns stay NULL on them. stalls counts
-- the passes of a repeated slice that changed nothing while rows stayed
-- locked by other sessions (the guard fails it after the job's limit);
-- such a slice goes back to pending, claimed again from retry_at on.
ALTER TABLE _SCHEMA_.slice ADD COLUMN IF NOT EXISTS shard text,
                           ADD COLUMN IF NOT EXISTS lo text,
                           ADD COLUMN IF NOT EXISTS hi text,
                           ADD COLUMN IF NOT EXISTS stalls integer NOT NULL DEFAULT 0,
                           ADD COLUMN IF NOT EXISTS retry_at timestamptz,
                           ALTER COLUMN workspace_id DROP NOT NULL,
                           ALTER COLUMN from_ts DROP NOT NULL,
                           ALTER COLUMN to_ts DROP NOT NULL;
