package confine

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The 32-bit system call entries (int 0x80 and x32 from a 64-bit process
// on x86-64, AArch32 on arm64) are compat system calls, and the kernel
// runs no cgroup/setsockopt program for a compat setsockopt
// (do_sock_setsockopt): a multicast join made that way would skip the
// policy (rule 6). Workloads get a seccomp filter that fails every system
// call not made through the native 64-bit entry with EPERM. (EPERM, not
// the ENOSYS of a kernel without 32-bit support: it is a refusal, and it
// tells the filter's answer from the kernel's.)

// x32SyscallBit marks an x32 system call number (__X32_SYSCALL_BIT).
const x32SyscallBit = 0x40000000

// seccomp_data offsets.
const (
	offNr   = 0
	offArch = 4
)

// compatFilter returns the filter for the native architecture arch; x32
// says whether x32 numbers (the native arch value with x32SyscallBit set)
// must be refused too.
func compatFilter(arch uint32, x32 bool) []unix.SockFilter {
	deny := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	ld := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	ret := func(v uint32) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: v} }
	if !x32 {
		return []unix.SockFilter{
			ld(offArch),
			{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: arch, Jt: 0, Jf: 1},
			ret(unix.SECCOMP_RET_ALLOW),
			ret(deny),
		}
	}
	return []unix.SockFilter{
		ld(offArch),
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: arch, Jt: 0, Jf: 3}, // not x86-64: deny
		ld(offNr),
		{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: x32SyscallBit, Jt: 1, Jf: 0}, // x32: deny
		ret(unix.SECCOMP_RET_ALLOW),
		ret(deny),
	}
}

// denyCompatSyscalls installs compatFilter on the calling thread, which
// must have no_new_privs set; execve keeps it.
func denyCompatSyscalls() error {
	var f []unix.SockFilter
	switch runtime.GOARCH {
	case "amd64":
		f = compatFilter(unix.AUDIT_ARCH_X86_64, true)
	case "arm64":
		f = compatFilter(unix.AUDIT_ARCH_AARCH64, false)
	default:
		return fmt.Errorf("refusing 32-bit system calls is implemented for amd64 and arm64, not %s: a workload here could bypass the multicast policy; use a container runtime's seccomp profile", runtime.GOARCH)
	}
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("install the seccomp filter that refuses 32-bit system calls: %w", err)
	}
	return nil
}
