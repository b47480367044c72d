package brokerd

import (
	"context"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"

	"github.com/sirupsen/logrus"
)

// Giving memory back after a burst, on a master. A burst of sends (or a
// drain) allocates far more than it keeps: each message's frame is garbage
// once its body is in the store. The collector (GOGC 50 in cmd/brokerd)
// lets the heap grow to half again its live size between collections, and
// no collection runs while the broker is idle, so a broker that took a
// million sends would hold its peak heap in RSS long after, though most of
// it is garbage. Once the allocation rate falls from a burst to quiet,
// heapReturner runs one collection: one per burst, not the continual ones
// of a memory limit (debug.SetMemoryLimit following the heap halved the
// drain of a deep backlog).
//
// Where that returns little enough, it also returns every free page to the
// OS at once (debug.FreeOSMemory); otherwise the runtime's background
// scavenger returns them bit by bit. The bound is there because
// FreeOSMemory releases pages in one stretch that the runtime cannot
// preempt: a collection that wants to stop the world waits for it, and so
// does every goroutine, the lease's renewal included (half a GiB took
// seconds on a 2-core VM, and the master lost its lease).

const (
	// heapCheckEvery is how often the allocation rate is looked at.
	heapCheckEvery = 500 * time.Millisecond
	// heapBurstBytes is the least allocation in one check's interval that
	// counts as a burst; a quiet interval allocates less than an eighth
	// of it.
	heapBurstBytes = 16 << 20
	// heapMinReturn is the least spare heap worth a collection.
	heapMinReturn = 32 << 20
	// heapMaxFree and heapMaxFreeLive bound the spare heap and the live
	// heap with which FreeOSMemory is used.
	heapMaxFree     = 128 << 20
	heapMaxFreeLive = 512 << 20
)

// heapReading is what heapReturner looks at, from runtime/metrics.
type heapReading struct {
	allocs uint64 // bytes allocated since the process started
	live   uint64 // live heap as of the last collection
	// spare is heap memory held from the OS beyond the live heap: dead
	// objects not yet collected, and free pages not yet returned.
	spare uint64
}

// heapAction is what heapReturner says to do.
type heapAction int

const (
	heapWait    heapAction = iota
	heapCollect            // runtime.GC
	heapFree               // debug.FreeOSMemory: collect and return every free page
)

// heapReturner decides when a burst is over. It is a pure state machine:
// step takes a reading and says what to do now.
type heapReturner struct {
	started bool
	allocs  uint64
	burst   bool // a burst was seen since the last collection
}

// step takes the reading at the end of one interval.
func (h *heapReturner) step(r heapReading) heapAction {
	d := r.allocs - h.allocs
	h.allocs = r.allocs
	if !h.started {
		h.started = true
		return heapWait
	}
	switch {
	case d >= heapBurstBytes:
		h.burst = true
	case h.burst && d < heapBurstBytes/8 && r.spare >= max(r.live/4, heapMinReturn):
		h.burst = false
		if r.spare <= heapMaxFree && r.live <= heapMaxFreeLive {
			return heapFree
		}
		return heapCollect
	}
	return heapWait
}

var heapMetrics = []string{
	"/gc/heap/allocs:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
}

// readHeap reads the runtime's figures into a heapReading.
func readHeap(samples []rtmetrics.Sample) heapReading {
	rtmetrics.Read(samples)
	v := func(i int) uint64 {
		if samples[i].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return samples[i].Value.Uint64()
	}
	r := heapReading{allocs: v(0), live: v(1)}
	if held := v(2) + v(3) + v(4); held > r.live {
		r.spare = held - r.live
	}
	return r
}

// returnMemoryLoop gives memory back to the OS after each burst, until
// ctx ends.
func (s *Server) returnMemoryLoop(ctx context.Context) {
	samples := make([]rtmetrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		samples[i].Name = name
	}
	var h heapReturner
	t := time.NewTicker(heapCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := readHeap(samples)
		act := h.step(r)
		if act == heapWait {
			continue
		}
		start := time.Now()
		if act == heapFree {
			debug.FreeOSMemory()
		} else {
			runtime.GC()
		}
		after := readHeap(samples)
		h.allocs = after.allocs // the collection's own allocations are no burst
		s.log.WithFields(logrus.Fields{
			"spare_mb": r.spare >> 20, "live_mb": after.live >> 20, "returned": act == heapFree,
			"took": time.Since(start).Round(time.Millisecond).String(),
		}).Debug("collected after a burst")
	}
}
