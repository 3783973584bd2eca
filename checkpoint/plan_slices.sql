-- Stores a run's slices from the planned list (the temporary table
-- shardfill_plan filled from the job's plan query, or that query itself;
-- see planSlices for the placeholders). Slice ids follow descending
-- size, so claiming in id order starts the largest slices first.
-- Each slice carries the totals a claim needs to price its batch: the raw
-- rows of its workspace over the whole run (reading through the workspace's
-- tasks) and of its window over every workspace (reading through time).
INSERT INTO _SCHEMA_.slice (run_id, id, workspace_id, from_ts, to_ts, est_rows, read_from, ws_rows, window_rows)
SELECT _RUN_, row_number() OVER (ORDER BY est_rows DESC, workspace_id, from_ts),
       workspace_id, from_ts, to_ts, est_rows, read_from,
       sum(est_rows) OVER (PARTITION BY workspace_id),
       sum(est_rows) OVER (PARTITION BY from_ts, to_ts)
FROM _PLAN_
