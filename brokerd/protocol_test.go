package brokerd

import (
	"strings"
	"testing"
	"time"

	"handover/frame"
)

func TestConnectNegotiation(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	tests := []struct {
		accept  string
		want    string
		wantErr bool
	}{
		{"", "1.0", false},
		{"1.0", "1.0", false},
		{"1.0,1.1", "1.1", false},
		{"1.1,1.2", "1.2", false},
		{"1.2", "1.2", false},
		{"2.0", "", true},
	}
	for _, tt := range tests {
		t.Run("accept="+tt.accept, func(t *testing.T) {
			c := dialRaw(t, s.Addr())
			f := frame.New(frame.CONNECT, "host", "/")
			if tt.accept != "" {
				f.Set("accept-version", tt.accept)
			}
			c.sendFrame(f)
			got := c.read()
			if tt.wantErr {
				if got.Command != frame.ERROR || got.Value("version") == "" {
					t.Fatalf("want ERROR listing versions, got %v", got)
				}
				c.expectClosed()
				return
			}
			if got.Command != frame.CONNECTED || got.Value("version") != tt.want {
				t.Fatalf("want CONNECTED version %s, got %v", tt.want, got)
			}
		})
	}
}

// TestBadInput checks that every kind of bad input gets an ERROR frame whose
// message says what was wrong, that the connection is closed, and that
// another client on the same broker is unaffected.
func TestBadInput(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.MaxBody = 1024
		o.MaxHeaders = 10
		o.MaxHeaderLine = 200
	})
	s.waitReady(t)
	tests := []struct {
		name    string
		connect bool
		input   string
		want    string // in the ERROR's message header
	}{
		{"frame before CONNECT", false, "SEND\ndestination:/queue/a\n\nx\x00", "first frame must be CONNECT"},
		{"not STOMP", false, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed frame"},
		{"unknown command", true, "FROB\n\n\x00", "unknown command FROB"},
		{"header without colon", true, "SEND\ndestination\n\n\x00", "no colon"},
		{"body over limit", true, "SEND\ndestination:/queue/a\ncontent-length:2000\n\n", "frame body too large"},
		{"body over limit without content-length", true, "SEND\ndestination:/queue/a\n\n" + strings.Repeat("x", 2000) + "\x00", "frame body too large"},
		{"too many headers", true, "SEND\n" + strings.Repeat("h:v\n", 11) + "\n\x00", "too many headers"},
		{"header line too long", true, "SEND\nh:" + strings.Repeat("v", 300) + "\n\n\x00", "header line too long"},
		{"SEND without destination", true, "SEND\nreceipt:r1\n\nx\x00", "missing destination"},
		{"SEND to bad destination", true, "SEND\ndestination:foo\n\nx\x00", "must be /queue/NAME or /topic/NAME"},
		{"ACK of unknown id", true, "ACK\nid:nope\n\n\x00", `unknown message id "nope"`},
		{"NACK without id", true, "NACK\n\n\x00", "neither an id nor a message-id"},
		{"bad escape", true, "SEND\ndestination:/queue/a\nh:\\t\n\n\x00", "undefined escape"},
		{"bad content-length", true, "SEND\ndestination:/queue/a\ncontent-length:-1\n\n\x00", "content-length"},
		{"SUBSCRIBE without id", true, "SUBSCRIBE\ndestination:/queue/a\n\n\x00", "no id header"},
		{"bad ack mode", true, "SUBSCRIBE\nid:1\ndestination:/queue/a\nack:sometimes\n\n\x00", "must be auto, client or client-individual"},
		{"duplicate subscription id", true, "SUBSCRIBE\nid:1\ndestination:/queue/a\n\n\x00SUBSCRIBE\nid:1\ndestination:/queue/b\n\n\x00", "already in use"},
		{"COMMIT of unknown transaction", true, "COMMIT\ntransaction:t9\n\n\x00", "not open"},
		{"second CONNECT", true, "CONNECT\naccept-version:1.2\n\n\x00", "already connected"},
		{"bad heart-beat", false, "CONNECT\naccept-version:1.2\nheart-beat:x\n\n\x00", "heart-beat"},
	}
	bystander := connectRaw(t, s.Addr())
	bystander.send("SUBSCRIBE\nid:b\ndestination:/queue/bystander\n\n\x00")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c *raw
			if tt.connect {
				c = connectRaw(t, s.Addr())
			} else {
				c = dialRaw(t, s.Addr())
			}
			c.send(tt.input)
			f := c.read()
			if f.Command != frame.ERROR {
				t.Fatalf("want ERROR, got %v", f)
			}
			if msg := f.Value("message"); !strings.Contains(msg, tt.want) {
				t.Fatalf("ERROR message %q does not contain %q", msg, tt.want)
			}
			c.expectClosed()
		})
	}
	// The bystander still works.
	bystander.send("SEND\ndestination:/queue/bystander\nreceipt:r\n\nstill here\x00")
	var gotMsg, gotReceipt bool
	for !gotMsg || !gotReceipt {
		f := bystander.read()
		switch f.Command {
		case frame.MESSAGE:
			gotMsg = string(f.Body) == "still here"
		case frame.RECEIPT:
			gotReceipt = true
		default:
			t.Fatalf("bystander got %v", f)
		}
	}
}

func TestErrorCarriesReceiptID(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	c := connectRaw(t, s.Addr())
	c.send("SEND\nreceipt:r-77\n\nx\x00")
	f := c.read()
	if f.Command != frame.ERROR || f.Value("receipt-id") != "r-77" {
		t.Fatalf("want ERROR with receipt-id r-77, got %v", f)
	}
}

func TestHeartBeatDropsSilentClient(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) { o.HeartBeat.UnmarshalText([]byte("100ms")) })
	s.waitReady(t)
	c := dialRaw(t, s.Addr())
	c.send("CONNECT\naccept-version:1.2\nheart-beat:100,100\n\n\x00")
	f := c.read()
	if f.Command != frame.CONNECTED || f.Value("heart-beat") != "100,100" {
		t.Fatalf("got %v", f)
	}
	// The broker sends heart-beats (bare EOLs, skipped by the reader) and,
	// since we stay silent, drops us after twice the interval.
	start := time.Now()
	c.expectClosed()
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("silent client dropped only after %v", el)
	}
}

func TestHeartBeatKeepsTalkingClient(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) { o.HeartBeat.UnmarshalText([]byte("50ms")) })
	s.waitReady(t)
	c := dialRaw(t, s.Addr())
	c.send("CONNECT\naccept-version:1.2\nheart-beat:50,0\n\n\x00")
	c.read()
	for i := 0; i < 10; i++ { // 10 beats at 40ms: well past the 100ms allowance
		time.Sleep(40 * time.Millisecond)
		c.send("\n")
	}
	c.send("SEND\ndestination:/queue/hb\nreceipt:1\n\n\x00")
	if f := c.read(); f.Command != frame.RECEIPT {
		t.Fatalf("want RECEIPT, got %v", f)
	}
}

func TestHeaderEscapingPerVersion(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		t.Run(v, func(t *testing.T) {
			c := dialRaw(t, s.Addr())
			c.send("CONNECT\naccept-version:" + v + "\n\n\x00")
			c.read()
			c.r.SetVersion(frame.Version(v))
			q := "/queue/esc" + v
			c.send("SUBSCRIBE\nid:s\ndestination:" + q + "\n\n\x00")
			switch v {
			case "1.0":
				c.send("SEND\ndestination:" + q + "\nk:a\\cb\n\n\x00")
			default:
				c.send("SEND\ndestination:" + q + "\nk:a\\cb\\\\\\nc\n\n\x00")
			}
			f := c.read()
			raw := f.Value("k")
			want := map[string]string{"1.0": `a\cb`, "1.1": "a:b\\\nc", "1.2": "a:b\\\nc"}[v]
			if raw != want {
				t.Fatalf("header k = %q, want %q", raw, want)
			}
		})
	}
}
