package testutil

import (
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// Logger returns a logrus entry, at debug level, that writes to t.Log: a
// test's logs appear with the test, and only when it fails or runs with -v.
func Logger(t testing.TB) *logrus.Entry {
	l := logrus.New()
	l.Out = TWriter{t}
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l)
}

// TWriter is an io.Writer onto t.Log, one call per write.
type TWriter struct{ T testing.TB }

// Write logs p without its trailing newline.
func (w TWriter) Write(p []byte) (int, error) {
	w.T.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
