// Package job holds what the engine and the jobs it runs share without
// either knowing the other: the advisory lock a job holds ([Lock]), the
// privileges its statements need ([Need], [CheckPrivileges]), what a
// preview and a verification report ([Preview], [Mismatch]), and the
// errors that refuse a database not ready for a job.
//
// The jobs themselves are files of SQL (package jobfile, the shipped ones
// in jobs/); package sqljob runs them. No package outside the job files
// names a table a job writes.
package job
