package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DroppedCaps are the capabilities a process started with `l3iso exec`
// cannot get back: those that would let it undo its isolation (docs/DESIGN.md
// rule 8) — reconfigure the network or BPF, open raw sockets, leave its
// cgroup or namespaces, load modules, or take over processes. They leave
// the bounding set, so no execve restores them. In a user namespace they
// would act on that namespace's objects only; they are dropped there too.
var DroppedCaps = []uintptr{
	unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_SYS_ADMIN, unix.CAP_BPF,
	unix.CAP_PERFMON, unix.CAP_SYS_MODULE, unix.CAP_SYS_PTRACE,
}

// capNames names the capabilities of DroppedCaps.
var capNames = map[uintptr]string{
	unix.CAP_NET_ADMIN: "cap_net_admin", unix.CAP_NET_RAW: "cap_net_raw", unix.CAP_SYS_ADMIN: "cap_sys_admin",
	unix.CAP_BPF: "cap_bpf", unix.CAP_PERFMON: "cap_perfmon", unix.CAP_SYS_MODULE: "cap_sys_module",
	unix.CAP_SYS_PTRACE: "cap_sys_ptrace",
}

// finish turns the calling thread, which must be locked and is the
// workload's own (the stage, or `exec --host-root` itself), into the
// command: capabilities, user, no_new_privs, the 32-bit system call filter,
// working directory, environment, execve. It returns only on error.
func finish(s *Spec) error {
	name := s.Container
	if err := dropCaps(DroppedCaps); err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	if !s.HostRoot {
		if err := becomeUser(s.User); err != nil {
			return fmt.Errorf("exec in container %q: %w", name, err)
		}
	}
	// A session keyring of its own: the caller's (host root's) would be
	// the command's to read, as its possessor.
	if _, _, errno := unix.Syscall(unix.SYS_KEYCTL, unix.KEYCTL_JOIN_SESSION_KEYRING, 0, 0); errno != 0 {
		return fmt.Errorf("exec in container %q: new session keyring: %w", name, errno)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("exec in container %q: set no_new_privs: %w", name, err)
	}
	if err := denyCompatSyscalls(); err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	// As the user, in this mount namespace: a path, never a directory
	// handle from outside (which could lie on a mount the container must
	// not reach).
	if err := unix.Chdir(s.Dir); err != nil {
		if s.DirSet {
			return fmt.Errorf("exec in container %q: --workdir %s: %w", name, s.Dir, err)
		}
		if err := unix.Chdir("/"); err != nil {
			return fmt.Errorf("exec in container %q: chdir /: %w", name, err)
		}
	}
	path, err := lookPath(s.Argv[0], s.Env)
	if err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	// Descriptors the caller leaked to us (anything but 0-2) do not
	// reach the command: one might be a directory outside the container.
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("exec in container %q: close inherited descriptors: %w", name, err)
	}
	err = unix.Exec(path, s.Argv, s.Env)
	if errors.Is(err, unix.EPERM) {
		if caps := fileCaps(path, DroppedCaps); len(caps) > 0 {
			return fmt.Errorf("exec %s in container %q: %w: the program has file capabilities (%s) that processes in a container cannot get (rule 8), and the kernel will not start it without them: run it outside the container, or a copy without file capabilities (see `getcap %s`)",
				path, name, err, strings.Join(caps, ", "), path)
		}
	}
	return fmt.Errorf("exec %s in container %q: %w", path, name, err)
}

// lookPath finds command file as execvp would with the PATH of env.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if _, err := os.Stat(file); err != nil {
			return "", err
		}
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + file
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %q (PATH=%s; --env PATH=... changes it)", exec.ErrNotFound, file, path)
}

// becomeUser sets every thread's groups, gid and uid to u's (ids inside
// the user namespace).
func becomeUser(u User) error {
	groups := make([]int, len(u.Groups))
	for i, g := range u.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("set groups %v: %w", u.Groups, err)
	}
	if err := syscall.Setresgid(int(u.GID), int(u.GID), int(u.GID)); err != nil {
		return fmt.Errorf("set gid %d: %w", u.GID, err)
	}
	if err := syscall.Setresuid(int(u.UID), int(u.UID), int(u.UID)); err != nil {
		return fmt.Errorf("set uid %d: %w", u.UID, err)
	}
	return nil
}

// fileCaps returns those of caps that file path's permitted file
// capabilities (its security.capability attribute, struct vfs_cap_data:
// magic, then permitted and inheritable as 32-bit halves) include.
func fileCaps(path string, caps []uintptr) []string {
	b := make([]byte, 24)
	n, err := unix.Getxattr(path, "security.capability", b)
	if err != nil || n < 12 {
		return nil
	}
	permitted := uint64(binary.LittleEndian.Uint32(b[4:]))
	if n >= 20 {
		permitted |= uint64(binary.LittleEndian.Uint32(b[12:])) << 32
	}
	var out []string
	for _, c := range caps {
		if permitted&(1<<c) != 0 {
			out = append(out, capNames[c])
		}
	}
	return out
}

// dropCaps removes caps from the calling thread's bounding, ambient,
// effective, permitted and inheritable sets.
func dropCaps(caps []uintptr) error {
	for _, cp := range caps {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, cp, 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", cp, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for _, cp := range caps {
		bit := uint32(1) << (cp % 32)
		d := &data[cp/32]
		d.Effective &^= bit
		d.Permitted &^= bit
		d.Inheritable &^= bit
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	return nil
}
