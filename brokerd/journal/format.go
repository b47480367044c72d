package journal

// On-disk format. All integers are little-endian.
//
// A segment file NNNNNNNN.log is:
//
//	segment header (24 bytes)
//	  0  [8]byte  magic "brkdjrnl"
//	  8  uint32   format version (1)
//	 12  uint64   segment sequence number (must match the file name)
//	 20  uint32   CRC32C of bytes 0..20
//	batch*
//	zero bytes (optional; preallocated space never written)
//
// A batch is what one synchronous write of the group commit puts on disk:
//
//	batch header (24 bytes)
//	  0  uint32   magic 0x314b4a42 ("BJK1"), never zero
//	  4  uint32   payload length in bytes (the records that follow)
//	  8  uint32   number of records in the payload
//	 12  uint64   file offset of this header
//	 20  uint32   CRC32C of bytes 0..20
//	record*
//
// A record is:
//
//	  0  uint32   body length
//	  4  uint32   CRC32C of bytes 0..4 followed by the body
//	  8  body:    uint8 kind, uint16 len(ID), ID, uint16 len(Queue), Queue, Data (the rest)
//
// Kinds are store.Kind values (1 put, 2 ack, 3 producer window, 4 producer
// end) and kindMove (16), the journal's own.
//
// Why batches are framed on top of per-record CRCs: the writer has at most one
// batch that is not yet known durable (it fsyncs each batch before writing the
// next), so after a crash only the final batch can be torn. The frame tells
// replay where batches start, which makes "torn tail" (damage in the final
// batch, nothing valid after it) decidable versus "corruption" (damage followed
// by a later valid batch, i.e. damage to data that had been fsync'd). The
// header carries its own offset so that a copy of a header embedded in a
// message payload can never pass for a real one during that search. Dropping
// the whole torn batch (rather than keeping its valid prefix) also makes each
// Append atomic across a crash: all of its records or none.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"handover/brokerd/store"
)

const (
	segMagic        = "brkdjrnl"
	segVersion      = 1
	segHeaderSize   = 24
	batchMagic      = 0x314b4a42
	batchHeaderSize = 24
	recHeaderSize   = 8
	// minBody is kind + two empty length-prefixed strings.
	minBody = 1 + 2 + 2

	maxFieldLen = 1<<16 - 1
	// maxDataLen bounds one payload so that one batch always fits the
	// uint32 payload length even when it carries a huge Append.
	maxDataLen = 64 << 20
	// maxAppendBytes bounds the encoded size of one Append for the same reason.
	maxAppendBytes = 512 << 20
)

var (
	castagnoli      = crc32.MakeTable(crc32.Castagnoli)
	batchMagicBytes = binary.LittleEndian.AppendUint32(nil, batchMagic)
	le              = binary.LittleEndian
)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func encodeSegHeader(seq uint64) []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic)
	le.PutUint32(b[8:], segVersion)
	le.PutUint64(b[12:], seq)
	le.PutUint32(b[20:], crc(b[:20]))
	return b
}

// checkSegHeader verifies the header of a segment file named for seq.
func checkSegHeader(data []byte, seq uint64) error {
	if len(data) < segHeaderSize {
		return fmt.Errorf("segment header truncated (%d bytes)", len(data))
	}
	if string(data[:8]) != segMagic {
		return fmt.Errorf("bad segment magic %q", data[:8])
	}
	if got, want := le.Uint32(data[20:]), crc(data[:20]); got != want {
		return fmt.Errorf("segment header checksum mismatch (%08x != %08x)", got, want)
	}
	if v := le.Uint32(data[8:]); v != segVersion {
		return fmt.Errorf("unsupported segment format version %d (want %d)", v, segVersion)
	}
	if s := le.Uint64(data[12:]); s != seq {
		return fmt.Errorf("segment header names sequence %d, file name says %d", s, seq)
	}
	return nil
}

// putBatchHeader fills the batch header at the start of b, whose remaining
// bytes are the encoded records.
func putBatchHeader(b []byte, count int, off int64) {
	le.PutUint32(b[0:], batchMagic)
	le.PutUint32(b[4:], uint32(len(b)-batchHeaderSize))
	le.PutUint32(b[8:], uint32(count))
	le.PutUint64(b[12:], uint64(off))
	le.PutUint32(b[20:], crc(b[:20]))
}

// batchHeader is a decoded, checksum-verified batch header.
type batchHeader struct {
	length int
	count  int
}

// parseBatchHeader decodes the header at pos, or says why it is not one.
func parseBatchHeader(data []byte, pos int) (batchHeader, string) {
	if len(data)-pos < batchHeaderSize {
		return batchHeader{}, "truncated batch header"
	}
	b := data[pos : pos+batchHeaderSize]
	if le.Uint32(b) != batchMagic {
		return batchHeader{}, "bad batch magic"
	}
	if le.Uint32(b[20:]) != crc(b[:20]) {
		return batchHeader{}, "batch header checksum mismatch"
	}
	if le.Uint64(b[12:]) != uint64(pos) {
		return batchHeader{}, fmt.Sprintf("batch header names offset %d", le.Uint64(b[12:]))
	}
	h := batchHeader{length: int(le.Uint32(b[4:])), count: int(le.Uint32(b[8:]))}
	if h.length > len(data)-pos-batchHeaderSize {
		return batchHeader{}, fmt.Sprintf("batch length %d runs past end of file", h.length)
	}
	return h, ""
}

// findBatchHeader returns the offset of the first genuine batch header at or
// after from, or -1. Genuine means magic, checksum and self-offset all match.
func findBatchHeader(data []byte, from int) int {
	for from < len(data) {
		k := bytes.Index(data[from:], batchMagicBytes)
		if k < 0 {
			return -1
		}
		p := from + k
		if len(data)-p >= batchHeaderSize &&
			le.Uint32(data[p+20:]) == crc(data[p:p+20]) &&
			le.Uint64(data[p+12:]) == uint64(p) {
			return p
		}
		from = p + 1
	}
	return -1
}

// kindMove is a live message carried forward by compaction out of a
// segment about to be deleted: its Put's ID and Queue, and as Data the
// Put's order key (8 bytes, see loc.order) followed by the Put's Data.
// Replay treats it as the same message in a new place, which keeps its
// place in its queue. It never leaves the journal.
const kindMove store.Kind = 16

// moveKeyLen is the length of the order key at the start of a move's Data.
const moveKeyLen = 8

// knownKind says whether replay understands k.
func knownKind(k store.Kind) bool {
	switch k {
	case store.KindPut, store.KindAck, store.KindProducer, store.KindProducerEnd, kindMove:
		return true
	}
	return false
}

// encodedLen is the number of bytes appendRecord adds for r.
func encodedLen(r *Record) int {
	return recHeaderSize + minBody + len(r.ID) + len(r.Queue) + len(r.Data)
}

// validate refuses records that could not be replayed faithfully.
func validate(r *Record) error {
	switch r.Kind {
	case store.KindPut, store.KindAck, store.KindProducer, store.KindProducerEnd:
	default:
		return fmt.Errorf("%w: unknown kind %d (id %.64q)", ErrInvalid, r.Kind, r.ID)
	}
	switch {
	case r.ID == "":
		return fmt.Errorf("%w: empty ID", ErrInvalid)
	case len(r.ID) > maxFieldLen:
		return fmt.Errorf("%w: ID is %d bytes, max %d", ErrInvalid, len(r.ID), maxFieldLen)
	case len(r.Queue) > maxFieldLen:
		return fmt.Errorf("%w: queue name is %d bytes, max %d (id %.64q)", ErrInvalid, len(r.Queue), maxFieldLen, r.ID)
	case len(r.Data) > maxDataLen:
		return fmt.Errorf("%w: data is %d bytes, max %d (id %.64q)", ErrInvalid, len(r.Data), maxDataLen, r.ID)
	}
	return nil
}

// appendRecord encodes a validated record onto buf.
func appendRecord(buf []byte, r *Record) []byte {
	start := len(buf)
	body := minBody + len(r.ID) + len(r.Queue) + len(r.Data)
	buf = le.AppendUint32(buf, uint32(body))
	buf = append(buf, 0, 0, 0, 0) // CRC, filled below
	buf = append(buf, byte(r.Kind))
	buf = le.AppendUint16(buf, uint16(len(r.ID)))
	buf = append(buf, r.ID...)
	buf = le.AppendUint16(buf, uint16(len(r.Queue)))
	buf = append(buf, r.Queue...)
	buf = append(buf, r.Data...)
	c := crc32.Update(0, castagnoli, buf[start:start+4])
	c = crc32.Update(c, castagnoli, buf[start+recHeaderSize:])
	le.PutUint32(buf[start+4:], c)
	return buf
}

// rawRecord is a decoded record whose fields alias the segment buffer.
type rawRecord struct {
	kind      store.Kind
	id, queue []byte
	data      []byte
	n         int // encoded length, header included
}

// checkRecords verifies every record of a batch payload without decoding it,
// so that a damaged batch is rejected before any of its records is applied.
// It returns the offset within payload of the first problem and a reason, and
// fatal=true if the damage cannot be a torn write (a record whose checksum is
// good but whose contents are not something this version wrote).
func checkRecords(payload []byte, count int) (bad int, reason string, fatal bool) {
	p, n := 0, 0
	for p < len(payload) {
		if len(payload)-p < recHeaderSize {
			return p, "truncated record header", false
		}
		l := int(le.Uint32(payload[p:]))
		if l < minBody || l > len(payload)-p-recHeaderSize {
			return p, fmt.Sprintf("bad record length %d", l), false
		}
		if _, why := checkRecord(payload[p : p+recHeaderSize+l]); why != "" {
			return p, why, why != whyChecksum
		}
		n++
		p += recHeaderSize + l
	}
	if n != count {
		return 0, fmt.Sprintf("batch holds %d records, header says %d", n, count), false
	}
	return 0, "", false
}

const whyChecksum = "record checksum mismatch"

// checkRecord verifies the checksum of one whole record (header and body)
// and decodes it.
func checkRecord(rec []byte) (rawRecord, string) {
	body := rec[recHeaderSize:]
	c := crc32.Update(0, castagnoli, rec[:4])
	c = crc32.Update(c, castagnoli, body)
	if c != le.Uint32(rec[4:]) {
		return rawRecord{}, whyChecksum
	}
	r, why := decodeBody(body)
	r.n = len(rec)
	return r, why
}

// decodeBody splits a checksum-verified record body into its fields.
func decodeBody(body []byte) (rawRecord, string) {
	var r rawRecord
	r.kind = store.Kind(body[0])
	if !knownKind(r.kind) {
		return r, fmt.Sprintf("unknown record kind %d (written by a newer version?)", r.kind)
	}
	rest := body[1:]
	il := int(le.Uint16(rest))
	rest = rest[2:]
	if il == 0 || il+2 > len(rest) {
		return r, fmt.Sprintf("malformed record: ID length %d", il)
	}
	r.id, rest = rest[:il], rest[il:]
	ql := int(le.Uint16(rest))
	rest = rest[2:]
	if ql > len(rest) {
		return r, fmt.Sprintf("malformed record: queue length %d", ql)
	}
	r.queue, r.data = rest[:ql], rest[ql:]
	r.n = recHeaderSize + len(body)
	if r.kind == kindMove && len(r.data) < moveKeyLen {
		return r, fmt.Sprintf("malformed record: move of %d bytes", len(r.data))
	}
	return r, ""
}

// forEachRecord walks a payload that checkRecords accepted; off is each
// record's offset in the segment (payload starts at base).
func forEachRecord(payload []byte, base int, fn func(r rawRecord, off int)) {
	for p := 0; p < len(payload); {
		l := int(le.Uint32(payload[p:]))
		r, _ := decodeBody(payload[p+recHeaderSize : p+recHeaderSize+l])
		fn(r, base+p)
		p += recHeaderSize + l
	}
}

// tear describes a torn tail found by scanSegment.
type tear struct {
	offset int    // where the damage was seen
	reason string // what was wrong there
}

// scanMode says how scanSegment treats what is not a whole, valid batch.
type scanMode int

const (
	// scanFollow: the writer may be alive; anything incomplete or damaged
	// ends the scan as a tear, to be looked at again later.
	scanFollow scanMode = iota
	// scanFinal: the writer is dead and this is not the last segment:
	// damage is corruption.
	scanFinal
	// scanFinalLast: the writer is dead and this is its last segment: a
	// damaged final batch with nothing valid after it is a torn tail.
	scanFinalLast
)

// scanSegment walks the batches of one segment file from offset from,
// calling fn for every record of every intact batch, and batchDone (if
// set) with the end of each batch once its records are applied; it returns
// the end of the well-formed data. What it finds that is not a whole batch it
// reports as a tear or, per mode, as an error wrapping ErrCorrupt.
func scanSegment(data []byte, from int, path string, mode scanMode, fn func(r rawRecord, off int), batchDone func(end int)) (end int, t *tear, err error) {
	bad := func(batchStart, off int, reason string, fatal bool) (int, *tear, error) {
		if mode == scanFollow {
			return batchStart, &tear{offset: off, reason: reason}, nil
		}
		if fatal || mode != scanFinalLast || findBatchHeader(data, batchStart+1) >= 0 {
			return 0, nil, fmt.Errorf("%w: segment %s offset %d: %s", ErrCorrupt, path, off, reason)
		}
		return batchStart, &tear{offset: off, reason: reason}, nil
	}
	pos := from
	for pos < len(data) {
		if len(data)-pos < 4 || le.Uint32(data[pos:]) == 0 {
			if mode == scanFollow {
				return pos, nil, nil // the end for now
			}
			// End of data: preallocated space is zero. Anything non-zero
			// beyond is either the torn final batch or damage.
			// Only a window after the end is read: a torn batch is at most
			// one batch long, and scanning a whole preallocated segment of
			// zeros would delay a new master. (A run of zeros longer than
			// the window followed by valid batches, which no crash makes,
			// would go unnoticed.)
			if z := firstNonZero(data[pos:min(len(data), pos+zeroScanWindow)]); z >= 0 {
				return bad(pos, pos+z, "non-zero bytes after end of data", false)
			}
			return pos, nil, nil
		}
		h, why := parseBatchHeader(data, pos)
		if why != "" {
			return bad(pos, pos, why, false)
		}
		payload := data[pos+batchHeaderSize : pos+batchHeaderSize+h.length]
		if off, why, fatal := checkRecords(payload, h.count); why != "" {
			return bad(pos, pos+batchHeaderSize+off, why, fatal)
		}
		forEachRecord(payload, pos+batchHeaderSize, fn)
		pos += batchHeaderSize + h.length
		if batchDone != nil {
			batchDone(pos)
		}
	}
	return pos, nil, nil
}

// zeroScanWindow bounds the check for non-zero bytes after the end of data.
const zeroScanWindow = 8 << 20

// zeroBlock is compared against, so that checking a long preallocated tail
// runs at memcmp speed.
var zeroBlock [64 << 10]byte

// firstNonZero returns the index of the first non-zero byte of b, or -1.
func firstNonZero(b []byte) int {
	for i := 0; i < len(b); i += len(zeroBlock) {
		chunk := b[i:min(len(b), i+len(zeroBlock))]
		if bytes.Equal(chunk, zeroBlock[:len(chunk)]) {
			continue
		}
		for k, c := range chunk {
			if c != 0 {
				return i + k
			}
		}
	}
	return -1
}
