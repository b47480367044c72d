//go:build !linux

package sidecar

// monotonicUsec: systemd runs only on Linux.
func monotonicUsec() (string, bool) { return "", false }
