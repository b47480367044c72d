package journal

import "sync"

// The read cache: blocks of sealed segments that reads went through.
//
// Records of one queue are interleaved with other queues' in the journal:
// with a thousand queues filled round-robin, each queue's next message is a
// thousand records further on, so a queue's read-ahead finds nothing
// adjacent to coalesce and pays a system call per message. But the queues
// drain over the same stretch of the journal: the record after the one a
// queue reads now is another queue's next message. So a record read alone
// is read with the rest of its block (blockLen, aligned), and the block is
// kept, within readCacheBytes, for the reads of the neighbouring queues.
//
// Only sealed segments are cached: the one being written still grows, and
// what lies past its durable end may be rewritten (a failed batch is cut
// off and written again). A sealed segment's bytes never change where the
// live set points.
//
// When blocks are evicted without having served a read (a pattern that
// does not revisit blocks within the cache's reach), reads bypass the
// cache for a while, so that such a pattern pays only for its records.

const (
	// blockLen is the unit read around a lone record: 7 records of a
	// 1 KiB message and its headers.
	blockLen = 8 << 10
	// readCacheBytes bounds the cache.
	readCacheBytes = 16 << 20
	// cacheJudge is how many evictions are judged together, and
	// cacheBypass how many reads skip the cache after they found it
	// useless (more than three quarters evicted unread).
	cacheJudge  = 512
	cacheBypass = 8192
)

type blockKey struct {
	seg   uint64
	block uint32 // offset / blockLen
}

// cblock is a cached block. Its data is copied out under the cache's lock
// only, so that an evicted block's buffer can serve the next read.
type cblock struct {
	key        blockKey
	data       []byte // shorter than blockLen at the end of the file
	hits       int
	prev, next *cblock
}

// blockCache is an LRU of blocks. Its methods are safe for concurrent use.
type blockCache struct {
	mu     sync.Mutex
	blocks map[blockKey]*cblock
	lru    cblock // sentinel: lru.next is the most recently used
	bytes  int
	max    int
	spare  [][]byte // buffers of evicted blocks, for the next reads

	evicted, unread int // in the current judgement window
	bypass          int // reads left that skip the cache
	// hits and misses count lookups, for tests and benchmarks.
	hits, misses uint64
}

// maxSpare bounds the buffers kept for reuse.
const maxSpare = 16

func newBlockCache(max int) *blockCache {
	c := &blockCache{blocks: make(map[blockKey]*cblock), max: max}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

// copyOut copies len(dst) bytes of block k from offset from into dst and
// marks the block used. It reports false, copying nothing, when the block
// is not cached or does not hold them all.
func (c *blockCache) copyOut(k blockKey, from int, dst []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.blocks[k]
	if b == nil || from+len(dst) > len(b.data) {
		c.misses++
		return false
	}
	c.hits++
	b.hits++
	copy(dst, b.data[from:])
	c.unlink(b)
	c.pushFront(b)
	return true
}

// buffer returns a buffer of blockLen bytes for reading a block into.
func (c *blockCache) buffer() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.spare); n > 0 {
		d := c.spare[n-1]
		c.spare[n-1] = nil
		c.spare = c.spare[:n-1]
		return d[:blockLen]
	}
	return make([]byte, blockLen)
}

// useful reports whether a read should go through the cache (read its
// blocks whole and keep them), and counts down a bypass.
func (c *blockCache) useful() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bypass > 0 {
		c.bypass--
		return false
	}
	return true
}

// put caches block k, evicting the least recently used as needed.
func (c *blockCache) put(k blockKey, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.blocks[k]; old != nil {
		c.remove(old)
	}
	b := &cblock{key: k, data: data}
	c.blocks[k] = b
	c.pushFront(b)
	c.bytes += len(data)
	for c.bytes > c.max && c.lru.prev != &c.lru {
		v := c.lru.prev
		c.remove(v)
		c.evicted++
		if v.hits == 0 {
			c.unread++
		}
		if c.evicted == cacheJudge {
			if c.unread > cacheJudge*3/4 {
				c.bypass = cacheBypass
			}
			c.evicted, c.unread = 0, 0
		}
	}
}

// dropSegment forgets the blocks of a deleted segment.
func (c *blockCache) dropSegment(seg uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, b := range c.blocks {
		if k.seg == seg {
			c.remove(b)
		}
	}
}

func (c *blockCache) remove(b *cblock) {
	c.unlink(b)
	delete(c.blocks, b.key)
	c.bytes -= len(b.data)
	if cap(b.data) == blockLen && len(c.spare) < maxSpare {
		c.spare = append(c.spare, b.data)
	}
	b.data = nil
}

func (c *blockCache) unlink(b *cblock) {
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
}

func (c *blockCache) pushFront(b *cblock) {
	b.prev, b.next = &c.lru, c.lru.next
	c.lru.next.prev = b
	c.lru.next = b
}
