package service

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen opens a TCP listener for one of keyd's ports. With shared set
// (replicas on one database) it sets SO_REUSEPORT, so replicas on the host
// network of one node share the port and the kernel spreads connections
// over them; a replica that stops takes only its own connections. Linux
// lets only sockets of the same user share a port, and keyd's TLS proves
// keyd to its clients whatever process accepted the connection.
func Listen(address string, shared bool) (net.Listener, error) {
	var lc net.ListenConfig
	if shared {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return lc.Listen(context.Background(), "tcp", address)
}
