package sockprobe

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setsockopt's numbers in the i386 system call table and, with
// x32SyscallBit set, in the x32 table.
const (
	sysSetsockopt386 = 366
	sysSetsockoptX32 = 541
	x32SyscallBit    = 0x40000000
)

// int80 makes system call trap with arguments a1..a5 through the 32-bit
// entry (int $0x80) and returns the kernel's eax (compat_amd64.s).
func int80(trap, a1, a2, a3, a4, a5 uintptr) uintptr

// setsockopt32 is Setsockopt32 on the agent side: optval goes to memory
// below 4 GiB (MAP_32BIT), the only memory a 32-bit pointer reaches.
func setsockopt32(fd, level, opt int, optval []byte, x32 bool) error {
	mem, err := unix.Mmap(-1, 0, max(len(optval), 1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
	if err != nil {
		return fmt.Errorf("mmap below 4 GiB: %w", err)
	}
	defer unix.Munmap(mem)
	copy(mem, optval)
	p := uintptr(unsafe.Pointer(&mem[0]))
	if x32 {
		_, _, errno := unix.Syscall6(x32SyscallBit|sysSetsockoptX32, uintptr(fd), uintptr(level), uintptr(opt), p, uintptr(len(optval)), 0)
		if errno != 0 {
			return errno
		}
		return nil
	}
	r := int32(uint32(int80(sysSetsockopt386, uintptr(fd), uintptr(level), uintptr(opt), p, uintptr(len(optval)))))
	if r < 0 {
		return unix.Errno(-r)
	}
	return nil
}
