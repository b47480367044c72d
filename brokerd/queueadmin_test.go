package brokerd

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"

	"handover/frame"
)

// TestBrowseAndPurge: an operator browses the head of a queue (headers
// read back from the journal where memory does not hold them) without
// consuming it, then purges it; the purge is journaled, so the messages do
// not come back after a restart.
func TestBrowseAndPurge(t *testing.T) {
	dir := t.TempDir()
	// A budget too small to cache the bodies: browsing reads them back.
	s := startServer(t, dir, func(o *Options) { o.MaxMemory = 16 << 10 })
	s.waitReady(t)
	p := dial(t, s.Addr())
	for i := range 5 {
		if err := p.SendReceipt(ctx5(t), "/queue/admin", make([]byte, 4<<10), frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "n", Value: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var browsed struct {
		Messages []browsedMessage `json:"messages"`
	}
	code, body := adminCall(t, "GET", "http://"+s.AdminAddr()+"/api/browse?queue=/queue/admin&limit=3")
	if code != 200 || json.Unmarshal([]byte(body), &browsed) != nil || len(browsed.Messages) != 3 {
		t.Fatalf("browse: %d %s", code, body)
	}
	for i, m := range browsed.Messages {
		if m.Headers["n"] != strconv.Itoa(i) || !m.Persistent || m.Error != "" || m.Size < 4<<10 {
			t.Errorf("browsed message %d: %+v", i, m)
		}
	}
	if d := queueDepth(t, s, "/queue/admin"); d != 5 {
		t.Fatalf("depth %d after browsing, want 5: browsing must not consume", d)
	}
	if code, body := adminCall(t, "POST", "http://"+s.AdminAddr()+"/api/purge?queue=/queue/nosuch"); code != 404 {
		t.Errorf("purge of a missing queue: %d %s", code, body)
	}
	code, body = adminCall(t, "POST", "http://"+s.AdminAddr()+"/api/purge?queue=/queue/admin")
	if code != 200 || !json.Valid([]byte(body)) || queueDepth(t, s, "/queue/admin") != 0 {
		t.Fatalf("purge: %d %s", code, body)
	}
	s.stop(t)
	s = startServer(t, dir, nil)
	s.waitReady(t)
	if d := queueDepth(t, s, "/queue/admin"); d > 0 {
		t.Fatalf("%d purged messages came back after a restart", d)
	}
}

func adminCall(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func queueDepth(t *testing.T, s *testServer, name string) int {
	t.Helper()
	for _, q := range getStatus(t, s.AdminAddr()).Queues {
		if q.Name == name {
			return q.Depth
		}
	}
	return -1
}
