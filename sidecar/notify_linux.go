package sidecar

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as systemd reads it.
func monotonicUsec() (string, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "", false
	}
	return strconv.FormatInt(ts.Nano()/1000, 10), true
}
