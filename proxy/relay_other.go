//go:build !linux

package proxy

import (
	"io"
	"net"
)

// relay copies src to dst until src's EOF (a nil error) or an error, and
// returns the bytes written to dst. See relay.go for what Linux does.
func relay(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }

// relayBufSize is relay.go's buffer size; here only tests use it, to size
// a transfer that moves a Linux copier to splice.
const relayBufSize = 16 << 10

// closeWrite half-closes c. See relay.go.
func closeWrite(c *net.TCPConn) error { return c.CloseWrite() }
