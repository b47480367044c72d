package brokerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
	"handover/frame"
	"handover/internal/testutil"
	"handover/stompclient"
)

func dial(t testing.TB, addr string) *stompclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx5(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func recv(t testing.TB, s *stompclient.Subscription) *frame.Frame {
	t.Helper()
	return testutil.Recv(t, s, 5*time.Second)
}

func expectNone(t testing.TB, s *stompclient.Subscription, d time.Duration) {
	t.Helper()
	testutil.ExpectNone(t, s, d)
}

func TestQueueRoundTrip(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	for _, mode := range []stompclient.AckMode{stompclient.AckAuto, stompclient.AckClient, stompclient.AckClientIndividual} {
		t.Run(string(mode), func(t *testing.T) {
			q := "/queue/rt-" + string(mode)
			p := dial(t, s.Addr())
			body := []byte("bin\x00ary\x00")
			if err := p.SendReceipt(ctx5(t), q, body, frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "x-app", Value: "v:1"}); err != nil {
				t.Fatal(err)
			}
			c := dial(t, s.Addr())
			sub, err := c.Subscribe(q, mode)
			if err != nil {
				t.Fatal(err)
			}
			m := recv(t, sub)
			if string(m.Body) != string(body) || m.Value("x-app") != "v:1" || m.Value("destination") != q ||
				!strings.HasPrefix(m.Value("message-id"), "ID:") || m.Value("subscription") != sub.ID() {
				t.Fatalf("bad message %v body %q", m, m.Body)
			}
			if mode != stompclient.AckAuto {
				if err := c.AckReceipt(ctx5(t), m); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 5*time.Second, func() error {
				for _, qs := range s.Status().Queues {
					if qs.Name == q && qs.Depth == 0 && qs.Dequeued == 1 {
						return nil
					}
				}
				return fmt.Errorf("queue not drained: %+v", s.Status().Queues)
			})
		})
	}
}

func TestQueueRoundRobinAndPrefetch(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	q := "/queue/rr"
	c1, c2 := dial(t, s.Addr()), dial(t, s.Addr())
	s1, _ := c1.SubscribeReceipt(ctx5(t), q, stompclient.AckClientIndividual, frame.Header{Key: "activemq.prefetchSize", Value: "2"})
	s2, _ := c2.SubscribeReceipt(ctx5(t), q, stompclient.AckClientIndividual, frame.Header{Key: "activemq.prefetchSize", Value: "2"})
	p := dial(t, s.Addr())
	for i := 0; i < 6; i++ {
		if err := p.SendReceipt(ctx5(t), q, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Each subscriber holds at most its prefetch of 2; the rest wait.
	a := []*frame.Frame{recv(t, s1), recv(t, s1)}
	b := []*frame.Frame{recv(t, s2), recv(t, s2)}
	expectNone(t, s1, 100*time.Millisecond)
	expectNone(t, s2, 10*time.Millisecond)
	if string(a[0].Body)+string(b[0].Body) != "01" && string(a[0].Body)+string(b[0].Body) != "10" {
		t.Fatalf("not round-robin: %q %q", a[0].Body, b[0].Body)
	}
	// Acking one frees one slot.
	if err := c1.Ack(a[0]); err != nil {
		t.Fatal(err)
	}
	recv(t, s1)
	expectNone(t, s2, 50*time.Millisecond)
}

func TestRedeliveryWhenConsumerGoes(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	q := "/queue/redeliver"
	p := dial(t, s.Addr())
	for i := 0; i < 3; i++ {
		p.SendReceipt(ctx5(t), q, []byte(fmt.Sprint(i)), frame.Header{Key: "persistent", Value: "true"})
	}
	c1 := dial(t, s.Addr())
	s1, _ := c1.Subscribe(q, stompclient.AckClient)
	m0, m1 := recv(t, s1), recv(t, s1)
	recv(t, s1)
	if err := c1.AckReceipt(ctx5(t), m1); err != nil { // cumulative: acks 0 and 1
		t.Fatal(err)
	}
	_ = m0
	c1.Close()
	c2 := dial(t, s.Addr())
	s2, _ := c2.Subscribe(q, stompclient.AckClientIndividual)
	m := recv(t, s2)
	if string(m.Body) != "2" || m.Value("redelivered") != "true" {
		t.Fatalf("want message 2 redelivered, got %v %q", m, m.Body)
	}
	// NACK: redelivered again.
	if err := c2.Nack(m); err != nil {
		t.Fatal(err)
	}
	m = recv(t, s2)
	if string(m.Body) != "2" || m.Value("redelivered") != "true" {
		t.Fatalf("want message 2 again after NACK, got %q", m.Body)
	}
	expectNone(t, s2, 50*time.Millisecond)
}

func TestTopicFanOut(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	c1, c2 := dial(t, s.Addr()), dial(t, s.Addr())
	ctx := ctx5(t)
	s1, err := c1.SubscribeReceipt(ctx, "/topic/news", stompclient.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c2.SubscribeReceipt(ctx, "/topic/news", stompclient.AckClient)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, s.Addr())
	p.SendReceipt(ctx, "/topic/news", []byte("hello"))
	if string(recv(t, s1).Body) != "hello" {
		t.Fatal("s1")
	}
	m := recv(t, s2)
	if string(m.Body) != "hello" {
		t.Fatal("s2")
	}
	if err := c2.AckReceipt(ctx, m); err != nil {
		t.Fatalf("ack of a topic message: %v", err)
	}
}

func TestTransactions(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	q := "/queue/tx"
	c := dial(t, s.Addr())
	sub, _ := c.Subscribe(q, stompclient.AckAuto)
	p := dial(t, s.Addr())
	ctx := ctx5(t)
	p.Begin("t1")
	p.Send(q, []byte("a"), frame.Header{Key: "transaction", Value: "t1"}, frame.Header{Key: "persistent", Value: "true"})
	p.Send(q, []byte("b"), frame.Header{Key: "transaction", Value: "t1"})
	expectNone(t, sub, 100*time.Millisecond)
	if err := p.SendFrame(ctx, frame.New(frame.COMMIT, "transaction", "t1"), true); err != nil {
		t.Fatal(err)
	}
	if string(recv(t, sub).Body) != "a" || string(recv(t, sub).Body) != "b" {
		t.Fatal("committed messages not delivered in order")
	}
	p.Begin("t2")
	p.Send(q, []byte("c"), frame.Header{Key: "transaction", Value: "t2"})
	if err := p.SendFrame(ctx, frame.New(frame.ABORT, "transaction", "t2"), true); err != nil {
		t.Fatal(err)
	}
	expectNone(t, sub, 100*time.Millisecond)
}

// TestDurableAcrossRestart: receipted persistent messages survive a restart;
// acknowledged ones do not come back; ids stay unique.
func TestDurableAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, nil)
	s.waitReady(t)
	q := "/queue/durable"
	p := dial(t, s.Addr())
	for i := 0; i < 10; i++ {
		if err := p.SendReceipt(ctx5(t), q, []byte(fmt.Sprint(i)), frame.Header{Key: "persistent", Value: "true"}); err != nil {
			t.Fatal(err)
		}
	}
	c := dial(t, s.Addr())
	sub, _ := c.Subscribe(q, stompclient.AckClientIndividual)
	ids := map[string]bool{}
	for i := 0; i < 4; i++ {
		m := recv(t, sub)
		ids[m.Value("message-id")] = true
		if err := c.AckReceipt(ctx5(t), m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}

	s2 := startServer(t, dir, nil)
	s2.waitReady(t)
	if s2.Status().Epoch != 2 {
		t.Fatalf("epoch %d after restart, want 2", s2.Status().Epoch)
	}
	c2 := dial(t, s2.Addr())
	sub2, _ := c2.Subscribe(q, stompclient.AckClientIndividual)
	for i := 4; i < 10; i++ {
		m := recv(t, sub2)
		if string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("got %q, want %d", m.Body, i)
		}
		if m.Value("redelivered") != "true" {
			t.Fatalf("recovered message %d not marked redelivered: %v", i, m)
		}
		c2.Ack(m)
	}
	expectNone(t, sub2, 100*time.Millisecond)
	p2 := dial(t, s2.Addr())
	p2.SendReceipt(ctx5(t), q, []byte("new"))
	if id := recv(t, sub2).Value("message-id"); ids[id] {
		t.Fatalf("message id %s reused after restart", id)
	}
}

// TestMasterSlave runs two brokers on one data directory in one process (OFD
// locks conflict between open files, even in one process).
func TestMasterSlave(t *testing.T) {
	dir := t.TempDir()
	m := startServer(t, dir, nil)
	m.waitReady(t)
	p := dial(t, m.Addr())
	if err := p.SendReceipt(ctx5(t), "/queue/ms", []byte("x"), frame.Header{Key: "persistent", Value: "true"}); err != nil {
		t.Fatal(err)
	}
	slaveListen := testutil.FreePort(t)
	sl := startServer(t, dir, func(o *Options) { o.Listen = slaveListen })
	testutil.Eventually(t, 5*time.Second, func() error {
		st := getStatus(t, sl.AdminAddr())
		if st.Role != RoleSlave {
			return fmt.Errorf("role %q", st.Role)
		}
		return nil
	})
	if resp, err := http.Get("http://" + sl.AdminAddr() + "/readyz"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("slave readyz: %v %v", resp, err)
	}
	if _, err := stompclient.Dial(ctx5(t), slaveListen, stompclient.Options{}); err == nil {
		t.Fatal("slave's STOMP port is open")
	}
	m.stop(t)
	sl.waitReady(t)
	if st := getStatus(t, sl.AdminAddr()); st.Role != RoleMaster || st.Epoch != 2 {
		t.Fatalf("after takeover: %+v", st)
	}
	c := dial(t, sl.Addr())
	sub, _ := c.Subscribe("/queue/ms", stompclient.AckAuto)
	if string(recv(t, sub).Body) != "x" {
		t.Fatal("message lost in takeover")
	}
}

func TestLeaseLostStopsServing(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, nil)
	s.waitReady(t)
	c := dial(t, s.Addr())
	// Another master appears (as after an NFS lease expiry).
	if err := os.WriteFile(filepath.Join(dir, "epoch"), []byte("99\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		if err == nil || !strings.Contains(err.Error(), ErrLeaseLost.Error()) {
			t.Fatalf("Run returned %v, want ErrLeaseLost", err)
		}
		close(s.done)
	case <-time.After(5 * time.Second):
		t.Fatal("still serving 5s after losing the lock")
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("client connection survived the lost lock")
	}
}

func TestAdminEndpoints(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	p := dial(t, s.Addr())
	p.SendReceipt(ctx5(t), "/queue/adm", []byte("x"), frame.Header{Key: "persistent", Value: "true"})
	st := getStatus(t, s.AdminAddr())
	if st.Role != RoleMaster || st.Epoch != 1 || !st.Ready || len(st.Queues) != 1 || st.Queues[0].Depth != 1 || st.Journal == nil || st.Journal.Live != 1 {
		t.Fatalf("status %+v", st)
	}
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": `"ready":true`, "/metrics": `brokerd_queue_depth{destination="/queue/adm"} 1`} {
		resp, err := http.Get("http://" + s.AdminAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b := new(strings.Builder)
		_, _ = fmt.Fprint(b, readAll(resp))
		if resp.StatusCode != 200 || !strings.Contains(b.String(), want) {
			t.Fatalf("%s: %d %q lacks %q", path, resp.StatusCode, b.String(), want)
		}
	}
}

func getStatus(t testing.TB, admin string) Status {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b := new(strings.Builder)
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// failingStore refuses every write, as a full disk does.
type failingStore struct{}

func (failingStore) Append(recs []store.Record, done func(error)) {
	if len(recs) == 0 {
		done(nil)
		return
	}
	done(errors.New("write /data/journal/00000001.log: no space left on device"))
}
func (failingStore) Close() error                   { return nil }
func (failingStore) Stats() store.Stats             { return store.Stats{} }
func (failingStore) Read(id string) ([]byte, error) { return nil, store.ErrNotFound }

// failingStandby promotes to a failingStore.
type failingStandby struct{}

func (failingStandby) CatchUp(store.Index) (store.Progress, error) { return store.Progress{}, nil }
func (failingStandby) Promote(store.Promotion, store.Index) (store.Store, error) {
	return failingStore{}, nil
}
func (failingStandby) Close() error { return nil }

// TestStoreFailure: when the store cannot persist (a full disk), the
// producer gets an ERROR instead of a RECEIPT, the message is not delivered
// (it was never accepted), and other clients keep working.
func TestStoreFailure(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.Store = func(*logrus.Entry) (store.Standby, error) { return failingStandby{}, nil }
	})
	s.waitReady(t)
	c := dial(t, s.Addr())
	sub, err := c.SubscribeReceipt(ctx5(t), "/queue/full", stompclient.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, s.Addr())
	err = p.SendReceipt(ctx5(t), "/queue/full", []byte("x"), frame.Header{Key: "persistent", Value: "true"})
	var se *stompclient.ServerError
	if !errors.As(err, &se) || !strings.Contains(se.Message, "could not persist") {
		t.Fatalf("want an ERROR saying the frame was not persisted, got %v", err)
	}
	expectNone(t, sub, 100*time.Millisecond)
	// Non-persistent traffic and other connections are unaffected.
	p2 := dial(t, s.Addr())
	if err := p2.SendReceipt(ctx5(t), "/queue/full", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if string(recv(t, sub).Body) != "y" {
		t.Fatal("wrong message")
	}
}
