package pgserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/shardfill/shardfill/internal/pgserver"
	"github.com/shardfill/shardfill/internal/pgtest"
	"github.com/shardfill/shardfill/internal/testenv"
)

// TestPgCronRunsAJob is the one harness test that waits for the clock:
// pg_cron 1.4 schedules by the minute, so seeing a job actually run takes
// up to a minute (to the next minute boundary) plus the run. It checks
// that pg_cron is loaded, its scheduler is alive, cron.schedule registers a
// job, and the job runs and succeeds (it connects over the unix socket,
// see Options.CronDatabase). With -short it stops before the wait.
func TestPgCronRunsAJob(t *testing.T) {
	t.Parallel()
	const db = "cron_app"
	srv := pgtest.PrivateServerWith(t, pgserver.Options{CronDatabase: db})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn := testenv.Conn(t, srv.URL(db))
	if _, err := conn.Exec(ctx, `CREATE EXTENSION pg_cron`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE ticks (at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}

	// The scheduler is a background worker connected to the cron database;
	// pg_cron 1.4 shows it as backend_type "pg_cron launcher" with
	// application_name "pg_cron scheduler".
	var scheduler int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'pg_cron launcher' AND application_name = 'pg_cron scheduler'
			AND datname = $1`, db).Scan(&scheduler); err != nil {
			t.Fatal(err)
		}
		if scheduler > 0 || time.Now().After(deadline) {
			break
		}
	}
	if scheduler != 1 {
		t.Fatalf("%d pg_cron launcher backends on %s, want 1", scheduler, db)
	}

	var jobID int64
	if err := conn.QueryRow(ctx, `SELECT cron.schedule('tick', '* * * * *', 'INSERT INTO ticks DEFAULT VALUES')`).Scan(&jobID); err != nil {
		t.Fatal(err)
	}
	var active bool
	if err := conn.QueryRow(ctx, `SELECT active FROM cron.job WHERE jobid = $1 AND jobname = 'tick'`, jobID).Scan(&active); err != nil || !active {
		t.Fatalf("cron.job row of job %d: active=%v err=%v", jobID, active, err)
	}
	if testing.Short() {
		t.Skip("-short: not waiting up to a minute for the job to run")
	}

	start := time.Now()
	for {
		var status, message string
		err := conn.QueryRow(ctx, `SELECT status, coalesce(return_message, '') FROM cron.job_run_details
			WHERE jobid = $1 AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1`, jobID).Scan(&status, &message)
		if err == nil {
			if status != "succeeded" {
				t.Fatalf("job run %s: %s", status, message)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job %d did not run within %s", jobID, time.Since(start).Round(time.Second))
		case <-time.After(500 * time.Millisecond):
		}
	}
	var ticks int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM ticks`).Scan(&ticks); err != nil || ticks == 0 {
		t.Fatalf("the job succeeded but ticks has %d rows (err %v)", ticks, err)
	}
	t.Logf("job ran after %s", time.Since(start).Round(time.Second))
}
