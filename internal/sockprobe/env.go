package sockprobe

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/mountinfo"
)

// pythonTimeout bounds Python.
const pythonTimeout = 10 * time.Second

// cgroupDrainTimeout bounds waiting for killed processes to leave a cgroup.
const cgroupDrainTimeout = 10 * time.Second

// RequirePrivileged skips the test when it does not run as root, but fails
// it instead when the environment says privileged tests are required
// (CI=true or L3ISO_REQUIRE_PRIVILEGED=1), so a green CI run never hides a
// skipped privileged test.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if Required() {
		t.Fatalf("privileged test needs root (euid is %d), and CI / L3ISO_REQUIRE_PRIVILEGED forbid skipping it", os.Geteuid())
	}
	t.Skipf("privileged test: needs root (euid is %d); run as root, or set L3ISO_REQUIRE_PRIVILEGED=1 to make this a failure", os.Geteuid())
}

// Required says whether the environment forbids skipping a privileged
// test (CI=true or L3ISO_REQUIRE_PRIVILEGED=1): a test that needs a program
// which is missing fails then, where it would otherwise skip.
func Required() bool {
	return truthy(os.Getenv("CI")) || truthy(os.Getenv("L3ISO_REQUIRE_PRIVILEGED"))
}

func truthy(s string) bool {
	b, err := strconv.ParseBool(s)
	return err == nil && b
}

// randomName returns prefix followed by 8 random hex digits.
func randomName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewNetns creates a fresh named network namespace "l3t-<random>" with lo
// up and returns its path (/run/netns/NAME, usable as Options.NetnsPath,
// with nsenter --net and with `ip -n NAME`). t.Cleanup deletes it. The
// test process stays in its own namespace: the new one is made on a locked
// OS thread that is switched back afterwards, or discarded if that fails.
//
// With L3ISO_TEST_HOST_FORWARDING=1 the namespace starts with IPv4 and
// IPv6 forwarding on, as on a host that forwards: a new namespace inherits
// the host's net.ipv4.ip_forward (and, with net.core.devconf_inherit_init_net
// = 1, its IPv6 forwarding), so tests must compare with what their namespace
// started with, never assume 0.
func NewNetns(t testing.TB) (path string) {
	t.Helper()
	name := randomName("l3t-")
	type result struct {
		path string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		defer orig.Close()

		// NewNamed switches this thread into the new namespace (even
		// when it fails afterwards).
		ns, err := netns.NewNamed(name)
		if err != nil && !errors.Is(err, os.ErrExist) {
			// NewNamed may leave the mount point file behind.
			os.Remove(filepath.Join("/run/netns", name))
		}
		if err == nil {
			ns.Close()
			err = setLoopbackUp()
			if err == nil && truthy(os.Getenv("L3ISO_TEST_HOST_FORWARDING")) {
				err = setForwarding()
			}
			if err != nil {
				netns.DeleteNamed(name)
			}
		}
		if serr := netns.Set(orig); serr != nil {
			// Leave the thread locked: it dies with this goroutine
			// instead of running other goroutines in the wrong netns.
			res <- result{err: errors.Join(err, fmt.Errorf("switch thread back to the test's netns: %w", serr))}
			return
		}
		runtime.UnlockOSThread()
		res <- result{path: filepath.Join("/run/netns", name), err: err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("sockprobe: create netns %s: %v", name, r.err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("sockprobe: delete netns %s: %v", name, err)
		}
	})
	return r.path
}

// setForwarding turns IPv4 and IPv6 forwarding on in the calling thread's
// network namespace (/proc/sys/net is that of the task that opens it).
func setForwarding() error {
	for _, p := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/default/forwarding"} {
		if err := os.WriteFile("/proc/sys/net/"+p, []byte("1"), 0); err != nil {
			return fmt.Errorf("turn forwarding on: %w", err)
		}
	}
	return nil
}

// setLoopbackUp sets lo up in the calling thread's network namespace.
func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set lo up: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: set flags: %w", err)
	}
	return nil
}

// NewBPFFS mounts a bpf file system of t's own on a fresh t.TempDir() and
// returns its path: what a test pins there (an installation's --bpffs is a
// directory below it) is no other test's, and goes when it is unmounted.
// t.Cleanup unmounts it lazily (MNT_DETACH: a process still holding
// something in it cannot keep it mounted), before the directory is removed.
func NewBPFFS(t testing.TB) string {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, ""); err != nil {
		t.Fatalf("sockprobe: mount bpffs at %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("sockprobe: unmount bpffs %s: %v", mnt, err)
		}
	})
	return mnt
}

var cgroupMount = sync.OnceValues(findCgroupMount)

// CgroupMount returns where the cgroup v2 hierarchy is mounted, from
// /proc/self/mountinfo (for example /sys/fs/cgroup or, on hybrid hosts,
// /sys/fs/cgroup/unified).
func CgroupMount() (string, error) {
	return cgroupMount()
}

func findCgroupMount() (string, error) {
	m, err := mountinfo.Points(mountinfo.Self, "cgroup2")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	if len(m) == 0 {
		return "", errors.New("find cgroup v2 mount: no cgroup2 file system in /proc/self/mountinfo")
	}
	return m[0], nil
}

// NewCgroup creates a cgroup v2 directory "l3t-<random>" under parent (""
// means the root of the cgroup v2 mount) and returns its path. t.Cleanup
// kills every process left in it or below it (cgroup.kill) and removes it
// with all its child cgroups.
func NewCgroup(t testing.TB, parent string) string {
	t.Helper()
	if parent == "" {
		var err error
		if parent, err = CgroupMount(); err != nil {
			t.Fatalf("sockprobe: %v", err)
		}
	}
	dir := filepath.Join(parent, randomName("l3t-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("sockprobe: create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := RemoveCgroup(dir); err != nil {
			t.Errorf("sockprobe: %v", err)
		}
	})
	return dir
}

// RemoveCgroup kills every process in cgroup dir and its descendants and
// removes them all. A missing dir is not an error.
func RemoveCgroup(dir string) error {
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: kill its processes: %w", dir, err)
	}
	deadline := time.Now().Add(cgroupDrainTimeout)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		if strings.Contains(string(b), "populated 0") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: processes still there %v after cgroup.kill", dir, cgroupDrainTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return rmdirTree(dir, deadline)
}

// rmdirTree removes the cgroup dir after its child cgroups.
func rmdirTree(dir string, deadline time.Time) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := rmdirTree(filepath.Join(dir, e.Name()), deadline); err != nil {
				return err
			}
		}
	}
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newCmd builds a command that is born in o.CgroupDir and runs in
// o.NetnsPath. The returned func closes the cgroup descriptor; call it once
// the command has started.
func newCmd(ctx context.Context, o Options, name string, arg ...string) (*exec.Cmd, func(), error) {
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, nil, err
		}
		name = p
	}
	if len(o.Wrap) > 0 {
		arg = append(append(o.Wrap[1:len(o.Wrap):len(o.Wrap)], name), arg...)
		name = o.Wrap[0]
	}
	if o.NetnsPath != "" {
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			return nil, nil, fmt.Errorf("run in netns %s: nsenter (util-linux) is needed: %w", o.NetnsPath, err)
		}
		arg = append([]string{"--net=" + o.NetnsPath, "--", name}, arg...)
		name = nsenter
	}
	cmd := exec.CommandContext(ctx, name, arg...)
	closeFD := func() {}
	if o.CgroupDir != "" {
		fd, err := unix.Open(o.CgroupDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open cgroup %s: %w", o.CgroupDir, err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		closeFD = func() { unix.Close(fd) }
	}
	return cmd, closeFD, nil
}

// Command returns an exec.Cmd for name and arg that is born in
// o.CgroupDir and runs in network namespace o.NetnsPath (through nsenter).
// ctx kills it as in exec.CommandContext. The test fails if the command
// cannot be prepared.
func Command(ctx context.Context, t testing.TB, o Options, name string, arg ...string) *exec.Cmd {
	t.Helper()
	cmd, closeFD, err := newCmd(ctx, o, name, arg...)
	if err != nil {
		t.Fatalf("sockprobe: prepare %s: %v", name, err)
	}
	t.Cleanup(closeFD)
	return cmd
}

// Python runs `python3 -c script args...` in o's cgroup and network
// namespace, a non-Go client for tests, and returns its stdout. It stops
// it after 10 s. A failing script is returned as an error that contains
// its stderr; a missing python3 fails the test.
func Python(t testing.TB, o Options, script string, args ...string) (stdout string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	cmd, closeFD, err := newCmd(ctx, o, "python3", append([]string{"-c", script}, args...)...)
	if err != nil {
		t.Fatalf("sockprobe: prepare python3: %v", err)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Start()
	closeFD()
	if err != nil {
		t.Fatalf("sockprobe: start python3 (%s): %v", o, err)
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		err = fmt.Errorf("python3 killed after %v: %w", pythonTimeout, ctx.Err())
	}
	if err != nil {
		return out.String(), fmt.Errorf("python3 -c script (%s): %w; stderr: %s", o, err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}
