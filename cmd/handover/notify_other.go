//go:build !linux

package main

// monotonicUsec: systemd runs only on Linux.
func monotonicUsec() (string, bool) { return "", false }
