package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"golang.org/x/sys/unix"

	"handover/health/watch"
)

// The arrival fleet is one of BenchmarkWatchPromotion's two simulated
// fleets. 10,000 sidecars live on 10,000 hosts, and reading an event costs
// each of them a little; a fleet simulated on the broker's own machine
// spends all of that on the two cores the broker needs for its fan-out.
// (health/watch's Follow, as a sidecar runs it, spends two reads and a
// goroutine switch per event: about as much CPU as the broker's send.) So
// this fleet times when each event arrives, not when it is read: every
// stream is a real TCP connection that sends GET /watch and parses the
// server-sent events it gets, with the kernel's receive timestamps on
// (SO_TIMESTAMPNS), and the fleet stops reading while the benchmark
// promotes (hold), so that the broker has the machine to itself as it
// would with its fleet elsewhere. Each event is read on its own (a peek
// finds its end) so that its timestamp is that of its own segment: the
// broker sends every event in one write. But the kernel merges segments
// waiting unread in a socket, and a merged one keeps the latest time: an
// event read with more bytes behind it (a heartbeat that came during the
// hold) is reported as trailing, its time not to be trusted. The
// benchmark starts its holds just after a heartbeat, which leaves 3 s.

// wbEpollBatch is how many events one epoll_wait returns at most.
const wbEpollBatch = 256

// wbArrivalStream is one watch stream of the arrival fleet.
type wbArrivalStream struct {
	fd   int
	head bool   // the response head has been read
	buf  []byte // the start of an event read without its end
	// first says the stream has reported a state.
	first bool
}

// wbArrivalFleet reads watch streams on one epoll instance. Only its loop
// (wbRunArrivalFleet) touches it.
type wbArrivalFleet struct {
	addr    unix.SockaddrInet4
	req     []byte
	epfd    int
	streams []wbArrivalStream
	peek    []byte
	oob     []byte
	events  []unix.EpollEvent
	// firsts counts the streams that have reported a state, losses the
	// streams closed by the broker.
	firsts, losses int
	hooks          wbArrivalHooks
}

// wbArrivalHooks are what the arrival fleet tells its owner, on the
// fleet's goroutine.
type wbArrivalHooks struct {
	// seen is every state event of stream i, with its arrival as At;
	// trailing says more bytes were waiting behind it (see above).
	seen func(i int, e watch.Event, trailing bool)
	// beat is every heartbeat, loss every stream lost, ready the moment
	// every stream has reported its first state.
	beat, loss, ready func()
}

// wbRunArrivalFleet opens n streams of the watch at rawURL, wbBatch at a
// time, calls hooks.ready once every one has reported its first state,
// and then reads them until ctx is done. Whenever a channel comes from
// hold, it stops reading until that channel is closed. It returns the
// first error that is not a stream's loss.
func wbRunArrivalFleet(ctx context.Context, n int, rawURL string, hooks wbArrivalHooks, hold <-chan chan struct{}) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(u.Host)
	if err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("the arrival fleet dials IPv4 addresses only, not %q", u.Host)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	f := &wbArrivalFleet{
		addr:    unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()},
		req:     []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nAccept: text/event-stream\r\n\r\n"),
		epfd:    epfd,
		streams: make([]wbArrivalStream, 0, n),
		peek:    make([]byte, 4096),
		oob:     make([]byte, unix.CmsgSpace(16)),
		events:  make([]unix.EpollEvent, wbEpollBatch),
		hooks:   hooks,
	}
	defer f.close()
	wait := func(want int) error {
		deadline := time.Now().Add(wbLimit)
		for f.firsts+f.losses < want {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d streams have reported a state after %v (%d losses)", f.firsts, want, wbLimit, f.losses)
			}
			if err := f.poll(10); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range n {
		if err := f.open(); err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		if (i+1)%wbBatch == 0 {
			if err := wait(i + 1); err != nil {
				return err
			}
		}
	}
	if err := wait(n); err != nil {
		return err
	}
	hooks.ready()
	for lost := 0; ctx.Err() == nil; {
		select {
		case until := <-hold:
			select {
			case <-until:
			case <-ctx.Done():
				return nil
			}
		default:
		}
		if err := f.poll(10); err != nil {
			return err
		}
		for ; lost < f.losses; lost++ {
			hooks.loss()
		}
	}
	return nil
}

// open connects a new stream, sends its request and adds it to the epoll
// set, its index as the event's data.
func (f *wbArrivalFleet) open() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err == nil {
		if err = unix.Connect(fd, &f.addr); err == nil {
			_, err = unix.Write(fd, f.req)
		}
	}
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err == nil {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(len(f.streams))}
		err = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	if err != nil {
		unix.Close(fd)
		return err
	}
	f.streams = append(f.streams, wbArrivalStream{fd: fd})
	return nil
}

// poll waits up to ms milliseconds for streams to be readable and reads
// from each what it has.
func (f *wbArrivalFleet) poll(ms int) error {
	n, err := unix.EpollWait(f.epfd, f.events, ms)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return nil
		}
		return err
	}
	for _, ev := range f.events[:n] {
		if err := f.read(int(ev.Fd)); err != nil {
			return fmt.Errorf("stream %d: %w", ev.Fd, err)
		}
	}
	return nil
}

var (
	wbHeadEnd  = []byte("\r\n\r\n")
	wbEventEnd = []byte("\n\n")
)

// read takes what stream i has, one event (or the response head) per
// read, each with the receive timestamp of its last segment.
func (f *wbArrivalFleet) read(i int) error {
	s := &f.streams[i]
	for s.fd >= 0 {
		n, _, _, _, err := unix.Recvmsg(s.fd, f.peek, nil, unix.MSG_PEEK)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil || n == 0 {
			f.drop(i)
			return nil
		}
		sep := wbEventEnd
		if !s.head {
			sep = wbHeadEnd
		}
		// The event's start may have been read already, without its end.
		joined := f.peek[:n]
		if len(s.buf) > 0 {
			joined = append(s.buf[:len(s.buf):len(s.buf)], joined...)
		}
		end := bytes.Index(joined, sep)
		take := n
		if end >= 0 {
			take = end + len(sep) - len(s.buf)
		}
		got, oobn, _, _, err := unix.Recvmsg(s.fd, f.peek[:take], f.oob, 0)
		if err != nil || got != take {
			return fmt.Errorf("read %d of the %d bytes peeked: %v", got, take, err)
		}
		s.buf = append(s.buf, f.peek[:take]...)
		if end < 0 {
			continue // the rest of the event has yet to arrive
		}
		at, err := wbReceived(f.oob[:oobn])
		if err != nil {
			return err
		}
		block := s.buf[:len(s.buf)-len(sep)]
		s.buf = s.buf[:0]
		if !s.head {
			if !bytes.HasPrefix(block, []byte("HTTP/1.1 200 ")) {
				return fmt.Errorf("not a watch: %q", block)
			}
			s.head = true
			continue
		}
		if err := f.event(i, block, at, n > take); err != nil {
			return err
		}
	}
	return nil
}

// wbReceived is the receive timestamp in a read's control messages.
func wbReceived(oob []byte) (time.Time, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, err
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:]))), nil
		}
	}
	return time.Time{}, errors.New("a read without its receive timestamp (SO_TIMESTAMPNS)")
}

// event handles one server-sent event: brokerd's are "event: state" with
// one data line, and heartbeats are comments. trailing: more bytes waited
// behind it.
func (f *wbArrivalFleet) event(i int, block []byte, at time.Time, trailing bool) error {
	var name, data []byte
	for line := range bytes.SplitSeq(block, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("event: ")); ok {
			name = v
		} else if v, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			data = v
		}
	}
	if string(name) != "state" {
		f.hooks.beat()
		return nil
	}
	var st struct {
		Role         string `json:"role"`
		Epoch        uint64 `json:"epoch"`
		Serving      bool   `json:"serving"`
		Stopping     bool   `json:"stopping"`
		StandbyReady bool   `json:"standby_ready"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("bad state event %q: %w", data, err)
	}
	if s := &f.streams[i]; !s.first {
		s.first = true
		f.firsts++
	}
	f.hooks.seen(i, watch.Event{Role: st.Role, Epoch: st.Epoch, Serving: st.Serving,
		Stopping: st.Stopping, StandbyReady: st.StandbyReady, At: at}, trailing)
	return nil
}

// drop closes stream i after the broker closed it or it failed.
func (f *wbArrivalFleet) drop(i int) {
	s := &f.streams[i]
	unix.Close(s.fd) // closing takes it out of the epoll set
	s.fd = -1
	f.losses++
}

func (f *wbArrivalFleet) close() {
	for i := range f.streams {
		if f.streams[i].fd >= 0 {
			unix.Close(f.streams[i].fd)
		}
	}
	unix.Close(f.epfd)
}
