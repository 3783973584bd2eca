// Command shardfill runs backfills written as job files of SQL in
// parallel and resumably; by default the shipped hourly rollup, which it
// hands over to the cron job. See `shardfill --help`.
//
// The command line is cobra: root.go holds the flags every command shares
// and the connection, run.go the run and plan commands, status.go,
// verify.go and demo.go theirs; progress.go draws the progress bar and
// redact.go keeps passwords out of every line written. Flags bind to the
// fields of engine.Config, starting from engine.DefaultConfig; main.go
// phrases the engine's errors in terms of flags and maps them to exit
// codes.
package main
