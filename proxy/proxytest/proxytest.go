// Package proxytest holds test helpers shared by the two data paths' tests,
// proxy's and stompproxy's, and by those of the package beneath them,
// internal/serve: a Picker whose answer the test sets, a logger onto t.Log,
// and a TLS echo backend.
package proxytest

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"

	"handover/internal/testutil"
)

// Log sends a service's logs to t.Log: at debug level in tests, at warning
// level in benchmarks.
func Log(t testing.TB) *logrus.Entry {
	l := testutil.Logger(t)
	if _, ok := t.(*testing.B); ok {
		l.Logger.SetLevel(logrus.WarnLevel)
	}
	return l
}

// Picker is a proxy.Picker (and proxy.Keeper) whose answer the test sets.
type Picker struct {
	// Rechecks counts Recheck calls; Reads counts Targets calls.
	Rechecks, Reads atomic.Int64

	mu      sync.Mutex
	targets []string
	changed chan struct{}
	flipTo  []string // see FlipAfterNextRead
	kept    string   // Keep answers true for it (a removed master)
}

// NewPicker returns a Picker answering targets.
func NewPicker(targets ...string) *Picker {
	return &Picker{targets: targets, changed: make(chan struct{})}
}

// Keep implements proxy.Keeper.
func (f *Picker) Keep(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return addr != "" && addr == f.kept
}

// SetKept makes Keep answer true for addr.
func (f *Picker) SetKept(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kept = addr
}

// Targets implements proxy.Picker.
func (f *Picker) Targets() ([]string, <-chan struct{}) {
	f.Reads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	targets, changed := f.targets, f.changed
	if f.flipTo != nil {
		// The answer changes the moment after this caller read it.
		f.targets, f.flipTo = f.flipTo, nil
		close(f.changed)
		f.changed = make(chan struct{})
	}
	return targets, changed
}

// FlipAfterNextRead makes the next Targets call return the current answer
// and then switch it to targets, as if a failover happened just after it.
func (f *Picker) FlipAfterNextRead(targets ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flipTo = targets
}

// Recheck implements proxy.Picker.
func (f *Picker) Recheck() { f.Rechecks.Add(1) }

// Set changes the answer and wakes everyone waiting on the old one.
func (f *Picker) Set(targets ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets = targets
	close(f.changed)
	f.changed = make(chan struct{})
}

// Counter returns c's value.
func Counter(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TLSEcho serves echo over TLS with a certificate of ca (for 127.0.0.1)
// valid from notBefore for validity, until test cleanup, and returns its
// address: a backend for tests of TLS to the brokers, good or refused.
func TLSEcho(t testing.TB, ca *testutil.CA, notBefore time.Time, validity time.Duration) string {
	t.Helper()
	_, _, cert := ca.Issue(t, "broker", notBefore, validity)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.ServeEcho(t, ln)
}
