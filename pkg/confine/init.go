package confine

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// initMain is pid 1 of the container's PID namespace: it mounts the
// namespace's /proc, starts the stage in a new user namespace, drops its
// own capabilities, forwards signals to the workload, reaps every process
// that ends up its child and returns the workload's exit status.
func initMain(spec *Spec) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "l3iso: exec in container %q: %v\n", spec.Container, err)
		return exitCannotRun
	}
	// Pdeathsig goes with the thread that starts the stage: keep it.
	runtime.LockOSThread()
	syscall.CloseOnExec(homeFD)
	// Our working directory is the caller's, possibly on a mount that
	// is no longer there; nothing of it may reach the workload.
	if err := unix.Chdir("/"); err != nil {
		return fail(err)
	}
	if err := mountProc(); err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)

	cmd, err := reexec(roleStage, spec)
	if err != nil {
		return fail(err)
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(spec.HostBase), Size: IDsPerContainer}}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: ids,
		GidMappings: ids,
		// Root of the new namespace: the kernel gives the stage its
		// capabilities there at execve only if its uid is the
		// namespace's 0, which the host's 0 it starts with is not.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
		// The stage must replace the supplementary groups it inherits
		// from us (host root's) with the user's: setgroups(2) stays
		// allowed, as the mapping is written by a privileged process.
		GidMappingsEnableSetgroups: true,
		Pdeathsig:                  unix.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start the command in a user namespace (host uids and gids %d-%d): %w%s",
			spec.HostBase, spec.HostBase+IDsPerContainer-1, err, usernsHint(err)))
	}
	pid := cmd.Process.Pid
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		unix.Kill(pid, unix.SIGKILL)
		return fail(fmt.Errorf("pidfd_open the command: %w", err))
	}
	// Out of the container's cgroup, which now holds the command only.
	if err := cgroup.EnterFD(homeFD); err != nil {
		fmt.Fprintf(os.Stderr, "l3iso: warning: exec in container %q: init: %v: `container del` will count it as the container's\n", spec.Container, err)
	}
	unix.Close(homeFD)
	if err := keepOnlyCapKill(); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		return fail(err)
	}
	go func() {
		for s := range sigs {
			unix.PidfdSendSignal(pidfd, s.(syscall.Signal), nil, 0)
		}
	}()
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("wait for the command: %w", err))
		}
		if got == pid && (ws.Exited() || ws.Signaled()) {
			// Returning ends the namespace: the kernel kills what
			// is left in it.
			return exitStatus(syscall.WaitStatus(ws))
		}
	}
}

// usernsHint explains why a user namespace could not be made.
func usernsHint(err error) string {
	switch {
	case errors.Is(err, unix.EACCES):
		return " (the l3iso binary must be executable by every user: it starts the command as container root, an unprivileged host uid; chmod 755 it)"
	case errors.Is(err, unix.ENOSPC):
		return " (user.max_user_namespaces reached or 0: raise it with sysctl, or run exec --host-root, which gives up most of the containment)"
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EPERM):
		return " (does this kernel have user namespaces? CONFIG_USER_NS; or run exec --host-root, which gives up most of the containment)"
	}
	return ""
}

// keepOnlyCapKill leaves every thread of this process CAP_KILL alone:
// what init still needs to signal the workload, whose uid is not ours.
// It needs a static binary (CGO_ENABLED=0, as `make build` makes it):
// with cgo the Go runtime cannot change every thread's capabilities, and
// init keeps them; the workload cannot reach init either way (another
// user namespace, no ptrace, no signals to us).
func keepOnlyCapKill() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{{Effective: 1 << unix.CAP_KILL, Permitted: 1 << unix.CAP_KILL}}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	if errno == unix.ENOTSUP {
		return nil
	}
	if errno != 0 {
		return fmt.Errorf("drop init's capabilities: %w", errno)
	}
	return nil
}
