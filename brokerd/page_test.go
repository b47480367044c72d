package brokerd

import (
	"strings"
	"testing"

	"handover/frame"
)

// TestStatusPage: the page at / says, in HTML a person reads, the role,
// the queues with their depth, and on a slave whether it is ready.
func TestStatusPage(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, nil)
	s.waitReady(t)
	p := dial(t, s.Addr())
	for range 3 {
		if err := p.SendReceipt(ctx5(t), "/queue/page<&>", []byte("x"), frame.Header{Key: "persistent", Value: "true"}); err != nil {
			t.Fatal(err)
		}
	}
	code, page := adminCall(t, "GET", "http://"+s.AdminAddr()+"/")
	for _, want := range []string{`id="role">master</span>`, "serving on", `<td>/queue/page&lt;&amp;&gt;</td><td class=n>3</td>`, "epoch 1"} {
		if code != 200 || !strings.Contains(page, want) {
			t.Errorf("master's page lacks %q:\n%s", want, page)
		}
	}
	sl := startServer(t, dir, nil)
	code, page = adminCall(t, "GET", "http://"+sl.AdminAddr()+"/")
	if code != 200 || !strings.Contains(page, `id="role">slave</span>`) || !strings.Contains(page, `<h2>Standby</h2>`) {
		t.Errorf("slave's page:\n%s", page)
	}
}

// TestLatencyMetrics: a receipted persistent SEND is timed to its RECEIPT
// and its store write.
func TestLatencyMetrics(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	p := dial(t, s.Addr())
	if err := p.SendReceipt(ctx5(t), "/queue/timed", []byte("x"), frame.Header{Key: "persistent", Value: "true"}); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, s.AdminAddr())
	for _, want := range []string{`brokerd_receipt_seconds_count{command="SEND"} 1`, "brokerd_store_append_seconds_count 1", `brokerd_build_info{commit=`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
