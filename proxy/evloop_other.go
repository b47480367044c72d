//go:build !linux

package proxy

// newEventLoops: outside Linux every connection gets goroutines.
func newEventLoops(*Service) (eventLoops, error) { return nil, nil }
