package watch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// This file is the server-sent events parser. It knows nothing of
// networks and mirrors bufio (NewReader, Next), so that it is tested and
// fuzzed on byte slices. It follows the WHATWG HTML standard's "Interpreting
// an event stream" (§9.2.6): lines end in CRLF, LF or CR; a line starting
// with a colon is a comment; "field: value" with one leading space of the
// value dropped; a line without a colon is a field with an empty value; a
// blank line ends a block; unknown fields are ignored. Unlike a browser it
// bounds what it buffers: a line over Limits.MaxLine or a block whose data
// is over Limits.MaxData is an error, not an allocation.

// Limits bound what a Reader buffers. Zero fields take DefaultLimits.
type Limits struct {
	// MaxLine is the longest line in bytes, without its line ending.
	MaxLine int
	// MaxData is the most data one block may carry: the "data:" values
	// with a newline after each.
	MaxData int
}

// DefaultLimits fit brokerd's events (a JSON object of about 150 bytes)
// many times over, and cap what a misbehaving server can make us hold at
// a few tens of KB per stream.
var DefaultLimits = Limits{MaxLine: 4 << 10, MaxData: 16 << 10}

func (l Limits) withDefaults() Limits {
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultLimits.MaxLine
	}
	if l.MaxData <= 0 {
		l.MaxData = DefaultLimits.MaxData
	}
	return l
}

// Errors returned by Reader.Next, wrapped with the sizes involved: test
// with errors.Is. Either means the stream cannot be trusted any further.
var (
	// ErrLineTooLong is a line over Limits.MaxLine.
	ErrLineTooLong = errors.New("event stream line too long")
	// ErrDataTooLarge is a block whose data is over Limits.MaxData.
	ErrDataTooLarge = errors.New("event stream data too large")
)

// Message is one block of an event stream: the lines up to a blank line.
type Message struct {
	// Event is the block's event type: its last "event:" field, or
	// "message" when it has data but no type, as a browser dispatches it.
	// It is "" for a block without any "data:" field, such as a
	// heartbeat of comments only, which a browser would not dispatch:
	// Next returns those too, so that a reader can tell a stream that is
	// alive from one that has stalled.
	Event string
	// Data is the block's "data:" values joined with "\n". It is the
	// caller's to keep.
	Data []byte
	// ID is the last event ID the stream has set ("id:" fields persist
	// across blocks; one holding a NUL byte is ignored, as the standard
	// says).
	ID string
}

// bom is the byte order mark a stream may start with; the standard drops it.
var bom = []byte("\xEF\xBB\xBF")

// Reader reads the blocks of an event stream.
type Reader struct {
	br  *bufio.Reader
	lim Limits
	// line holds the line being read: a line may span buffer fills, and it
	// is only ever as long as lim.MaxLine.
	line []byte
	data []byte
	id   string
	// skipLF is set when the last line ended with CR: a LF that follows
	// belongs to it (CRLF). Deciding that when the next line is asked for,
	// rather than peeking past the CR at once, keeps a stream with bare CR
	// endings from waiting for one more byte before returning a block.
	skipLF bool
	// started is set once the first line has been read (and a byte order
	// mark dropped from it).
	started bool
}

// NewReader returns a Reader of r enforcing lim (zero fields take
// DefaultLimits).
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 4096), lim: lim.withDefaults()}
}

// Next returns the next block. At the end of the stream between blocks it
// returns io.EOF; inside a block (whose blank line never came, so that it
// is discarded, as the standard says), io.ErrUnexpectedEOF. Other errors
// are the reader's (such as a deadline) or wrap ErrLineTooLong or
// ErrDataTooLarge.
func (r *Reader) Next() (Message, error) {
	r.data = r.data[:0]
	var event string
	hasData, inBlock := false, false
	for {
		line, err := r.readLine()
		if err != nil {
			if err == io.EOF && inBlock {
				err = io.ErrUnexpectedEOF
			}
			return Message{}, err
		}
		if len(line) == 0 {
			m := Message{ID: r.id}
			if hasData {
				m.Event = event
				if m.Event == "" {
					m.Event = "message"
				}
				// The standard drops the data buffer's last newline.
				m.Data = bytes.Clone(r.data[:len(r.data)-1])
			}
			return m, nil
		}
		inBlock = true
		if line[0] == ':' {
			continue // a comment
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			event = string(value)
		case "data":
			if len(r.data)+len(value)+1 > r.lim.MaxData {
				return Message{}, fmt.Errorf("%w: over %d bytes", ErrDataTooLarge, r.lim.MaxData)
			}
			r.data = append(append(r.data, value...), '\n')
			hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.id = string(value)
			}
		}
		// "retry:" and unknown fields are ignored: Follow has its own
		// reconnection schedule.
	}
}

// readLine returns the next line without its ending. The slice is valid
// until the next call.
func (r *Reader) readLine() ([]byte, error) {
	r.line = r.line[:0]
	for {
		if r.br.Buffered() == 0 {
			if _, err := r.br.Peek(1); err != nil {
				if err == io.EOF && len(r.line) > 0 {
					err = io.ErrUnexpectedEOF
				}
				return nil, err
			}
		}
		buf, _ := r.br.Peek(r.br.Buffered())
		if r.skipLF {
			r.skipLF = false
			if buf[0] == '\n' {
				r.br.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(buf, "\r\n")
		n := i
		if i < 0 {
			n = len(buf)
		}
		// Checked before anything is appended: line never grows past
		// MaxLine, whatever the server sends.
		if len(r.line)+n > r.lim.MaxLine {
			return nil, fmt.Errorf("%w: over %d bytes", ErrLineTooLong, r.lim.MaxLine)
		}
		r.line = append(r.line, buf[:n]...)
		if i < 0 {
			r.br.Discard(n)
			continue
		}
		r.skipLF = buf[i] == '\r'
		r.br.Discard(i + 1)
		if !r.started {
			r.started = true
			r.line = bytes.TrimPrefix(r.line, bom)
		}
		return r.line, nil
	}
}
