//go:build !linux

package brokerd

import "net"

// canBind can only check that addr resolves here.
func canBind(addr string) error {
	_, err := net.ResolveTCPAddr("tcp", addr)
	return err
}
