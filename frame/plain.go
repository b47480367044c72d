package frame

import "bytes"

// Plain frames: a fast path for proxies that pass most frames on unchanged.
//
// A frame is plain when it is written the simplest way the grammar allows:
// LF line endings (no CR anywhere in its command or header lines), no
// escape sequences in its headers, a valid command, and, if it has a
// content-length, one made of digits only. Such a frame means the same at
// every STOMP version, so its wire bytes can be forwarded as they are, and
// its header names can be compared as raw bytes. Anything else is left to
// Read, which parses it fully and reports what is wrong with it; the fast
// path only ever claims frames that Read would accept, byte for byte
// (FuzzPeekPlain checks this).

// PeekPlain returns the wire bytes of the run of frames at the head of the
// Reader's buffer that are complete there, plain, within the Reader's
// limits, and accepted by pass, which sees each frame's command and header
// lines ("key:value\n" each; see HasHeader). Heart-beats (bare LFs) before
// a frame in the run are part of it. It never reads from the underlying
// stream. The bytes are valid until the next Read or Discard; Discard(len)
// consumes them.
//
// When the run is empty because the buffer ends inside a frame that pass
// accepts (its header lines, with a content-length, are all there but not
// its whole body), more is how many buffered bytes would complete it, if
// the buffer can hold them: FillTo(more) waits for them, and PeekPlain can
// then claim the frame. Otherwise more is 0, and the next frame must go
// through Read.
func (r *Reader) PeekPlain(pass func(command, headers []byte) bool) (run []byte, more int) {
	buf, _ := r.br.Peek(r.br.Buffered())
	end := 0
	for end < len(buf) {
		n, need, cmd, hdrs := scanPlain(buf[end:], r.lim)
		if n == 0 && need > 0 && end == 0 && need <= r.br.Size() && pass(cmd, hdrs) {
			return nil, need
		}
		if n == 0 || !pass(cmd, hdrs) {
			break
		}
		end += n
	}
	return buf[:end], 0
}

// FillTo waits until n bytes are buffered (n at most the buffer's size), or
// returns the stream's error. It consumes nothing.
func (r *Reader) FillTo(n int) error {
	_, err := r.br.Peek(n)
	return err
}

// Fill reads from the stream if nothing is buffered, so that PeekPlain has
// bytes to look at; it returns the stream's error (io.EOF, a deadline) if
// no byte comes. It consumes nothing.
func (r *Reader) Fill() error {
	_, err := r.br.Peek(1)
	return err
}

// Discard skips the next n buffered bytes, which PeekPlain returned.
func (r *Reader) Discard(n int) {
	r.br.Discard(n)
}

// HasHeader reports whether the header lines of a plain frame (as PeekPlain
// passes them) include one named key.
func HasHeader(headers []byte, key string) bool {
	for len(headers) > 0 {
		e := bytes.IndexByte(headers, '\n')
		line := headers[:e]
		headers = headers[e+1:]
		if len(line) > len(key) && line[len(key)] == ':' && string(line[:len(key)]) == key {
			return true
		}
	}
	return false
}

// scanPlain returns the length of the plain frame at the head of b, leading
// LFs included, with its command and header lines; n is 0 if b does not
// start with a complete plain frame within lim. If b holds the start of
// one, its header lines complete with a content-length within lim but not
// all of its body, n is 0 and need is the whole frame's length.
func scanPlain(b []byte, lim Limits) (n, need int, cmd, hdrs []byte) {
	lim = lim.withDefaults()
	i := 0
	for i < len(b) && b[i] == '\n' {
		i++
	}
	e := bytes.IndexByte(b[i:], '\n')
	if e < 0 || e > lim.MaxLine || !validCommand(string(b[i:i+e])) {
		return 0, 0, nil, nil
	}
	cmd = b[i : i+e]
	i += e + 1
	start := i
	headers, clen, seenLen := 0, -1, false
	for {
		e := bytes.IndexByte(b[i:], '\n')
		if e < 0 || e > lim.MaxLine {
			return 0, 0, nil, nil
		}
		line := b[i : i+e]
		i += e + 1
		if e == 0 {
			break
		}
		headers++
		if lim.MaxHeaders >= 0 && headers > lim.MaxHeaders {
			return 0, 0, nil, nil
		}
		c := bytes.IndexByte(line, ':')
		if c < 0 || bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, '\\') >= 0 {
			return 0, 0, nil, nil
		}
		if !seenLen && string(line[:c]) == "content-length" {
			seenLen = true // the first one counts, as in Read
			if clen = digits(line[c+1:]); clen < 0 {
				return 0, 0, nil, nil
			}
		}
	}
	hdrs = b[start : i-1]
	if clen >= 0 {
		switch {
		case lim.MaxBody >= 0 && clen > lim.MaxBody:
			return 0, 0, nil, nil
		case len(b)-i < clen+1:
			return 0, i + clen + 1, cmd, hdrs
		case b[i+clen] != 0:
			return 0, 0, nil, nil
		}
		return i + clen + 1, 0, cmd, hdrs
	}
	z := bytes.IndexByte(b[i:], 0)
	if z < 0 || lim.MaxBody >= 0 && z > lim.MaxBody {
		return 0, 0, nil, nil
	}
	return i + z + 1, 0, cmd, hdrs
}

// digits parses a content-length of 1 to 9 decimal digits, or returns -1.
func digits(s []byte) int {
	if len(s) == 0 || len(s) > 9 {
		return -1
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}
