package health

import (
	"errors"
	"fmt"
	"time"

	"handover/health/watch"
)

// Election modes.
const (
	// ModeMaster sends every client to the one elected master: the mode for
	// master/slave brokers, where at most one backend serves at a time.
	ModeMaster = "master"
	// ModeAny spreads clients over every healthy backend.
	ModeAny = "any"
)

// Defaults for zero Config fields. Rise and Fall are HAProxy's defaults.
const (
	DefaultInterval         = time.Second
	DefaultRise             = 2
	DefaultFall             = 3
	DefaultNoMasterInterval = 20 * time.Millisecond
)

// Config tunes a Monitor. The zero value is valid: every zero field takes
// the default named on it.
type Config struct {
	// Interval is the time between two periodic checks of a backend while
	// there is a master. Zero means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one check. Zero means Interval; a larger value is cut
	// to Interval, because a check still running when the next one is due
	// makes the monitor skip that backend's next round, so a longer timeout
	// would only slow down noticing a dead backend.
	Timeout time.Duration
	// Rise is how many consecutive passed checks bring a down backend up.
	// Zero means DefaultRise. See Monitor for the exceptions that need one.
	Rise int
	// Fall is how many consecutive failed checks take an up backend down.
	// Zero means DefaultFall. See Monitor for the exception that needs one.
	Fall int
	// Mode is ModeMaster (the default, also for "") or ModeAny.
	Mode string
	// Randomize, in ModeAny, shuffles the healthy list on every call to
	// Targets instead of returning it in list order, so that clients spread
	// over the backends rather than all preferring the first.
	Randomize bool
	// NoMasterInterval is the time between checks while there is no master
	// (ModeAny: no healthy backend). A failover leaves clients with nowhere
	// to go until the new master is seen, so the monitor polls fast then.
	// Zero means DefaultNoMasterInterval; a value above Interval is cut to
	// Interval.
	NoMasterInterval time.Duration
	// MinRecheckInterval spaces passive re-checks of one backend: a
	// Recheck less than this after the backend's last passive check
	// started is deferred until the interval has passed. Without it, a
	// backend that keeps resetting connections under load would be
	// checked back to back, a storm of probes against a broker already in
	// trouble. Zero means no spacing (every Recheck may start a check).
	MinRecheckInterval time.Duration
	// Watch is how the monitor learns of role changes besides its checks:
	// WatchAuto ("" too) follows each backend's watch stream where it
	// offers one (brokerd's GET /watch, on the admin port its CheckURL
	// names; see watching.go) and polls the others; WatchOff only polls.
	Watch string
	// WatchTimeout is how long a watch may be silent (no event, no
	// heartbeat) before the backend is taken as frozen: the bound on
	// noticing a SIGSTOPped broker without its checks. Zero means
	// watch.DefaultHeartbeatTimeout; it must exceed the broker's heartbeat
	// interval (brokerd's is 3s).
	WatchTimeout time.Duration
}

// MinWatchTimeout is brokerd's heartbeat interval: a WatchTimeout not
// above it would take every quiet stream as stalled between two beats.
const MinWatchTimeout = 3 * time.Second

// Values of Config.Watch.
const (
	WatchAuto = "auto"
	WatchOff  = "off"
)

// Validate reports every problem with c at once. Zero values are fine (they
// take defaults); negative ones and unknown modes are not. NewMonitor does
// not fail on an invalid Config, it falls back to defaults, so call Validate
// where a configuration is loaded to tell the operator.
func (c Config) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"interval", c.Interval}, {"timeout", c.Timeout}, {"no_master_interval", c.NoMasterInterval}, {"min_recheck_interval", c.MinRecheckInterval}, {"watch_timeout", c.WatchTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", d.name, d.v))
		}
	}
	if c.Rise < 0 || c.Fall < 0 {
		errs = append(errs, fmt.Errorf("rise and fall must not be negative, got %d and %d", c.Rise, c.Fall))
	}
	switch c.Mode {
	case "", ModeMaster, ModeAny:
	default:
		errs = append(errs, fmt.Errorf("mode: want %q or %q, got %q", ModeMaster, ModeAny, c.Mode))
	}
	switch c.Watch {
	case "", WatchAuto, WatchOff:
	default:
		errs = append(errs, fmt.Errorf("watch: want %q or %q, got %q", WatchAuto, WatchOff, c.Watch))
	}
	if c.WatchTimeout > 0 && c.WatchTimeout <= MinWatchTimeout {
		errs = append(errs, fmt.Errorf("watch_timeout: must be longer than brokerd's heartbeat interval (%v), got %v", MinWatchTimeout, c.WatchTimeout))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero (and invalid) fields as documented on Config.
func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout <= 0 || c.Timeout > c.Interval {
		c.Timeout = c.Interval
	}
	if c.Rise <= 0 {
		c.Rise = DefaultRise
	}
	if c.Fall <= 0 {
		c.Fall = DefaultFall
	}
	if c.Mode != ModeAny {
		c.Mode = ModeMaster
	}
	if c.NoMasterInterval <= 0 {
		c.NoMasterInterval = DefaultNoMasterInterval
	}
	if c.NoMasterInterval > c.Interval {
		c.NoMasterInterval = c.Interval
	}
	if c.Watch != WatchOff {
		c.Watch = WatchAuto
	}
	if c.WatchTimeout <= 0 {
		c.WatchTimeout = watch.DefaultHeartbeatTimeout
	}
	return c
}
