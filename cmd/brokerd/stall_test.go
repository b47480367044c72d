package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/internal/testutil"
)

// stallProxy forwards TCP connections from a loopback listener to one
// target until Stall; from then on it forwards nothing in either direction
// and closes nothing. Bytes already read are held, no socket is read or
// written again, and connections accepted later are held without dialing
// the target. To both ends it looks like a network path that went silent
// (a black-holing firewall, a hung NAT or pooler) while every TCP
// connection stays up: the kernel still acknowledges what it buffers, so
// neither end learns anything from the transport, keepalives included.
//
// Close closes the listener and every socket and waits for the proxy's
// goroutines; the constructor registers it as a cleanup of the test.
type stallProxy struct {
	ln     net.Listener
	target string

	stallOnce, closeOnce sync.Once
	stalled              chan struct{} // closed by Stall
	closed               chan struct{} // closed by Close

	mu    sync.Mutex
	conns map[net.Conn]struct{} // both ends of every proxied connection

	wg sync.WaitGroup // the accept loop, connection handlers and copiers
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{
		ln:      ln,
		target:  target,
		stalled: make(chan struct{}),
		closed:  make(chan struct{}),
		conns:   map[net.Conn]struct{}{},
	}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		if err := p.Close(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	return p
}

// Addr is the address to connect to instead of the target.
func (p *stallProxy) Addr() string { return p.ln.Addr().String() }

// DSN is dsn with its host and port replaced by the proxy's.
func (p *stallProxy) DSN(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.Addr()
	return u.String()
}

// Stall stops all forwarding for good. A copier blocked in Read is woken
// by a read deadline in the past, which makes Read return without taking
// anything from the socket; a copier in the middle of a Write finishes
// that one write.
func (p *stallProxy) Stall() {
	p.stallOnce.Do(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		close(p.stalled)
		for c := range p.conns {
			c.SetReadDeadline(time.Unix(1, 0))
		}
	})
}

func (p *stallProxy) isStalled() bool {
	select {
	case <-p.stalled:
		return true
	default:
		return false
	}
}

// Close closes the listener and every connection, and waits up to timeout
// for the proxy's goroutines to end. It may be called more than once.
func (p *stallProxy) Close(timeout time.Duration) error {
	p.closeOnce.Do(func() {
		close(p.closed)
		p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("proxy %s to %s: goroutines still running %v after Close", p.Addr(), p.target, timeout)
	}
}

// track registers c so that Stall and Close reach it; it returns false,
// with c closed, once the proxy is closed.
func (p *stallProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	if p.isStalled() {
		c.SetReadDeadline(time.Unix(1, 0))
	}
	return true
}

func (p *stallProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *stallProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

// handle proxies one client connection: two copiers, one per direction,
// and both sockets closed when both copiers are done.
func (p *stallProxy) handle(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	if p.isStalled() {
		<-p.closed // a new connection on a silent path: accepted, never answered
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil || !p.track(server) {
		return
	}
	defer p.untrack(server)
	var copiers sync.WaitGroup
	copiers.Add(2)
	p.wg.Add(2)
	go p.copy(&copiers, server, client) // to the server
	go p.copy(&copiers, client, server) // to the client
	copiers.Wait()
}

// copy forwards src to dst until src ends, passing the end of the stream
// on as a half-close; once the proxy is stalled it holds what it read and
// touches neither socket again until Close.
func (p *stallProxy) copy(copiers *sync.WaitGroup, dst, src net.Conn) {
	defer p.wg.Done()
	defer copiers.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.isStalled() {
			<-p.closed
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			dst.(*net.TCPConn).CloseWrite()
			return
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// startVia starts a broker of c whose database sessions (lock, store,
// reads, and the -init before it) all go through px.
func (c *pgCluster) startVia(px *stallProxy, name string, args ...string) *broker {
	c.t.Helper()
	via := *c
	via.dsn = px.DSN(c.t, c.srv.DSN())
	return via.start(name, args...)
}

// TestPostgresStalledMaster: every database connection of the master
// stalls (its proxy stops forwarding, closing nothing) under receipted
// load. The server keeps the master's session and so its advisory lock;
// the slave finds the lease expired by the database's clock, ends that
// session and takes over within lease_timeout plus slack. The master
// cannot verify its session, stops serving before the slave serves, and
// exits 3 by itself while still stalled. Nothing of the old epoch commits
// after the new one, and every receipted message is delivered.
func TestPostgresStalledMaster(t *testing.T) {
	const (
		// leaseTimeout leaves each of the lease's checks (half of what
		// is left of it after one lock_retry: 875 ms here) room for a
		// database busy with -race and other tests. At 1 s a check had
		// 125 ms, and the new master lost its lease on a loaded machine.
		leaseTimeout = 3 * time.Second
		// takeoverSlack covers the slave's polling (it looks again just
		// after the lease runs out), ending the session, the epoch
		// increment and promotion, with -race and a busy machine.
		takeoverSlack = 2 * time.Second
		// waitFor is how long the test watches before giving up, longer
		// than the bounds, so a failure reports what did happen.
		waitFor = 30 * time.Second
	)
	c := newPGCluster(t)
	cfg := filepath.Join(t.TempDir(), "lease.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("lease_timeout = %q\n", leaseTimeout)), 0o644); err != nil {
		t.Fatal(err)
	}
	pg := fmt.Sprintf("127.0.0.1:%d", c.srv.Port())
	pa, pb := newStallProxy(t, pg), newStallProxy(t, pg)
	a := c.startVia(pa, "brokerd-a", "-config", cfg)
	a.waitRole(t, "master")
	b := c.startVia(pb, "brokerd-b", "-config", cfg)
	b.waitRole(t, "slave")
	if st, err := a.status(); err != nil || st["store"] != "postgres://postgres@"+pa.Addr()+"/postgres" {
		t.Fatalf("the master's /status store is %v (%v), want its proxy %s", st["store"], err, pa.Addr())
	}

	const queue = "/queue/stalled"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 100, time.Time{})

	stalled := time.Now()
	pa.Stall()
	// Watch both brokers in one loop: the slave first, then the master's
	// port, so that a slave seen serving while the master still accepts
	// proves two masters at once.
	var took, stopped, exited time.Duration
	testutil.Eventually(t, waitFor, func() error {
		if took == 0 {
			if st, err := b.status(); err == nil && st["role"] == "master" && st["ready"] == true {
				took = time.Since(stalled)
			}
		}
		if stopped == 0 {
			if portClosed(a.listen) {
				stopped = time.Since(stalled)
			} else if took != 0 {
				t.Fatalf("two masters: the slave serves (%v after the stall) while the stalled master still accepts connections", took)
			}
		}
		if exited == 0 {
			select {
			case <-a.p.Done():
				exited = time.Since(stalled)
			default:
			}
		}
		switch {
		case took == 0 && exited == 0:
			return fmt.Errorf("the slave has not taken over and the stalled master is still running (stopped serving: %v)", stopped)
		case took == 0:
			return fmt.Errorf("the slave has not taken over (the stalled master exited %v after the stall, exit %d)", exited, a.p.ExitCode())
		case exited == 0:
			return fmt.Errorf("the slave took over %v after the stall, but the stalled master is still running", took)
		}
		return nil
	})
	if code := a.p.ExitCode(); code != 3 {
		t.Fatalf("the stalled master exited with %d, want 3 (lease lost); its log:\n%s", code,
			grepLines(a.p.Out.String(), "level=error", "level=warning"))
	}
	// It stops at once: a store write stuck on the stalled connection
	// does not hold the exit (the write could not be acknowledged anyway).
	if exited > 8*time.Second {
		t.Errorf("the stalled master exited %v after the stall, want it to stop at once after losing its lease", exited)
	}
	p.await(t, 50, stalled)
	receipted := p.halt(t)
	t.Logf("stalled at %s: the master stopped serving after %v and exited 3 after %v; the slave served after %v (lease_timeout %v); %d receipted",
		stalled.Format(time.StampMilli), stopped.Round(time.Millisecond), exited.Round(time.Millisecond),
		took.Round(time.Millisecond), leaseTimeout, len(receipted))
	t.Logf("the stalled master's log:\n%s", grepLines(a.p.Out.String(), "master lock lost", "exiting"))

	// The lease runs from the master's last renewal, at most one renewal
	// (lock_retry) before the stall; the slave may not take over earlier.
	if took < leaseTimeout-pgLockRetry {
		t.Errorf("the slave took over %v after the stall, before the lease could expire", took)
	}
	if bound := leaseTimeout + takeoverSlack; took > bound {
		t.Errorf("the slave took over %v after the stall, want under %v", took, bound)
	}
	if out := b.p.Out.String(); !strings.Contains(out, "lease expired") {
		t.Errorf("the new master's log does not say it ended the stalled master's session:\n%s", grepLines(out, "lock"))
	}
	if late := c.lateCommits(); late != 0 {
		t.Fatalf("%d messages of the stalled master committed after the new epoch", late)
	}
	drain(t, b.listen, queue, receipted)
}
