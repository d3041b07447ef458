package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// DroppedCaps are the capabilities a process started with `l3iso exec`
// loses: those that would let it undo its isolation (DESIGN.md rule 8) —
// reconfigure the network or BPF, open raw sockets, leave its cgroup or
// namespaces, load modules, or take over host processes.
var DroppedCaps = []uintptr{
	unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_SYS_ADMIN, unix.CAP_BPF,
	unix.CAP_PERFMON, unix.CAP_SYS_MODULE, unix.CAP_SYS_PTRACE,
}

// Exec replaces the calling process with argv, running inside container
// name: in its network namespace (netns mode), in its cgroup, in a new cgroup namespace rooted there (so not even
// root inside can move itself out), without DroppedCaps. It returns only on
// error. The caller must hold no lock it wants to keep.
func (c *Control) Exec(name string, argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("exec: no command given: l3iso exec %s -- COMMAND [ARGS...]", name)
	}
	k, err := c.Find(name)
	if err != nil {
		return err
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	cg := c.CgroupPath(name)
	netns := -1
	if isNetns(k) {
		p := c.NetnsPath(name)
		if netns, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("exec in container %q: open its network namespace %s: %w (run `l3iso up` to repair it)", name, p, err)
		}
	}
	c.Close()

	// Namespaces and capabilities belong to the thread that calls execve.
	runtime.LockOSThread()
	if netns >= 0 {
		// Its network namespace first, while this thread may still
		// (CAP_SYS_ADMIN); the command inherits it with execve.
		err := unix.Setns(netns, unix.CLONE_NEWNET)
		unix.Close(netns)
		if err != nil {
			return fmt.Errorf("exec in container %q: enter network namespace %s: %w", name, c.NetnsName(name), err)
		}
	}
	if err := cgroup.Enter(cg); err != nil {
		return err
	}
	if err := confineCgroups(); err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	if err := dropCaps(DroppedCaps); err != nil {
		return fmt.Errorf("exec in container %q: %w", name, err)
	}
	err = unix.Exec(path, argv, os.Environ())
	if errors.Is(err, unix.EPERM) {
		if caps := fileCaps(path, DroppedCaps); len(caps) > 0 {
			return fmt.Errorf("exec %s in container %q: %w: the program has file capabilities (%s) that processes in a container cannot get (rule 8), and the kernel will not start it without them: run it outside the container, or a copy without file capabilities (see `getcap %s`)",
				path, name, err, strings.Join(caps, ", "), path)
		}
	}
	return fmt.Errorf("exec %s in container %q: %w", path, name, err)
}

// capNames names the capabilities of DroppedCaps.
var capNames = map[uintptr]string{
	unix.CAP_NET_ADMIN: "cap_net_admin", unix.CAP_NET_RAW: "cap_net_raw", unix.CAP_SYS_ADMIN: "cap_sys_admin",
	unix.CAP_BPF: "cap_bpf", unix.CAP_PERFMON: "cap_perfmon", unix.CAP_SYS_MODULE: "cap_sys_module",
	unix.CAP_SYS_PTRACE: "cap_sys_ptrace",
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

// confineCgroups gives the calling thread a cgroup namespace rooted at its
// cgroup and a mount namespace in which every cgroup filesystem is
// read-only. Without nsdelegate a cgroup namespace alone does not stop root
// from writing its pid to an ancestor's cgroup.procs; a read-only mount
// does, and remounting it needs CAP_SYS_ADMIN, which dropCaps removes.
func confineCgroups() error {
	if err := unix.Unshare(unix.CLONE_NEWCGROUP | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("new cgroup and mount namespaces: %w", err)
	}
	// Our remounts must not propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	mounts, err := cgroup.Mounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Mount("", m, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", m, err)
		}
	}
	return nil
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
