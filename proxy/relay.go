//go:build unix

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
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
func relay(dst, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var written int64
	// Reading through the raw conn rather than src.Read lets the buffer go
	// back to the pool while the copier waits for data. The callback is
	// made once: a closure per read would be garbage per message.
	var (
		buf  *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		b := relayBufs.Get().(*[]byte)
		n, rerr = readNonblock(fd, *b)
		if n > 0 {
			buf = b
			return true
		}
		relayBufs.Put(b)
		return rerr != errWouldBlock // false: wait until readable, then call again
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
		m, err := dst.Write((*buf)[:n])
		relayBufs.Put(buf)
		written += int64(m)
		if err != nil {
			return written, err
		}
		if n == relayBufSize {
			m, err := io.Copy(dst, src)
			return written + m, err
		}
	}
}

// errWouldBlock is readNonblock's EAGAIN.
var errWouldBlock = errors.New("read would block")

// readNonblock reads once from a non-blocking socket: errWouldBlock when
// there is nothing to read yet, (0, nil) at EOF.
func readNonblock(fd uintptr, b []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), b)
		switch err {
		case nil:
			return n, nil
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, errWouldBlock
		default:
			return 0, err
		}
	}
}
