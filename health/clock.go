package health

import "time"

// Clock is the monitor's source of time. It exists so that tests can step
// time by hand instead of sleeping; production code uses RealClock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a started timer that fires once, d from now.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the monitor needs.
type Timer interface {
	// C delivers the time when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether the timer was
	// still pending. After Stop no stale value is received from C.
	Stop() bool
	// Reset makes the timer fire d from now, whether or not it was pending.
	// After Reset no value from the earlier schedule is received from C.
	Reset(d time.Duration)
}

// RealClock returns the Clock backed by package time.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

// realTimer relies on the Go 1.23 timer semantics (this module requires a
// later Go): Stop and Reset discard a value not yet received, so callers
// need no drain dance.
type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time   { return t.t.C }
func (t realTimer) Stop() bool            { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) { t.t.Reset(d) }
