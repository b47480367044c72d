package brokerd

import "testing"

// TestHeapReturner: one collection when a burst gives way to quiet and
// enough is spare, returning the pages at once only when that is quick;
// nothing during the burst, under a steady trickle, or twice for one burst.
func TestHeapReturner(t *testing.T) {
	const mb = 1 << 20
	type step struct {
		alloc, live, spare uint64 // alloc: MB allocated in the interval
		want               heapAction
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"burst then quiet", []step{
			{0, 100, 0, heapWait}, // first reading: a baseline
			{200, 100, 80, heapWait},
			{300, 150, 90, heapWait},
			{1, 150, 90, heapFree},
			{1, 150, 5, heapWait},
			{0, 150, 90, heapWait}, // no new burst
		}},
		{"quiet without spare memory", []step{
			{0, 100, 0, heapWait},
			{200, 100, 80, heapWait},
			{0, 100, 10, heapWait},
			{0, 100, 10, heapWait},
		}},
		{"steady trickle", []step{
			{0, 100, 0, heapWait},
			{5, 100, 60, heapWait},
			{5, 100, 60, heapWait},
			{5, 100, 60, heapWait},
		}},
		{"slower, not quiet", []step{
			{0, 1600, 0, heapWait},
			{200, 1600, 400, heapWait},
			{30, 1600, 466, heapWait},
			{1, 1600, 466, heapCollect}, // too much to return in one go
		}},
		{"large live heap", []step{
			{0, 600, 0, heapWait},
			{200, 600, 100, heapWait},
			{0, 600, 100, heapWait}, // spare under a quarter of live
			{100, 600, 200, heapWait},
			{0, 600, 200, heapCollect},
		}},
		{"a second burst", []step{
			{0, 100, 0, heapWait},
			{200, 100, 80, heapWait},
			{0, 100, 80, heapFree},
			{200, 100, 80, heapWait},
			{0, 100, 80, heapFree},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var h heapReturner
			var allocs uint64 = 1000 * mb
			for i, s := range c.steps {
				allocs += s.alloc * mb
				if got := h.step(heapReading{allocs: allocs, live: s.live * mb, spare: s.spare * mb}); got != s.want {
					t.Fatalf("step %d (%+v): %v, want %v", i, s, got, s.want)
				}
			}
		})
	}
}
