// Package bench holds the benchmarks behind the figures in the README: run
// them with `make bench`. Each benchmark reports the peer figure it is
// compared with from the same run (the disk's own fsync rate, a direct
// connection), because absolute numbers on a shared 2-core machine are noisy
// and ratios are not.
package bench
