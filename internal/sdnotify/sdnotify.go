// Package sdnotify tells systemd about a service's state (sd_notify(3)):
// READY=1 once it serves, RELOADING=1 and STOPPING=1 around a reload or a
// stop, so that a unit with Type=notify knows when the service is up. It
// is a datagram to the socket named by $NOTIFY_SOCKET; without one (not
// started by systemd) it does nothing.
package sdnotify

import (
	"net"
	"os"
	"strings"
)

// Ready, Reloading and Stopping are the states the binaries send.
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
)

// Notify sends state (one or more "KEY=VALUE" lines) to systemd. It
// returns nil, having done nothing, when $NOTIFY_SOCKET is unset.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
