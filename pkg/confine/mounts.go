package confine

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/mountinfo"
)

// The masked and read-only paths are runc's defaults: files of /proc and
// /sys that tell about or change the whole host. Masked directories get
// an empty read-only tmpfs, masked files /dev/null; read-only paths a
// read-only bind mount of themselves (all of /sys is read-only).
var (
	procMasked = []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
		"/proc/scsi",
	}
	procReadonly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
	sysMasked    = []string{"/sys/firmware", "/sys/devices/virtual/powercap"}
)

const roFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// isolateMounts prepares the calling thread's new mount namespace, owned
// by the host's user namespace (so no mount in it is locked, and only
// host root can change it): nothing in it propagates back to the host or
// in from it; no bpf file system is left (l3iso's pins answer BPF_OBJ_GET
// to anyone with file permission); no proc mount but /proc (which init
// replaces); the only cgroup2 mount is a new, read-only one made in the
// thread's new cgroup namespace, so it shows the container's cgroup and
// below; and /sys, with every mount under it, is read-only.
func isolateMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unmountAll("bpf", nil); err != nil {
		return err
	}
	if err := unmountAll("proc", []string{"/proc"}); err != nil {
		return err
	}
	cg, err := mountinfo.Points(mountinfo.Thread, "cgroup2")
	if err != nil {
		return err
	}
	if len(cg) == 0 {
		return errors.New("no cgroup v2 hierarchy is mounted")
	}
	if err := unmountAll("cgroup2", nil); err != nil {
		return err
	}
	if err := unix.Mount("cgroup2", cg[0], "cgroup2", roFlags, ""); err != nil {
		return fmt.Errorf("mount the container's cgroup at %s: %w", cg[0], err)
	}
	for _, p := range sysMasked {
		if err := mask(p); err != nil {
			return err
		}
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(unix.AT_FDCWD, "/sys", unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("make /sys read-only: %w", err)
	}
	return nil
}

// unmountAll detaches every mount of type fstype but those at keep, until
// the mount table shows none: a detached mount may have uncovered another.
func unmountAll(fstype string, keep []string) error {
	for round := 0; ; round++ {
		points, err := mountinfo.Points(mountinfo.Thread, fstype)
		if err != nil {
			return err
		}
		points = slices.DeleteFunc(points, func(p string) bool { return slices.Contains(keep, p) })
		if len(points) == 0 {
			return nil
		}
		var last error
		for _, p := range slices.Backward(points) { // mounts on top first
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
				last = fmt.Errorf("unmount the %s file system at %s: %w", fstype, p, err)
			}
		}
		if round == 16 {
			if last == nil {
				last = fmt.Errorf("%s file systems are still mounted at %v", fstype, points)
			}
			return fmt.Errorf("%w: a container must have none", last)
		}
	}
}

// mask hides path (when it exists): an empty read-only tmpfs on a
// directory, /dev/null on a file.
func mask(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mask %s: %w", path, err)
	}
	if st.IsDir() {
		err = unix.Mount("tmpfs", path, "tmpfs", roFlags, "size=0")
	} else {
		err = unix.Mount("/dev/null", path, "", unix.MS_BIND, "")
	}
	if err != nil {
		return fmt.Errorf("mask %s: %w", path, err)
	}
	return nil
}

// readOnly makes path (when it exists) a read-only bind mount of itself.
func readOnly(path string) error {
	if err := unix.Mount(path, path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("make %s read-only: %w", path, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(unix.AT_FDCWD, path, unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("make %s read-only: %w", path, err)
	}
	return nil
}

// maskProc masks procMasked and makes procReadonly read-only.
func maskProc() error {
	for _, p := range procMasked {
		if err := mask(p); err != nil {
			return err
		}
	}
	for _, p := range procReadonly {
		if err := readOnly(p); err != nil {
			return err
		}
	}
	return nil
}

// mountProc replaces /proc with a procfs of the calling process's PID
// namespace (init's) and masks it.
func mountProc() error {
	if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the host's /proc: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	return maskProc()
}
