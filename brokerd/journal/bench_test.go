package journal

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
)

// benchOptions honours JOURNAL_BENCH_SEGSIZE (bytes), to measure with
// segments small enough that the benchmark rolls through many of them.
func benchOptions(b *testing.B, mode preallocMode, buffered bool) Options {
	opts := Options{Dir: b.TempDir(), prealloc: mode, buffered: buffered}
	if v := os.Getenv("JOURNAL_BENCH_SEGSIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		opts.SegmentSize = n
	}
	return opts
}

var benchModes = []struct {
	name     string
	mode     preallocMode
	buffered bool
}{
	{"prealloc=none", preallocNone, false},
	{"prealloc=fallocate", preallocFallocate, false},
	{"prealloc=zero", preallocZero, false},
	{"prealloc=zero/buffered", preallocZero, true},
}

// BenchmarkAppend1KiB measures one producer doing synchronous 1 KiB Writes:
// every record pays a full write + fdatasync, so this is the latency floor.
func BenchmarkAppend1KiB(b *testing.B) {
	for _, m := range benchModes {
		b.Run(m.name, func(b *testing.B) {
			j, _ := open(b, benchOptions(b, m.mode, m.buffered))
			data := make([]byte, 1024)
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := j.Write(put(fmt.Sprint("m", i), "q", data)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkAppend1KiBParallel measures many producers sharing fsyncs (group
// commit); 32 goroutines per CPU keep the writer busy.
func BenchmarkAppend1KiBParallel(b *testing.B) {
	for _, m := range benchModes {
		b.Run(m.name, func(b *testing.B) {
			j, _ := open(b, benchOptions(b, m.mode, m.buffered))
			data := make([]byte, 1024)
			var n atomic.Int64
			b.SetBytes(int64(len(data)))
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := j.Write(put(fmt.Sprint("m", n.Add(1)), "q", data)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			st := j.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(st.Records)/float64(st.Syncs), "recs/sync")
		})
	}
}
