package rawsock

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// ErrWouldBlock is EAGAIN: nothing to read yet, or the send buffer is full.
var ErrWouldBlock = errors.New("operation would block")

// Stream is an io.Reader and io.Writer over a socket's RawConn: Read and
// Write make raw non-blocking system calls and let the runtime's poller do
// the waiting, so deadlines set on the socket and its Close still end a
// wait (with the net package's errors: os.ErrDeadlineExceeded,
// net.ErrClosed). Use it for request/response traffic where the scheduler
// churn of ordinary system calls is a measurable share of each message.
type Stream struct {
	rc syscall.RawConn

	// The callbacks and their results live here so that a Read or Write
	// allocates no closure.
	rbuf, wbuf []byte
	rn, wn     int
	rerr, werr error
	readFn     func(fd uintptr) bool
	writeFn    func(fd uintptr) bool
}

// NewStream returns a Stream over c (a *net.TCPConn, say).
func NewStream(c syscall.Conn) (*Stream, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &Stream{rc: rc}
	s.readFn = func(fd uintptr) bool {
		s.rn, s.rerr = Read(fd, s.rbuf)
		return s.rerr != ErrWouldBlock // false: wait until readable, then call again
	}
	s.writeFn = func(fd uintptr) bool {
		for len(s.wbuf) > 0 {
			n, err := Send(fd, s.wbuf)
			if err == ErrWouldBlock {
				return false // wait until writable, then call again
			}
			if err != nil {
				s.werr = err
				return true
			}
			s.wbuf = s.wbuf[n:]
			s.wn += n
		}
		return true
	}
	return s, nil
}

// Read reads what the socket has, waiting until it has something; io.EOF
// when the peer has closed its side. Not safe for concurrent Reads.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerr = p, 0, nil
	err := s.rc.Read(s.readFn)
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case s.rerr != nil:
		return 0, os.NewSyscallError("read", s.rerr)
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

// Write writes all of p, waiting while the socket's buffer is full. Not
// safe for concurrent Writes.
func (s *Stream) Write(p []byte) (int, error) {
	s.wbuf, s.wn, s.werr = p, 0, nil
	err := s.rc.Write(s.writeFn)
	s.wbuf = nil
	if err == nil && s.werr != nil {
		err = os.NewSyscallError("write", s.werr)
	}
	return s.wn, err
}
