// Package brokertest runs brokerd in this process for other packages'
// tests and benchmarks: one way to start it on a data directory shared by
// a master and its slaves, wait for it to serve, and stop it as SIGTERM
// does. brokerd's own tests keep theirs: a package's in-package tests
// cannot import a package that imports it.
package brokertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"handover/brokerd"
)

// Broker is a brokerd running in this process.
type Broker struct {
	*brokerd.Server
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's, once done is closed
	once   sync.Once
}

// Start runs brokerd with its data in dir, initialized unless it already
// is ("" for a new temporary directory), STOMP and admin on 127.0.0.1
// ports the kernel picks and the options mod changes (nil: none), until
// t's cleanup, which stops it. With several on
// one dir, the first is master and the others wait as slaves (OFD locks
// conflict within one process).
func Start(t testing.TB, dir string, mod func(*brokerd.Options)) *Broker {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if _, err := brokerd.ReadData(dir); err != nil {
		if _, err := brokerd.InitData(dir); err != nil {
			t.Fatal(err)
		}
	}
	o := brokerd.NewOptions()
	o.Listen, o.Admin, o.Data = "127.0.0.1:0", "127.0.0.1:0", dir
	if mod != nil {
		mod(&o)
	}
	s, err := brokerd.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{Server: s, cancel: cancel, done: make(chan struct{})}
	go func() {
		b.err = s.Run(ctx)
		close(b.done)
	}()
	t.Cleanup(func() { b.Stop(t) })
	return b
}

// WaitReady waits until b serves as master; it fails t if b stops first
// or is not serving within 10 s.
func (b *Broker) WaitReady(t testing.TB) {
	t.Helper()
	select {
	case <-b.Ready():
	case <-b.done:
		t.Fatalf("brokerd stopped before serving: %v", b.err)
	case <-time.After(10 * time.Second):
		t.Fatal("brokerd not serving in 10 s")
	}
}

// Cancel shuts b down as SIGTERM does, without waiting (see Done).
func (b *Broker) Cancel() { b.cancel() }

// Done is closed once Run has returned; Err is then what it returned.
func (b *Broker) Done() <-chan struct{} { return b.done }

// Err is what Run returned, once Done is closed.
func (b *Broker) Err() error {
	<-b.done
	return b.err
}

// Stop shuts b down as SIGTERM does and waits for Run to return; it fails
// t if Run returned an error (once) or did not return within 20 s. It may
// be called any number of times.
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	b.cancel()
	select {
	case <-b.done:
		b.once.Do(func() {
			if b.err != nil {
				t.Errorf("brokerd Run: %v", b.err)
			}
		})
	case <-time.After(20 * time.Second):
		t.Fatal("brokerd did not stop in 20 s")
	}
}
