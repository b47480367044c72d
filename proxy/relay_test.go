package proxy

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"handover/internal/serve"
	"handover/proxy/proxytest"
)

// TestRelaySmallThenBulk: a connection that carries small messages, then a
// burst larger than the relay buffer (which moves the copiers to splice),
// then small messages again, delivers every byte in order, and the byte
// counters see each exactly once.
func TestRelaySmallThenBulk(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startServiceOpts(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, false)
	c := ts.dial(t)
	var total int64
	for range 3 {
		roundTrip(t, c, "SEND\n\nsmall\x00")
		total += 12
	}

	bulk := bytes.Repeat([]byte("0123456789abcdef"), 4*relayBufSize/16+7) // not a multiple of the buffer
	go func() {
		if _, err := c.Write(bulk); err != nil {
			t.Errorf("write bulk: %v", err)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read bulk echo: %v", err)
	}
	if !bytes.Equal(got, bulk) {
		t.Fatal("bulk echo differs")
	}
	total += int64(len(bulk))

	for i := range 3 {
		msg := strings.Repeat("x", 1+i*100)
		roundTrip(t, c, msg)
		total += int64(len(msg))
	}
	c.Close()
	ts.waitStatus(t, "connection gone", func(st ServiceStatus) bool { return st.Active == 0 })
	for _, dir := range []string{"up", "down"} {
		if got := ts.metric(t, "handover_proxy_bytes_total", "direction", dir); got != float64(total) {
			t.Errorf("bytes %s = %v, want %d", dir, got, total)
		}
	}
}
