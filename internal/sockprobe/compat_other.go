//go:build !amd64

package sockprobe

import "golang.org/x/sys/unix"

// setsockopt32: this architecture has no 32-bit entry the agent can use.
func setsockopt32(fd, level, opt int, optval []byte, x32 bool) error { return unix.ENOTSUP }
