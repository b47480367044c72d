package stompproxy

import (
	"context"
	"testing"

	"handover/internal/serve"
	"handover/proxy"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// BenchmarkThroughput compares STOMP mode with TCP mode on the same path:
// a producer and an auto-ack consumer, both through the sidecar, to one
// brokerd; a message is counted when the consumer has it. The issue's
// target is at most 10% fewer messages per second in STOMP mode.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []string{"tcp", "stomp"} {
		for _, persistentMsgs := range []bool{false, true} {
			name := mode + "/transient"
			if persistentMsgs {
				name = mode + "/persistent"
			}
			b.Run(name, func(b *testing.B) { benchThroughput(b, mode, persistentMsgs) })
		}
	}
}

func benchThroughput(b *testing.B, mode string, persistentMsgs bool) {
	br := startBroker(b, b.TempDir(), "")
	br.WaitReady(b)
	p := proxytest.NewPicker(br.Addr())
	var addr string
	if mode == "tcp" {
		ps, err := proxy.New(proxy.Options{Settings: serve.Settings{Name: "tcp", Listen: "127.0.0.1:0"}}, p, proxytest.Log(b), nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ps.Serve(ctx) }()
		b.Cleanup(func() { cancel(); <-done })
		addr = ps.Addr().String()
	} else {
		addr = startService(b, p, nil).Addr().String()
	}
	prod := dialClient(b, addr, stompclient.Options{})
	cons := dialClient(b, addr, stompclient.Options{})
	const q = "/queue/bench"
	sub, err := cons.SubscribeReceipt(ctxT(b, 5e9), q, stompclient.AckAuto)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 256)
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	errs := make(chan error, 1)
	go func() {
		for i := 0; i < b.N; i++ {
			var err error
			if persistentMsgs {
				err = prod.Send(q, payload, persistent)
			} else {
				err = prod.Send(q, payload)
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	for i := 0; i < b.N; i++ {
		select {
		case <-sub.C():
		case err := <-errs:
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
