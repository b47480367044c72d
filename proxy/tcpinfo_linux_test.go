package proxy

import (
	"net"
	"testing"
)

// TestKernelBaselines: the tcpi_bytes_acked baselines that startMeter takes
// as given once one pair has confirmed them are the kernel's: an accepted
// socket starts at acceptedBase, a connected one at dialedBase (its SYN).
func TestKernelBaselines(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range 3 {
		dialed, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		accepted, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		a, aok := kernelInfoOf(accepted)
		d, dok := kernelInfoOf(dialed)
		if !aok || !dok {
			t.Fatal("no TCP_INFO")
		}
		if a.acked != acceptedBase || d.acked != dialedBase {
			t.Errorf("bytes_acked before any data: accepted %d, dialed %d; want %d, %d", a.acked, d.acked, acceptedBase, dialedBase)
		}
		accepted.Close()
		dialed.Close()
	}
}
