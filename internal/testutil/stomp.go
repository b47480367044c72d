package testutil

import (
	"testing"
	"time"

	"handover/frame"
	"handover/stompclient"
)

// Recv returns the next message of s, failing t if the subscription ends or
// nothing comes within d.
func Recv(t testing.TB, s *stompclient.Subscription, d time.Duration) *frame.Frame {
	t.Helper()
	select {
	case f, ok := <-s.C():
		if !ok {
			t.Fatal("subscription ended")
		}
		return f
	case <-time.After(d):
		t.Fatalf("no message in %v", d)
		return nil
	}
}

// ExpectNone fails t if s delivers a message within d.
func ExpectNone(t testing.TB, s *stompclient.Subscription, d time.Duration) {
	t.Helper()
	select {
	case f := <-s.C():
		t.Fatalf("unexpected message %v body %q", f, f.Body)
	case <-time.After(d):
	}
}
