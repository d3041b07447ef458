// Package cgroup finds the cgroup v2 hierarchy and creates, identifies and
// removes the cgroups that l3iso containers live in.
//
// The hierarchy is discovered from /proc/self/mountinfo, never assumed: on
// hybrid-mode hosts it is mounted at /sys/fs/cgroup/unified.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/mountinfo"
)

// Mount returns the mount point of the cgroup v2 hierarchy.
func Mount() (string, error) {
	m, err := mountinfo.Points(mountinfo.Self, "cgroup2")
	if err != nil {
		return "", err
	}
	if len(m) == 0 {
		return "", errors.New("no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) and retry")
	}
	return m[0], nil
}

// Check verifies that path is a directory on a cgroup v2 filesystem.
func Check(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("cgroup %s does not exist: create it (mkdir) below the cgroup v2 mount, or pass an existing one", path)
		}
		return fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not on a cgroup v2 filesystem: pass a directory below the cgroup v2 mount", path)
	}
	return nil
}

// Level returns the depth of path below the hierarchy's root (the root is 0),
// as bpf_get_current_ancestor_cgroup_id counts it.
func Level(mount, path string) (int, error) {
	rel, err := filepath.Rel(filepath.Clean(mount), filepath.Clean(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return 0, fmt.Errorf("%s is not below the cgroup v2 mount %s", path, mount)
	}
	if rel == "." {
		return 0, nil
	}
	return len(strings.Split(rel, "/")), nil
}

// ID returns the cgroup id of the cgroup at path: the kernfs inode number,
// which is what bpf_get_current_cgroup_id and friends return.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	return st.Ino, nil
}

// Create makes the cgroup at path (and missing parents); an existing one is fine.
func Create(path string) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", path, err)
	}
	return nil
}

// Make creates the cgroup at path (and missing parents, like Create) and
// returns its id; existed says it was there already. When the parent exists
// it costs one mkdir and one stat: what adding thousands of containers
// costs per container.
func Make(path string) (id uint64, existed bool, err error) {
	switch err := os.Mkdir(path, 0o755); {
	case err == nil:
	case errors.Is(err, os.ErrExist):
		existed = true
	case errors.Is(err, os.ErrNotExist):
		if err := Create(path); err != nil {
			return 0, false, err
		}
	default:
		return 0, false, fmt.Errorf("create cgroup %s: %w", path, err)
	}
	id, err = ID(path)
	return id, existed, err
}

// Populated reports whether any process lives in the cgroup or below it.
func Populated(path string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte("populated 1")), nil
}

// killedAttr marks a cgroup whose processes Remove killed through
// cgroup.kill (see Killed).
const killedAttr = "user.l3iso.killed"

// Remove kills every process in the cgroup subtree at path at once (no
// grace period: Stop is the graceful way) and removes it. A missing cgroup
// is not an error.
//
// Before it writes cgroup.kill it marks the cgroup (see Killed), so that a
// repair can tell a cgroup that a command died in the middle of removing.
func Remove(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if _, err := Stop([]string{path}, 0); err != nil {
		return err
	}
	return removeTree(path)
}

// Killed reports whether Remove killed the processes of the cgroup at path
// and did not get to remove it: the command died in between. Such a cgroup
// must not be used again. On Linux 6.18 (at least) the kernel kills every
// child cloned into a cgroup once cgroup.kill was written there, as
// clone3(CLONE_INTO_CGROUP) compares the target's kill count with the
// parent cgroup's; systemd and container runtimes start processes that way.
// Joining through cgroup.procs still works. A kernel without user xattrs on
// cgroupfs (before 5.7) has no mark, and Killed is always false.
func Killed(path string) bool {
	_, err := unix.Getxattr(path, killedAttr, nil)
	return err == nil
}

// RemoveTree removes the cgroup subtree at path, which must hold no
// process any more (see Stop). A missing cgroup is not an error.
func RemoveTree(path string) error { return removeTree(path) }

func removeTree(path string) error {
	entries, err := os.ReadDir(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(path, e.Name())); err != nil {
				return err
			}
		}
	}
	var err2 error
	for i := 0; i < 100; i++ { // rmdir races with exiting tasks being reaped
		err2 = unix.Rmdir(path)
		if err2 == nil || errors.Is(err2, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err2, unix.EBUSY) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", path, err2)
}

// Enter moves the calling process (all its threads) into the cgroup at path.
func Enter(path string) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.procs"), []byte("0"), 0); err != nil {
		return fmt.Errorf("enter cgroup %s: %w", path, err)
	}
	return nil
}

// EnterFD moves the calling process into the cgroup whose directory dir is
// open (O_PATH will do): it works from any mount namespace.
func EnterFD(dir int) error {
	fd, err := unix.Openat(dir, "cgroup.procs", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		_, err = unix.Write(fd, []byte("0"))
		unix.Close(fd)
	}
	if err != nil {
		return fmt.Errorf("move back to the cgroup it came from: %w", err)
	}
	return nil
}

// Current returns the cgroup v2 directory of the calling process.
func Current() (string, error) {
	mount, err := Mount()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mount, p), nil
		}
	}
	return "", errors.New("find own cgroup: no cgroup v2 line in /proc/self/cgroup")
}
