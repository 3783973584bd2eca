package shard

import (
	"testing"
	"time"
)

func month(y int, m time.Month) time.Time { return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC) }

func TestMonthBoundariesIgnoreLocalZone(t *testing.T) {
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Skip("no tzdata")
	}
	// 03:00 on 1 March in Kolkata is still February in UTC.
	at := time.Date(2026, 3, 1, 3, 0, 0, 0, kolkata)
	if got := MonthStart(at); !got.Equal(month(2026, 2)) {
		t.Fatalf("MonthStart = %s, want 2026-02-01Z", got)
	}
	if got := NextMonth(time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC)); !got.Equal(month(2027, 1)) {
		t.Fatalf("NextMonth across a year = %s", got)
	}
	if got := MonthsBackStart(time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC), 3); !got.Equal(month(2025, 11)) {
		t.Fatalf("MonthsBackStart = %s, want 2025-11-01", got)
	}
}

func TestBatchRangesMergeAdjacent(t *testing.T) {
	s := func(id int64, from, to time.Time) Slice {
		return Slice{ID: id, Workspace: "w", From: from, To: to, EstRows: 10}
	}
	b, err := NewBatch([]Slice{
		s(3, month(2026, 3), month(2026, 4)),
		s(1, month(2026, 1), month(2026, 2)),
		s(2, month(2026, 2), month(2026, 3)),
		s(4, month(2026, 6), month(2026, 7)),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := b.Ranges()
	want := []Range{{month(2026, 1), month(2026, 4)}, {month(2026, 6), month(2026, 7)}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || b.Rows != 40 {
		t.Fatalf("ranges %v rows %d, want %v and 40", got, b.Rows, want)
	}
	if _, err := NewBatch([]Slice{s(1, month(2026, 1), month(2026, 2)), {Workspace: "x"}}); err == nil {
		t.Fatal("a batch mixing workspaces was accepted")
	}
}

func TestPeriod(t *testing.T) {
	if got := Period(month(2026, 2), month(2026, 3)); got != "2026-02" {
		t.Fatalf("Period(month) = %q", got)
	}
	if got := Period(month(2026, 2), month(2026, 2).Add(72*time.Hour)); got != "2026-02-01T00:00:00Z..2026-02-04T00:00:00Z" {
		t.Fatalf("Period(days) = %q", got)
	}
}
