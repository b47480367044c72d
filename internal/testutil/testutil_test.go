package testutil

import "testing"

// TestFreePortUnique: FreePort never hands out one port twice, although
// the kernel may offer a port just closed to the next bind.
func TestFreePortUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 500 {
		addr := FreePort(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}
