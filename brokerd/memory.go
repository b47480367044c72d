package brokerd

import (
	"sync"
	"sync/atomic"
	"time"
)

// budget is the broker's one memory budget (max_memory), in bytes of
// message bodies. Two kinds of holding count against it:
//
//   - pinned: bodies that exist nowhere else or are on their way out:
//     non-persistent messages waiting in a queue or delivered and not yet
//     acknowledged, deliveries waiting in a consumer's output (a
//     persistent message's body is let go once written: a redelivery
//     reads it back), topic messages waiting in a subscriber's output.
//     They cannot be dropped, so producers of such messages wait while
//     the budget is spent (producer flow control, as ActiveMQ's).
//   - cached: bodies of persistent messages kept in memory after they
//     were journaled, to deliver them without reading the store. They may
//     use at most an eighth of the budget (cacheShare); past it a
//     persistent message's body is dropped from memory once it is durable
//     and read back from the store when delivered. The cache pays off for
//     consumers that keep up; a deep backlog is read from the store in
//     batches anyway, so a larger share would cost RSS and gain little.
//
// So memory grows with the backlog only by a small index entry per
// message, whatever the size of the bodies.
type budget struct {
	limit    int64
	pinned   atomic.Int64
	cached   atomic.Int64
	waiting  atomic.Int64 // producers held by flow control now
	blocked  atomic.Uint64
	timeouts atomic.Uint64

	mu    sync.Mutex
	freed chan struct{} // closed and replaced whenever usage falls below the limit
}

// cacheShare: cached bodies may use 1/cacheShare of the budget.
const cacheShare = 8

func newBudget(limit int64) *budget {
	return &budget{limit: limit, freed: make(chan struct{})}
}

// cacheLimit is the most cached bodies may hold.
func (b *budget) cacheLimit() int64 { return b.limit / cacheShare }

func (b *budget) used() int64 { return b.pinned.Load() + b.cached.Load() }

// full reports whether producers of pinned bodies must wait.
func (b *budget) full() bool { return b.used() >= b.limit }

func (b *budget) pin(n int64) { b.pinned.Add(n) }

func (b *budget) unpin(n int64) {
	if n != 0 {
		b.pinned.Add(-n)
		b.wake()
	}
}

// cache charges n bytes of cached body if they fit; it reports whether
// they did.
func (b *budget) cache(n int64) bool {
	if !b.roomInCache(n) {
		return false
	}
	b.cached.Add(n)
	return true
}

// roomInCache says whether n more bytes of cached body would fit now.
func (b *budget) roomInCache(n int64) bool {
	return b.cached.Load()+n <= b.cacheLimit() && b.used()+n <= b.limit
}

// cacheAnyway charges n bytes of cached body whether or not they fit (a
// bounded read-ahead, delivered next).
func (b *budget) cacheAnyway(n int64) { b.cached.Add(n) }

func (b *budget) uncache(n int64) {
	if n != 0 {
		b.cached.Add(-n)
		b.wake()
	}
}

// wake lets waiting producers look again once usage is below the limit.
func (b *budget) wake() {
	if b.waiting.Load() == 0 || b.full() {
		return
	}
	b.mu.Lock()
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}

// wait blocks while blocked() holds (it is looked at again whenever
// memory is freed), until it does not (true), or until timeout or either
// done channel is closed (false). blocked may only depend on usage that
// wakes the budget's waiters when it falls (the budget's own, or a
// queue's, which falls together with it).
func (b *budget) wait(blocked func() bool, timeout time.Duration, done, done2 <-chan struct{}) bool {
	if !blocked() {
		return true
	}
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	b.blocked.Add(1)
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		b.mu.Lock()
		ch := b.freed
		b.mu.Unlock()
		// Looked at after taking ch: a release between the two closes ch.
		if !blocked() {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			b.timeouts.Add(1)
			return false
		case <-done:
			return false
		case <-done2:
			return false
		}
	}
}

// memoryStatus is the budget as /status shows it.
type memoryStatus struct {
	Limit  int64 `json:"limit"`
	Pinned int64 `json:"pinned"`
	Cached int64 `json:"cached"`
	// CacheLimit is the part of Limit that cached bodies may use.
	CacheLimit int64 `json:"cache_limit"`
	// ProducersWaiting are held by flow control now; FlowControlled and
	// FlowTimeouts count such waits, and those that gave up, since start.
	ProducersWaiting int64  `json:"producers_waiting"`
	FlowControlled   uint64 `json:"flow_controlled"`
	FlowTimeouts     uint64 `json:"flow_timeouts"`
}

func (b *budget) status() memoryStatus {
	return memoryStatus{
		Limit: b.limit, Pinned: b.pinned.Load(), Cached: b.cached.Load(), CacheLimit: b.cacheLimit(),
		ProducersWaiting: b.waiting.Load(), FlowControlled: b.blocked.Load(), FlowTimeouts: b.timeouts.Load(),
	}
}
