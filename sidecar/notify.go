package sidecar

import "handover/internal/sdnotify"

// notify tells systemd the sidecar's state (packaging/systemd/
// handover.service has Type=notify): READY=1 once every listener serves,
// RELOADING=1 then READY=1 around a reload (SIGHUP, POST /reload),
// STOPPING=1 when shutdown begins. Outside systemd it does nothing. A
// failure is logged: a unit waiting for READY=1 would otherwise time out
// without a word.
func (sc *Sidecar) notify(state string) {
	if err := sdnotify.Notify(state); err != nil {
		sc.log.WithError(err).WithField("state", state).Warn("telling systemd the service state failed")
	}
}

// reloadingState is RELOADING=1 with the time it was sent, as
// sd_notify(3) asks (MONOTONIC_USEC, so that systemd can tell this reload
// from an older one, and Type=notify-reload works as well).
func reloadingState() string {
	if us, ok := monotonicUsec(); ok {
		return sdnotify.Reloading + "\nMONOTONIC_USEC=" + us
	}
	return sdnotify.Reloading
}
