//go:build !unix

package proxy

import (
	"io"
	"net"
)

// relay copies src to dst until src's EOF (a nil error) or an error, and
// returns the bytes written to dst. See relay.go for what Unix systems do.
func relay(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }
