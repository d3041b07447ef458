package sockprobe

// Containment probes: what a contained process would try to escape its
// container (docs/DESIGN.md rule 8). Each returns the kernel's answer; nil means
// the attempt worked.

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Clone3IntoCgroup has the agent clone a child into the cgroup v2
// directory dir with clone3(CLONE_INTO_CGROUP); the child exits at once.
// nil means a process of the agent was born in that cgroup. The test
// process opens dir and hands the agent the descriptor (OfferFD): where
// the agent runs, dir's path may not exist (inside `l3iso exec` the host's
// cgroup paths do not), and the answer must be the kernel's to clone3,
// not ENOENT from a path lookup. An agent that cannot take the descriptor
// fails the test.
func (a *Agent) Clone3IntoCgroup(dir string) error {
	a.t.Helper()
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		a.t.Fatalf("sockprobe: open cgroup %s for the agent: %v", dir, err)
	}
	defer f.Close()
	path, wait := OfferFD(a.t, f)
	rep := a.call(&request{Op: opClone3Cgroup, Address: path})
	if err := wait(); err != nil {
		a.t.Fatalf("sockprobe agent %d: clone3 into %s: %v", a.pid, dir, err)
	}
	return rep.Err.decode()
}

// BPFObjGet calls BPF_OBJ_GET on a pinned BPF object; nil means the agent
// got a descriptor of it (which it closes).
func (a *Agent) BPFObjGet(pin string) error {
	a.t.Helper()
	return a.call(&request{Op: opBPFObjGet, Address: pin}).Err.decode()
}

// WriteFile opens an existing file write-only and writes data to it; nil
// data writes back what the file holds (a sysctl's current value, so that
// a write that should have failed changes nothing).
func (a *Agent) WriteFile(path string, data []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opWriteFile, Address: path, Payload: data}).Err.decode()
}

// Kill sends sig to pid (kill(2), pid as the agent's PID namespace numbers
// it).
func (a *Agent) Kill(pid int, sig unix.Signal) error {
	a.t.Helper()
	return a.call(&request{Op: opKill, Value: pid, Opt: int(sig)}).Err.decode()
}

// Ptrace attaches to pid with PTRACE_SEIZE (which does not stop it) from a
// thread that then exits, which detaches again.
func (a *Agent) Ptrace(pid int) error {
	a.t.Helper()
	return a.call(&request{Op: opPtrace, Value: pid}).Err.decode()
}

// PidfdOpen calls pidfd_open(pid); nil means the agent got a pidfd (which
// it closes): with it, pidfd_getfd and pidfd_send_signal.
func (a *Agent) PidfdOpen(pid int) error {
	a.t.Helper()
	return a.call(&request{Op: opPidfdOpen, Value: pid}).Err.decode()
}

// Setsockopt32 calls setsockopt(2) on socket id through the 32-bit system
// call entry (int $0x80 on amd64), with optval in memory below 4 GiB, as a
// 32-bit program would; the kernel runs no cgroup/setsockopt program for
// it. Where the kernel has no such entry (see IA32), int $0x80 kills the
// agent. unix.ENOTSUP on architectures other than amd64.
func (a *Agent) Setsockopt32(id, level, opt int, optval []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opSetsockopt32, ID: id, Level: level, Opt: opt, Payload: optval}).Err.decode()
}

// SetsockoptX32 is Setsockopt32 through the x32 entry: the 64-bit system
// call instruction with an x32 number (0x40000000 | 541), also a compat
// setsockopt. A kernel without x32 answers ENOSYS.
func (a *Agent) SetsockoptX32(id, level, opt int, optval []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opSetsockopt32, ID: id, Level: level, Opt: opt, Payload: optval, Value: 1}).Err.decode()
}

// i386Exit42 is a complete i386 ELF executable: _start does exit(42)
// through int $0x80.
var i386Exit42 = func() []byte {
	const base, ehsize, phsize = 0x08048000, 52, 32
	code := []byte{0xb8, 1, 0, 0, 0, 0xbb, 42, 0, 0, 0, 0xcd, 0x80} // mov $1,%eax; mov $42,%ebx; int $0x80
	b := binary.LittleEndian.AppendUint32(nil, 0x464c457f)          // \x7fELF
	b = append(b, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)               // 32-bit, little-endian, version 1
	b = binary.LittleEndian.AppendUint16(b, 2)                      // ET_EXEC
	b = binary.LittleEndian.AppendUint16(b, 3)                      // EM_386
	for _, v := range []uint32{1, base + ehsize + phsize, ehsize, 0, 0} {
		b = binary.LittleEndian.AppendUint32(b, v) // version, entry, phoff, shoff, flags
	}
	for _, v := range []uint16{ehsize, phsize, 1, 0, 0, 0} {
		b = binary.LittleEndian.AppendUint16(b, v) // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
	}
	size := uint32(ehsize + phsize + len(code))
	for _, v := range []uint32{1, 0, base, base, size, size, 5, 0x1000} {
		b = binary.LittleEndian.AppendUint32(b, v) // PT_LOAD of the whole file, r-x
	}
	return append(b, code...)
}()

// IA32 reports whether this kernel runs 32-bit x86 code (and so has the
// int $0x80 entry): it runs an i386 program that exits with 42. Kernels
// built without IA32_EMULATION, booted with ia32_emulation=0, or guests
// whose hypervisor cannot run 32-bit code (PVM) answer ENOEXEC.
func IA32(t testing.TB) bool {
	t.Helper()
	f := filepath.Join(t.TempDir(), "exit42")
	if err := os.WriteFile(f, i386Exit42, 0o755); err != nil {
		t.Fatal(err)
	}
	err := exec.Command(f).Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 42 {
		return true
	}
	if errors.Is(err, unix.ENOEXEC) {
		return false
	}
	t.Fatalf("run an i386 program to see whether this kernel runs 32-bit code: %v", err)
	return false
}

// containOp runs the probes that need no socket.
func containOp(req *request) error {
	switch req.Op {
	case opClone3Cgroup:
		return clone3IntoCgroup(req.Address)
	case opBPFObjGet:
		return bpfObjGet(req.Address)
	case opWriteFile:
		return writeFile(req.Address, req.Payload)
	case opKill:
		return unix.Kill(req.Value, unix.Signal(req.Opt))
	case opPtrace:
		return ptraceSeize(req.Value)
	case opPidfdOpen:
		fd, err := unix.PidfdOpen(req.Value, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	return misusef("unknown containment probe %q", req.Op)
}

// cloneArgs is struct clone_args up to its cgroup field (CLONE_ARGS_SIZE_VER2).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls, setTID, setTIDSize, cgroup uint64
}

// clone3IntoCgroup takes a cgroup directory's descriptor from the unix
// socket at sock (see OfferFD) and clones into that cgroup.
func clone3IntoCgroup(sock string) error {
	fd, err := takeFD(sock)
	if err != nil {
		return misusef("clone3 into a cgroup: take the cgroup's descriptor: %v", err)
	}
	defer unix.Close(fd)
	args := cloneArgs{flags: unix.CLONE_INTO_CGROUP, exitSignal: uint64(unix.SIGCHLD), cgroup: uint64(fd)}
	pid, err := rawClone3(&args)
	if err != nil {
		return err
	}
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
	return nil
}

// rawClone3 forks with clone3; the child only calls exit_group.
//
//go:norace
//go:nosplit
func rawClone3(args *cloneArgs) (int, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(args)), unsafe.Sizeof(*args), 0)
	if errno != 0 {
		return 0, errno
	}
	if r == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return int(r), nil
}

// bpfAttrObj is union bpf_attr for BPF_OBJ_GET.
type bpfAttrObj struct {
	pathname  uint64
	bpfFD     uint32
	fileFlags uint32
	pathFD    int32
	_         uint32
}

func bpfObjGet(pin string) error {
	p, err := unix.BytePtrFromString(pin)
	if err != nil {
		return err
	}
	attr := bpfAttrObj{pathname: uint64(uintptr(unsafe.Pointer(p)))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if errno != 0 {
		return errno
	}
	unix.Close(int(fd))
	return nil
}

func writeFile(path string, data []byte) error {
	if data == nil {
		b, err := os.ReadFile(path)
		if err != nil {
			return unwrapPathError(err)
		}
		data = b
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return unwrapPathError(err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return unwrapPathError(err)
}

// unwrapPathError returns the errno inside an *os.PathError, so that the
// test sees a bare errno.
func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func ptraceSeize(pid int) error {
	res := make(chan error, 1)
	go func() {
		// ptrace belongs to a thread. Ending this goroutine locked
		// ends its thread too, and the kernel detaches a tracer that
		// exits.
		runtime.LockOSThread()
		_, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(pid), 0, 0, 0, 0)
		if errno != 0 {
			res <- errno
			return
		}
		res <- nil
	}()
	return <-res
}
