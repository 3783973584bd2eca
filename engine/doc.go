// Package engine runs a backfill: it plans (or resumes) a run in the
// checkpoint tables, runs its slices on a bounded pool of workers behind a
// rate limiter, retries what is transient, and stamps the cron watermark
// once every slice is done.
//
// The engine holds the cron job's advisory lock (4246) in shared mode on a
// dedicated connection, in a transaction that connection keeps open (so
// that it works behind any pooler, see cronLock), for as long as it works,
// watched every second from the moment it is taken, so the cron tick stays
// out; when the application asks for the lock exclusively it is yielded
// without a gap (yield.go);
// several processes can hold it at once and share one run. Each slice's
// rollup rows and its done mark commit in one transaction, so cancelling at
// any instant loses nothing but the work in flight, which a re-run redoes.
//
// Workers pass a [Gate] before each claim. The run's control record
// (pause, `set`) and the health throttle ([Config.Health], package
// throttle: polled every 2 s, beside the control record) both act on it
// and on the rate limiter: the pace in force is the operator's limits,
// lowered by the throttle while the database's signals say so; a pause and
// a health hold are separate holds, each with its reason, acknowledged in
// the process registry for `status`.
package engine
