// Package frame reads and writes STOMP frames (STOMP 1.0, 1.1 and 1.2).
//
// It knows nothing of networks, brokers or sessions: a Reader turns bytes into
// frames, a Writer turns frames into bytes, mirroring bufio. Limits on line
// length, header count and body size are enforced while reading, before any
// large allocation, so a hostile peer cannot make a server buffer gigabytes.
//
// References are to the STOMP 1.2 specification
// (https://stomp.github.io/stomp-specification-1.2.html).
package frame

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Version is a STOMP protocol version as it appears in the accept-version and
// version headers.
type Version string

// The protocol versions this package speaks.
const (
	V10 Version = "1.0"
	V11 Version = "1.1"
	V12 Version = "1.2"
)

// Client commands (STOMP 1.2 "Client Frames").
const (
	CONNECT     = "CONNECT"
	STOMP       = "STOMP"
	SEND        = "SEND"
	SUBSCRIBE   = "SUBSCRIBE"
	UNSUBSCRIBE = "UNSUBSCRIBE"
	ACK         = "ACK"
	NACK        = "NACK"
	BEGIN       = "BEGIN"
	COMMIT      = "COMMIT"
	ABORT       = "ABORT"
	DISCONNECT  = "DISCONNECT"
)

// Server commands (STOMP 1.2 "Server Frames").
const (
	CONNECTED = "CONNECTED"
	MESSAGE   = "MESSAGE"
	RECEIPT   = "RECEIPT"
	ERROR     = "ERROR"
)

// Header is one header line. Frames keep headers as an ordered list because
// STOMP allows repeated keys and says the first occurrence wins (1.2 "Repeated
// Header Entries"); a map would lose both the order and the repeats.
type Header struct {
	Key, Value string
}

// Frame is one STOMP frame. The zero value is an empty frame with no command.
type Frame struct {
	Command string
	Headers []Header
	Body    []byte
}

// New returns a frame with the given command and headers given as
// alternating keys and values. It panics on an odd count, which is a
// programming error, never a peer's.
func New(command string, kv ...string) *Frame {
	if len(kv)%2 != 0 {
		panic("frame.New: odd number of header strings")
	}
	f := &Frame{Command: command, Headers: make([]Header, 0, len(kv)/2)}
	for i := 0; i < len(kv); i += 2 {
		f.Headers = append(f.Headers, Header{kv[i], kv[i+1]})
	}
	return f
}

// Get returns the value of the first header named key and whether it exists.
func (f *Frame) Get(key string) (string, bool) {
	for _, h := range f.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return "", false
}

// Value returns the value of the first header named key, or "".
func (f *Frame) Value(key string) string {
	v, _ := f.Get(key)
	return v
}

// Set replaces the first header named key, dropping any repeats of it, or
// appends it when absent.
func (f *Frame) Set(key, value string) {
	for i, h := range f.Headers {
		if h.Key == key {
			f.Headers[i].Value = value
			f.delFrom(key, i+1)
			return
		}
	}
	f.Headers = append(f.Headers, Header{key, value})
}

// Add appends a header even if one with the same key exists.
func (f *Frame) Add(key, value string) {
	f.Headers = append(f.Headers, Header{key, value})
}

// Del removes every header named key.
func (f *Frame) Del(key string) { f.delFrom(key, 0) }

func (f *Frame) delFrom(key string, start int) {
	out := f.Headers[:start]
	for _, h := range f.Headers[start:] {
		if h.Key != key {
			out = append(out, h)
		}
	}
	f.Headers = out
}

// Clone returns a deep copy of f, so the copy's headers can be changed
// without touching f (the broker fans one SEND out to many subscribers).
func (f *Frame) Clone() *Frame {
	c := &Frame{Command: f.Command, Headers: make([]Header, len(f.Headers))}
	copy(c.Headers, f.Headers)
	if f.Body != nil {
		c.Body = append([]byte(nil), f.Body...)
	}
	return c
}

// String renders the command and headers (not the body) for logs.
func (f *Frame) String() string {
	var b strings.Builder
	b.WriteString(f.Command)
	for _, h := range f.Headers {
		b.WriteString(" ")
		b.WriteString(h.Key)
		b.WriteString(":")
		b.WriteString(h.Value)
	}
	fmt.Fprintf(&b, " (%d byte body)", len(f.Body))
	return b.String()
}

// ErrNoCommonVersion is returned by Negotiate when the client accepts none of
// the versions on offer.
var ErrNoCommonVersion = errors.New("no supported STOMP version in accept-version")

// Negotiate picks the highest version both sides speak from a CONNECT frame's
// accept-version header (1.2 "Protocol Negotiation"). A missing header means
// the client speaks 1.0 only.
func Negotiate(acceptVersion string, supported ...Version) (Version, error) {
	if len(supported) == 0 {
		supported = []Version{V12, V11, V10}
	}
	if strings.TrimSpace(acceptVersion) == "" {
		acceptVersion = string(V10)
	}
	offered := map[Version]bool{}
	for _, v := range strings.Split(acceptVersion, ",") {
		offered[Version(strings.TrimSpace(v))] = true
	}
	best := Version("")
	for _, v := range supported {
		if offered[v] && v > best { // "1.0" < "1.1" < "1.2" as strings
			best = v
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: client accepts %q", ErrNoCommonVersion, acceptVersion)
	}
	return best, nil
}

// ParseHeartBeat parses a heart-beat header value "cx,cy" in milliseconds
// (1.2 "Heart-beating"). An empty value means "0,0".
func ParseHeartBeat(s string) (cx, cy time.Duration, err error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		return 0, 0, fmt.Errorf("heart-beat %q: want two comma-separated integers", s)
	}
	x, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 31)
	y, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 31)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("heart-beat %q: want two non-negative integers of milliseconds", s)
	}
	return time.Duration(x) * time.Millisecond, time.Duration(y) * time.Millisecond, nil
}

// escapes reports whether frames with this command have their headers escaped
// at version v. STOMP 1.0 has no escaping; 1.1 and 1.2 exempt CONNECT and
// CONNECTED (1.2 "Value Encoding").
func escapes(command string, v Version) bool {
	if v == V10 || v == "" {
		return false
	}
	return command != CONNECT && command != CONNECTED && command != STOMP
}
