package frame

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Limits bound what a Reader accepts. They are checked while reading, before
// the memory for an oversized part is allocated.
type Limits struct {
	// MaxBody is the largest body in bytes. Zero means DefaultLimits.MaxBody;
	// negative means no limit.
	MaxBody int
	// MaxHeaders is the most header lines in one frame. Zero means
	// DefaultLimits.MaxHeaders; negative means no limit.
	MaxHeaders int
	// MaxLine is the longest command or header line in bytes, excluding the
	// line ending. Zero means DefaultLimits.MaxLine; negative means no limit
	// (lines are then still bounded by 1 MiB, the largest buffer used).
	MaxLine int
}

// DefaultLimits are the limits ActiveMQ-sized deployments expect: a 1 MiB
// body, 1,000 headers and 8 KiB header lines.
var DefaultLimits = Limits{MaxBody: 1 << 20, MaxHeaders: 1000, MaxLine: 8 << 10}

func (l Limits) withDefaults() Limits {
	if l.MaxBody == 0 {
		l.MaxBody = DefaultLimits.MaxBody
	}
	if l.MaxHeaders == 0 {
		l.MaxHeaders = DefaultLimits.MaxHeaders
	}
	if l.MaxLine == 0 {
		l.MaxLine = DefaultLimits.MaxLine
	}
	if l.MaxLine < 0 || l.MaxLine > 1<<20 {
		l.MaxLine = 1 << 20
	}
	return l
}

// Errors returned by Reader.Read. They are wrapped with details (sizes,
// header names), so test with errors.Is. Each is a protocol violation after
// which the stream cannot be trusted: the connection should be closed.
var (
	// ErrMalformed is a frame that breaks the STOMP grammar.
	ErrMalformed = errors.New("malformed frame")
	// ErrBodyTooLarge is a body over Limits.MaxBody.
	ErrBodyTooLarge = errors.New("frame body too large")
	// ErrTooManyHeaders is a frame with more than Limits.MaxHeaders headers.
	ErrTooManyHeaders = errors.New("too many headers")
	// ErrLineTooLong is a command or header line over Limits.MaxLine.
	ErrLineTooLong = errors.New("header line too long")
)

// Reader reads frames from a byte stream.
type Reader struct {
	br      *bufio.Reader
	lim     Limits
	version Version
}

// NewReader returns a Reader of r enforcing lim (zero fields take
// DefaultLimits). It decodes header escapes as STOMP 1.2 does until
// SetVersion says otherwise.
func NewReader(r io.Reader, lim Limits) *Reader {
	return NewReaderSize(r, lim, 4096)
}

// NewReaderSize is NewReader with a read buffer of at least size bytes (and
// always room for a line of lim.MaxLine). A bigger buffer means fewer
// system calls for a peer that sends frames back to back, and lets
// PeekPlain see more of them at once.
func NewReaderSize(r io.Reader, lim Limits, size int) *Reader {
	lim = lim.withDefaults()
	if lim.MaxLine+2 > size {
		size = lim.MaxLine + 2
	}
	return &Reader{br: bufio.NewReaderSize(r, size), lim: lim, version: V12}
}

// SetVersion sets the negotiated version, which decides header unescaping.
func (r *Reader) SetVersion(v Version) { r.version = v }

// Version returns the version the Reader decodes.
func (r *Reader) Version() Version { return r.version }

// Buffered returns how many bytes are buffered but not yet read.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Read returns the next frame. Heart-beats (bare end-of-lines between frames)
// are skipped. At a clean end of stream between frames it returns io.EOF; in
// the middle of a frame, io.ErrUnexpectedEOF. Other errors wrap one of the
// package's sentinel errors.
func (r *Reader) Read() (*Frame, error) {
	var line []byte
	for {
		l, err := r.readLine()
		if err != nil {
			return nil, err
		}
		if len(l) > 0 {
			line = l
			break
		}
	}
	f := &Frame{Command: string(line)}
	if !validCommand(f.Command) {
		return nil, fmt.Errorf("%w: bad command line %q", ErrMalformed, truncate(f.Command))
	}
	escaped := escapes(f.Command, r.version)
	for {
		l, err := r.readLine()
		if err != nil {
			return nil, unexpected(err)
		}
		if len(l) == 0 {
			break
		}
		if r.lim.MaxHeaders >= 0 && len(f.Headers) >= r.lim.MaxHeaders {
			return nil, fmt.Errorf("%w: more than %d", ErrTooManyHeaders, r.lim.MaxHeaders)
		}
		i := bytes.IndexByte(l, ':')
		if i < 0 {
			return nil, fmt.Errorf("%w: header line %q has no colon", ErrMalformed, truncate(string(l)))
		}
		k, v := string(l[:i]), string(l[i+1:])
		if escaped {
			if k, err = unescape(k, r.version); err != nil {
				return nil, err
			}
			if v, err = unescape(v, r.version); err != nil {
				return nil, err
			}
		}
		f.Headers = append(f.Headers, Header{k, v})
	}
	body, err := r.readBody(f)
	if err != nil {
		return nil, err
	}
	f.Body = body
	return f, nil
}

// readLine returns one line without its LF or CRLF ending. The slice is only
// valid until the next read.
func (r *Reader) readLine() ([]byte, error) {
	l, err := r.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, fmt.Errorf("%w: over %d bytes", ErrLineTooLong, r.lim.MaxLine)
	}
	if err != nil {
		if err == io.EOF && len(l) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	if len(l) > r.lim.MaxLine {
		return nil, fmt.Errorf("%w: over %d bytes", ErrLineTooLong, r.lim.MaxLine)
	}
	return l, nil
}

func (r *Reader) readBody(f *Frame) ([]byte, error) {
	if cl, ok := f.Get("content-length"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(cl))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: content-length %q is not a non-negative integer", ErrMalformed, truncate(cl))
		}
		if r.lim.MaxBody >= 0 && n > r.lim.MaxBody {
			return nil, fmt.Errorf("%w: content-length %d over the limit of %d bytes", ErrBodyTooLarge, n, r.lim.MaxBody)
		}
		// Grow the body as bytes arrive rather than trusting the declared
		// length: with no MaxBody, make([]byte, n+1) let a bare header
		// reserve any amount of memory, or panic when n+1 overflowed.
		body := make([]byte, 0, min(n, 64<<10))
		for len(body) < n {
			chunk := min(n-len(body), max(len(body), 64<<10))
			body = slices.Grow(body, chunk)
			m, err := io.ReadFull(r.br, body[len(body):len(body)+chunk])
			body = body[:len(body)+m]
			if err != nil {
				return nil, unexpected(err)
			}
		}
		if c, err := r.br.ReadByte(); err != nil {
			return nil, unexpected(err)
		} else if c != 0 {
			return nil, fmt.Errorf("%w: no NUL after %d-byte body given by content-length", ErrMalformed, n)
		}
		return body[:n:n], nil
	}
	// Without content-length the body runs to the first NUL (1.2 "Body").
	var body []byte
	for {
		chunk, err := r.br.ReadSlice(0)
		if err != nil && err != bufio.ErrBufferFull {
			return nil, unexpected(err)
		}
		n := len(chunk)
		if err == nil {
			n-- // drop the NUL
		}
		if r.lim.MaxBody >= 0 && len(body)+n > r.lim.MaxBody {
			return nil, fmt.Errorf("%w: over the limit of %d bytes", ErrBodyTooLarge, r.lim.MaxBody)
		}
		body = append(body, chunk[:n]...)
		if err == nil {
			return body, nil
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// validCommand accepts upper-case ASCII letters only, as every STOMP command
// is; anything else is garbage or another protocol talking to our port.
func validCommand(c string) bool {
	if c == "" || len(c) > 32 {
		return false
	}
	for i := 0; i < len(c); i++ {
		if c[i] < 'A' || c[i] > 'Z' {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// unescape decodes a header key or value (1.2 "Value Encoding"). 1.1 knows
// \n, \c and \\; 1.2 adds \r. Any other escape is a fatal protocol error.
func unescape(s string, v Version) (string, error) {
	if strings.IndexByte(s, '\\') < 0 {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%w: header %q ends in a lone backslash", ErrMalformed, truncate(s))
		}
		i++
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 'c':
			b.WriteByte(':')
		case '\\':
			b.WriteByte('\\')
		case 'r':
			if v == V11 {
				return "", fmt.Errorf("%w: escape \\r in header %q is not defined in STOMP 1.1", ErrMalformed, truncate(s))
			}
			b.WriteByte('\r')
		default:
			return "", fmt.Errorf("%w: undefined escape \\%c in header %q", ErrMalformed, s[i], truncate(s))
		}
	}
	return b.String(), nil
}
