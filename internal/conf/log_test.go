package conf

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// Durations are written as Go duration strings in both formats, so a
// field does not change form (nanoseconds in JSON) with the format.
func TestLoggerDurations(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out bytes.Buffer
		l, err := NewLogger(&out, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		l.WithField("took", 1500*time.Millisecond).Info("done")
		line := out.String()
		if format == "json" {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("json: %v: %s", err, line)
			}
			if m["took"] != "1.5s" {
				t.Errorf("json took = %#v, want \"1.5s\"", m["took"])
			}
		} else if !strings.Contains(line, "took=1.5s") {
			t.Errorf("text: %s", line)
		}
	}
}

// A reload's bad [log] table leaves the running logger as it was.
func TestSetLogging(t *testing.T) {
	var out bytes.Buffer
	l, err := NewLogger(&out, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]string{{"loud", "json"}, {"debug", "xml"}} {
		if err := SetLogging(l, bad[0], bad[1]); err == nil {
			t.Errorf("SetLogging(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if l.Level != logrus.InfoLevel {
		t.Errorf("level changed to %v by a rejected call", l.Level)
	}
	if err := SetLogging(l, "warn", "json"); err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown")
	if s := out.String(); strings.Contains(s, "hidden") || !strings.HasPrefix(s, "{") {
		t.Errorf("after SetLogging(warn, json): %q", s)
	}
}
