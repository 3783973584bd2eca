package main

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
)

// logLines is where log records go: stderr, which the progress bar draws
// on too. While a bar is drawn each record first clears the bar's line
// (the bar draws itself again on the line below at its next update, at
// most 100 ms later), so the two never share a line.
type logLines struct {
	w   io.Writer
	mu  sync.Mutex // one record at a time
	bar atomic.Bool
}

// clearLine returns to the start of the line and erases it.
const clearLine = "\r\033[K"

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bar.Load() {
		if _, err := io.WriteString(l.w, clearLine); err != nil {
			return 0, err
		}
	}
	return l.w.Write(p)
}

// drawing tells the writer whether a bar is drawn.
func (l *logLines) drawing(on bool) { l.bar.Store(on) }

// omitNil drops attributes whose value is nil from text records: an
// absent value is left out rather than printed as <nil> (JSON records
// keep them as null, which their readers expect).
func omitNil(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindAny && a.Value.Any() == nil {
		return slog.Attr{}
	}
	return a
}
