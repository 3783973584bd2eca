// Package shard is the slice model of a backfill: one workspace over a
// half-open UTC time range, normally one calendar month.
//
// Slices of one run never overlap (other workspace, or other hours), which is
// what lets the engine run them concurrently without them blocking each
// other: two slices never write the same rollup key.
package shard
