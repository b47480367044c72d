package frame

import (
	"bufio"
	"io"
	"strconv"
)

// Writer writes frames to a byte stream through a buffer; call Flush to push
// them out, so a burst of frames costs one system call.
type Writer struct {
	bw      *bufio.Writer
	version Version
	buf     []byte
}

// NewWriter returns a Writer to w that escapes headers as STOMP 1.2 does
// until SetVersion says otherwise.
func NewWriter(w io.Writer) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, 32<<10), version: V12}
}

// SetVersion sets the negotiated version, which decides header escaping.
func (w *Writer) SetVersion(v Version) { w.version = v }

// Write buffers f. A content-length header is always written, computed from
// the body (any content-length in f.Headers is ignored), so bodies may hold
// NUL bytes.
func (w *Writer) Write(f *Frame) error {
	w.buf = Append(w.buf[:0], f, w.version)
	_, err := w.bw.Write(w.buf)
	if cap(w.buf) > 1<<20 {
		w.buf = nil // don't pin one huge frame's buffer for the connection's life
	}
	return err
}

// WriteRaw buffers bytes that are already in wire form: frames encoded
// earlier, or received and forwarded unchanged. The caller vouches for them.
func (w *Writer) WriteRaw(b []byte) error {
	_, err := w.bw.Write(b)
	return err
}

// WriteHeartbeat buffers a heart-beat: a single end-of-line.
func (w *Writer) WriteHeartbeat() error { return w.bw.WriteByte('\n') }

// Flush writes buffered frames to the underlying writer.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Buffered returns the number of bytes not yet flushed.
func (w *Writer) Buffered() int { return w.bw.Buffered() }

// Append appends the wire form of f at version v to dst and returns it. It is
// the encoding the Writer uses, exposed for callers that store frames.
func Append(dst []byte, f *Frame, v Version) []byte {
	esc := escapes(f.Command, v)
	dst = append(dst, f.Command...)
	dst = append(dst, '\n')
	for _, h := range f.Headers {
		if h.Key == "content-length" {
			continue
		}
		dst = appendEscaped(dst, h.Key, esc, v)
		dst = append(dst, ':')
		dst = appendEscaped(dst, h.Value, esc, v)
		dst = append(dst, '\n')
	}
	if len(f.Body) > 0 || f.Command == SEND || f.Command == MESSAGE || f.Command == ERROR {
		dst = append(dst, "content-length:"...)
		dst = strconv.AppendInt(dst, int64(len(f.Body)), 10)
		dst = append(dst, '\n')
	}
	dst = append(dst, '\n')
	dst = append(dst, f.Body...)
	return append(dst, 0)
}

func appendEscaped(dst []byte, s string, esc bool, v Version) []byte {
	if !esc {
		// Without escaping (STOMP 1.0, CONNECT, CONNECTED) a raw newline
		// would end the header early and desynchronise the stream, so it
		// becomes a space: a lossy but safe rendering.
		for i := 0; i < len(s); i++ {
			if c := s[i]; c == '\n' {
				dst = append(dst, ' ')
			} else {
				dst = append(dst, c)
			}
		}
		return dst
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\n':
			dst = append(dst, '\\', 'n')
		case ':':
			dst = append(dst, '\\', 'c')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\r':
			if v == V12 {
				dst = append(dst, '\\', 'r')
			} else {
				dst = append(dst, c) // 1.1 has no \r escape
			}
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
