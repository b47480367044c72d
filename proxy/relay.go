//go:build linux

package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"handover/internal/rawsock"
)

// relayBufSize is the user-space buffer a copier reads small messages into.
// A read that fills it means bulk data: the copier moves to splice(2) for
// the rest of the connection. 16 KiB is HAProxy's bufsize.
const relayBufSize = 16 << 10

// relayBufs holds the buffers between reads: a copier takes one only while
// it has bytes in hand, so an idle connection holds none.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay copies src to dst until src's EOF (a nil error) or an error, and
// returns the bytes written to dst.
//
// io.Copy between two bare *net.TCPConns splices on Linux (socket to pipe
// to socket, in the kernel), the cheapest way to move bulk data but not
// small messages: each hop of a STOMP frame a few hundred bytes long costs
// two splice calls either way, and splice(2) costs more than recv and send
// for that little (the pipe takes references to the socket buffer's pages
// instead of copying a few bytes). So relay starts with plain reads and
// writes through a pooled buffer, and hands over to io.Copy's splice the
// first time a read fills the buffer: that connection carries bulk data.
// BenchmarkProxyRoundTrip and BenchmarkProxyThroughput in bench/ measure
// both sides of the trade.
//
// The small-message reads and writes are raw system calls (package
// rawsock) made through the sockets' RawConns, so the runtime's poller
// still does the waiting (and deadlines and Close still wake us); on a
// small host the scheduler churn of ordinary system calls cost more than
// the copy (BenchmarkProxyRoundTrip's proxy-cpu-us/op and p99).
func relay(dst, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var written int64
	// Reading through the raw conn rather than src.Read lets the buffer go
	// back to the pool while the copier waits for data. The callbacks are
	// made once: a closure per read would be garbage per message.
	var (
		buf  *[]byte
		n    int
		rerr error
		out  []byte // what is left to write of the buffer
		werr error
	)
	read := func(fd uintptr) bool {
		b := relayBufs.Get().(*[]byte)
		n, rerr = rawsock.Read(fd, *b)
		if n > 0 {
			buf = b
			return true
		}
		relayBufs.Put(b)
		return rerr != rawsock.ErrWouldBlock // false: wait until readable, then call again
	}
	write := func(fd uintptr) bool {
		for len(out) > 0 {
			m, err := rawsock.Send(fd, out)
			if err == rawsock.ErrWouldBlock {
				return false // wait until writable, then call again
			}
			if err != nil {
				werr = err
				return true
			}
			out = out[m:]
			written += int64(m)
		}
		return true
	}
	for {
		buf, n, rerr = nil, 0, nil
		err := rc.Read(read)
		if err == nil && rerr != nil {
			err = &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
		}
		if err != nil {
			return written, err
		}
		if buf == nil {
			return written, nil // EOF
		}
		out, werr = (*buf)[:n], nil
		err = wc.Write(write)
		relayBufs.Put(buf)
		out = nil
		if err == nil && werr != nil {
			err = &net.OpError{Op: "write", Net: "tcp", Source: dst.LocalAddr(), Addr: dst.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
		}
		if err != nil {
			return written, err
		}
		if n == relayBufSize {
			m, err := io.Copy(dst, src)
			return written + m, err
		}
	}
}

// closeWrite half-closes c, as c.CloseWrite does, but with a raw system
// call: the FIN it sends is processed by a loopback peer inside the call,
// long enough for the scheduler's monitor to hand our P to another thread
// were it an ordinary one (see rawsock).
func closeWrite(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = rawsock.Shutdown(fd, syscall.SHUT_WR) }); err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "close", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("shutdown", serr)}
	}
	return nil
}
