package shard

import (
	"fmt"
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

func TestBatchSpansMergeAdjacentPerWorkspace(t *testing.T) {
	s := func(ws string, from, to time.Time) Slice {
		return Slice{Workspace: ws, From: from, To: to, EstRows: 10}
	}
	b, err := NewBatch([]Slice{
		s("w", month(2026, 3), month(2026, 4)),
		s("v", month(2026, 4), month(2026, 5)),
		s("w", month(2026, 1), month(2026, 2)),
		s("w", month(2026, 2), month(2026, 3)),
		s("w", month(2026, 6), month(2026, 7)),
		s("x", month(2026, 1), month(2026, 2)),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := b.Spans()
	want := []Span{
		{"v", month(2026, 4), month(2026, 5)},
		{"w", month(2026, 1), month(2026, 4)},
		{"w", month(2026, 6), month(2026, 7)},
		{"x", month(2026, 1), month(2026, 2)},
	}
	if len(got) != len(want) || b.Rows != 60 || b.Workspaces() != 3 {
		t.Fatalf("spans %v rows %d workspaces %d", got, b.Rows, b.Workspaces())
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("span %d = %v, want %v", i, got[i], want[i])
		}
	}
	if from, to := b.Bounds(); !from.Equal(month(2026, 1)) || !to.Equal(month(2026, 7)) {
		t.Fatalf("bounds %s..%s", from, to)
	}
}

func TestBatchReadFrom(t *testing.T) {
	b, _ := NewBatch([]Slice{
		{Workspace: "w", From: month(2026, 3), To: month(2026, 4), ReadFrom: month(2025, 11)},
		{Workspace: "w", From: month(2026, 4), To: month(2026, 5), ReadFrom: month(2025, 12)},
	})
	if got := b.ReadFrom(); !got.Equal(month(2025, 11)) {
		t.Fatalf("ReadFrom = %s", got)
	}
	b.Slices = append(b.Slices, Slice{Workspace: "w", From: month(2026, 5), To: month(2026, 6)})
	if got := b.ReadFrom(); !got.IsZero() {
		t.Fatalf("ReadFrom with an unbounded slice = %s, want zero (read all)", got)
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

// BenchmarkSpans merges a month batch of 5 000 slices (the default batch
// cap) into per-workspace spans, which happens once per claimed batch.
func BenchmarkSpans(b *testing.B) {
	slices := make([]Slice, 5000)
	for i := range slices {
		slices[i] = Slice{Workspace: fmt.Sprintf("ws-%04d", i), From: month(2026, 3), To: month(2026, 4), EstRows: 10}
	}
	batch, err := NewBatch(slices)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if len(batch.Spans()) != len(slices) {
			b.Fatal("spans lost")
		}
	}
}
