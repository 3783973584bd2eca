-- Stores the slices of one planned piece of a run from its list (_PLAN_:
-- the table the job's plan query filled, see Store.planList) and
-- returns how many slices and rows it stored. Slice ids continue after the
-- run's last ($2) and follow descending size within the piece: claiming
-- in id order works through the pieces as they were planned (newest months
-- first), largest slices first within each.
-- Each slice carries the totals a claim needs to price its batch:
--   window_rows: the raw rows of its window over every workspace (reading
--     through time). A piece's windows tile it, so a window lies in one
--     piece, and this is exact.
--   ws_rows: the raw rows of its workspace over the whole run (reading
--     through the workspace's tasks visits all of them). Unknown until the
--     last piece is planned, it is estimated from the workspace's rows in
--     the pieces planned so far, this one included (plan_workspace),
--     scaled by $3: the run's months over the months planned so far (1 for
--     the last piece).
-- $1: the run; $2: the run's largest slice id so far; $3: the scale.
WITH piece AS (
    SELECT p.shard AS workspace_id, p.lo AS from_ts, p.hi AS to_ts, p.est_rows, p.read_from,
           sum(p.est_rows) OVER (PARTITION BY p.shard) AS ws_piece,
           sum(p.est_rows) OVER (PARTITION BY p.lo, p.hi) AS window_rows
    FROM _PLAN_ p
), stored AS (
    INSERT INTO _SCHEMA_.slice (run_id, id, workspace_id, from_ts, to_ts, est_rows, read_from, ws_rows, window_rows)
    SELECT $1, $2 + row_number() OVER (ORDER BY p.est_rows DESC, p.workspace_id, p.from_ts),
           p.workspace_id, p.from_ts, p.to_ts, p.est_rows, p.read_from,
           ceil((coalesce(w.rows, 0) + p.ws_piece) * $3::float8)::bigint,
           p.window_rows
    FROM piece p
    LEFT JOIN _SCHEMA_.plan_workspace w ON w.run_id = $1 AND w.workspace_id = p.workspace_id
    RETURNING est_rows
), totals AS (
    INSERT INTO _SCHEMA_.plan_workspace AS w (run_id, workspace_id, rows)
    SELECT $1, shard, sum(est_rows) FROM _PLAN_ GROUP BY shard
    ON CONFLICT (run_id, workspace_id) DO UPDATE SET rows = w.rows + excluded.rows
)
SELECT count(*), coalesce(sum(est_rows), 0)::bigint FROM stored
