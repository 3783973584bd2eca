package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// While the progress bar is drawn, each log record first clears the bar's
// line, so a record never lands inside the bar; without a bar, records are
// written as they are.
func TestLogRecordsClearTheBarLine(t *testing.T) {
	var buf bytes.Buffer
	l := &logLines{w: &buf}
	log := slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{ReplaceAttr: omitNil}))
	log.Info("before")
	l.drawing(true)
	buf.WriteString("run 1  40% |████    | (4/10)") // the bar, as progressbar draws it: no newline
	log.Info("during")
	l.drawing(false)
	log.Info("after")
	lines := strings.Split(buf.String(), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "msg=before") || strings.Contains(lines[0], clearLine) {
		t.Fatalf("before the bar: %q", buf.String())
	}
	bar, record, ok := strings.Cut(lines[1], clearLine)
	if !ok || !strings.HasPrefix(bar, "run 1") || !strings.HasPrefix(record, "time=") || !strings.Contains(record, "msg=during") {
		t.Fatalf("during the bar the record must clear the bar's line first: %q", lines[1])
	}
	if strings.Contains(lines[2], clearLine) || !strings.Contains(lines[2], "msg=after") {
		t.Fatalf("after the bar: %q", lines[2])
	}
}

// In text logs an absent value is left out, not printed as <nil>; JSON
// keeps it as null.
func TestTextLogsLeaveOutAbsentValues(t *testing.T) {
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, &slog.HandlerOptions{ReplaceAttr: omitNil})).Info("progress", "eta_seconds", nil, "rows_done", 3)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("progress", "eta_seconds", nil, "rows_done", 3)
	if strings.Contains(text.String(), "<nil>") || strings.Contains(text.String(), "eta_seconds") || !strings.Contains(text.String(), "rows_done=3") {
		t.Fatalf("text record %q", text.String())
	}
	if !strings.Contains(js.String(), `"eta_seconds":null`) {
		t.Fatalf("json record %q", js.String())
	}
	// And the CLI's own text logger is set up that way.
	var cliOut bytes.Buffer
	g := &globals{errOut: newRedactor(&cliOut), logFormat: "text", logLevel: "info", schema: "shardfill"}
	g.logLines = &logLines{w: g.errOut}
	if err := g.setup(); err != nil {
		t.Fatal(err)
	}
	g.log.Info("progress", "eta_seconds", nil, "rows_done", 3)
	if strings.Contains(cliOut.String(), "<nil>") || !strings.Contains(cliOut.String(), "rows_done=3") {
		t.Fatalf("the CLI's text record %q", cliOut.String())
	}
}
