package stompclient

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/frame"
)

// Destinations with special meaning to the fake server.
const (
	destError     = "/queue/error"     // reply ERROR (message "boom") and hang up
	destDrop      = "/queue/drop"      // hang up without a word
	destBlackhole = "/queue/blackhole" // accept, never echo, never RECEIPT
)

// fakeServer is just enough of a STOMP broker to exercise the client:
// version negotiation, RECEIPTs, SEND echoed as MESSAGE to subscribers of
// the destination (on any connection), ERROR and abrupt hang-ups on demand,
// heart-beats, and a record of every frame received.
type fakeServer struct {
	t  testing.TB
	ln net.Listener

	// Configuration; set before clients connect.
	versions       []frame.Version // supported; nil means all
	heartBeat      string          // CONNECTED heart-beat header; "" omits it
	sendHB         time.Duration   // heart-beat period the server sends at; 0 never
	rejectLogin    string          // a CONNECT with this login gets ERROR
	silent         bool            // answer CONNECT, then never send anything
	disconnectGate chan struct{}   // if set, DISCONNECT's RECEIPT waits for it to close
	noRecord       bool            // do not record frames (benchmarks)
	omitSubHeader  bool            // MESSAGEs lack subscription, as from some 1.0 servers

	frames chan *frame.Frame // every client frame after CONNECT
	hbSeen chan struct{}     // a read consisting only of heart-beat newlines

	mu     sync.Mutex
	conns  map[*serverConn]bool
	subs   map[string][]serverSub // by destination
	msgSeq int
	closed bool

	wg sync.WaitGroup
}

type serverSub struct {
	sc  *serverConn
	id  string
	ack string
}

type serverConn struct {
	s       *fakeServer
	nc      net.Conn
	w       *frame.Writer
	wmu     sync.Mutex
	version frame.Version
	quit    chan struct{}
	once    sync.Once
}

func newFakeServer(t testing.TB) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &fakeServer{
		t:      t,
		ln:     ln,
		frames: make(chan *frame.Frame, 1<<16),
		hbSeen: make(chan struct{}, 64),
		conns:  map[*serverConn]bool{},
		subs:   map[string][]serverSub{},
	}
}

// start begins accepting; t.Cleanup stops the server and waits for all its
// goroutines, so a leak test sees them gone.
func (s *fakeServer) start() *fakeServer {
	s.wg.Add(1)
	go s.acceptLoop()
	s.t.Cleanup(s.close)
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) close() {
	s.mu.Lock()
	s.closed = true
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	s.ln.Close()
	for _, sc := range conns {
		sc.hangUp()
	}
	s.wg.Wait()
}

func (s *fakeServer) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		sc := &serverConn{s: s, nc: nc, w: frame.NewWriter(nc), quit: make(chan struct{})}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[sc] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go sc.serve()
	}
}

// hbReader reports reads made only of newlines once the session is up: the
// client's heart-beats, which frame.Reader otherwise swallows silently.
type hbReader struct {
	sc        *serverConn
	connected bool
}

func (h *hbReader) Read(p []byte) (int, error) {
	n, err := h.sc.nc.Read(p)
	if n > 0 && h.connected && strings.Trim(string(p[:n]), "\r\n") == "" {
		select {
		case h.sc.s.hbSeen <- struct{}{}:
		default:
		}
	}
	return n, err
}

func (sc *serverConn) hangUp() {
	sc.once.Do(func() {
		close(sc.quit)
		sc.nc.Close()
	})
}

func (sc *serverConn) send(f *frame.Frame) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if err := sc.w.Write(f); err != nil {
		return err
	}
	return sc.w.Flush()
}

func (sc *serverConn) serve() {
	s := sc.s
	defer s.wg.Done()
	defer func() {
		sc.hangUp()
		s.mu.Lock()
		delete(s.conns, sc)
		for d, subs := range s.subs {
			kept := subs[:0]
			for _, sub := range subs {
				if sub.sc != sc {
					kept = append(kept, sub)
				}
			}
			s.subs[d] = kept
		}
		s.mu.Unlock()
	}()
	hr := &hbReader{sc: sc}
	r := frame.NewReader(hr, frame.Limits{})
	f, err := r.Read()
	if err != nil {
		return
	}
	if f.Command != frame.CONNECT && f.Command != frame.STOMP {
		sc.send(frame.New(frame.ERROR, "message", "expected CONNECT"))
		return
	}
	if s.rejectLogin != "" && f.Value("login") == s.rejectLogin {
		sc.send(frame.New(frame.ERROR, "message", "bad login"))
		return
	}
	v, err := frame.Negotiate(f.Value("accept-version"), s.versions...)
	if err != nil {
		sc.send(frame.New(frame.ERROR, "message", err.Error()))
		return
	}
	sc.version = v
	r.SetVersion(v)
	sc.w.SetVersion(v)
	reply := frame.New(frame.CONNECTED, "server", "fake/1")
	if v != frame.V10 {
		reply.Add("version", string(v))
	}
	if s.heartBeat != "" {
		reply.Add("heart-beat", s.heartBeat)
	}
	if err := sc.send(reply); err != nil {
		return
	}
	hr.connected = true
	if s.silent {
		<-sc.quit // the client must notice on its own
		return
	}
	if s.sendHB > 0 {
		s.wg.Add(1)
		go sc.heartbeats()
	}
	for {
		f, err := r.Read()
		if err != nil {
			return
		}
		if !s.noRecord {
			s.frames <- f
		}
		if !sc.handle(f) {
			return
		}
	}
}

func (sc *serverConn) heartbeats() {
	defer sc.s.wg.Done()
	t := time.NewTicker(sc.s.sendHB)
	defer t.Stop()
	for {
		select {
		case <-sc.quit:
			return
		case <-t.C:
		}
		sc.wmu.Lock()
		err := sc.w.WriteHeartbeat()
		if err == nil {
			err = sc.w.Flush()
		}
		sc.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// handle processes one frame; false means hang up.
func (sc *serverConn) handle(f *frame.Frame) bool {
	s := sc.s
	receipt, wantReceipt := f.Get("receipt")
	switch f.Command {
	case frame.SEND:
		switch f.Value("destination") {
		case destError:
			e := frame.New(frame.ERROR, "message", "boom")
			if wantReceipt {
				e.Add("receipt-id", receipt)
			}
			e.Body = []byte("the fake server was told to fail")
			sc.send(e)
			return false
		case destDrop:
			return false
		case destBlackhole:
			return true
		}
		s.echo(f)
	case frame.SUBSCRIBE:
		s.mu.Lock()
		d := f.Value("destination")
		s.subs[d] = append(s.subs[d], serverSub{sc: sc, id: f.Value("id"), ack: f.Value("ack")})
		s.mu.Unlock()
	case frame.UNSUBSCRIBE:
		s.mu.Lock()
		for d, subs := range s.subs {
			kept := subs[:0]
			for _, sub := range subs {
				if sub.sc != sc || sub.id != f.Value("id") {
					kept = append(kept, sub)
				}
			}
			s.subs[d] = kept
		}
		s.mu.Unlock()
	case frame.DISCONNECT:
		if s.disconnectGate != nil {
			select {
			case <-s.disconnectGate:
			case <-sc.quit:
				return false
			}
		}
		if wantReceipt {
			sc.send(frame.New(frame.RECEIPT, "receipt-id", receipt))
		}
		return false
	}
	if wantReceipt {
		if err := sc.send(frame.New(frame.RECEIPT, "receipt-id", receipt)); err != nil {
			return false
		}
	}
	return true
}

// echo delivers a SEND to every subscriber of its destination as a MESSAGE,
// with the headers each version expects.
func (s *fakeServer) echo(f *frame.Frame) {
	d := f.Value("destination")
	s.mu.Lock()
	subs := append([]serverSub(nil), s.subs[d]...)
	s.msgSeq++
	mid := "m-" + strconv.Itoa(s.msgSeq)
	s.mu.Unlock()
	for _, sub := range subs {
		m := f.Clone()
		m.Command = frame.MESSAGE
		m.Del("receipt")
		m.Set("message-id", mid)
		if !s.omitSubHeader {
			m.Set("subscription", sub.id)
		}
		if sub.sc.version == frame.V12 && sub.ack != "" && sub.ack != "auto" {
			m.Set("ack", "ack-"+mid)
		}
		sub.sc.send(m) // a failed subscriber is its own reader's problem
	}
}

// waitFrame returns the next recorded frame with the given command,
// skipping others.
func (s *fakeServer) waitFrame(t testing.TB, command string) *frame.Frame {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f := <-s.frames:
			if f.Command == command {
				return f
			}
		case <-timeout:
			t.Fatalf("server never received %s", command)
			return nil
		}
	}
}
