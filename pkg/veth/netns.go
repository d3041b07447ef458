package veth

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Do runs fn on a locked OS thread that has entered the network namespace of
// container, and moves the thread back afterwards. Sockets fn opens stay in
// the container namespace after Do returns, so a server started inside Do can
// be used from any goroutine. Goroutines fn starts run in the host namespace;
// processes fn starts with os/exec run in the container namespace.
func Do(container string, fn func() error) error {
	if err := ValidateKey(container); err != nil {
		return err
	}
	return doPath(NetnsPath(container), fn)
}

// DoAt is Do for any network namespace bind-mounted at path (not only a
// container's): what fn does on its thread, and the processes it starts,
// happen in that namespace.
func DoAt(path string, fn func() error) error { return doPath(path, fn) }

// doPath is Do for the namespace bind-mounted at path.
func doPath(path string, fn func() error) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns %s %w", path, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	return inThread(func() error {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// nsHandle opens a netlink handle whose sockets live in the namespace
// bind-mounted at path (a netlink socket stays in the namespace it was
// created in).
func nsHandle(path string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := doPath(path, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("open netlink socket in netns %s: %w", path, err)
		}
		return nil
	})
	return h, err
}

// inThread runs fn on a dedicated goroutine locked to its OS thread; fn may
// switch that thread's network namespace. Afterwards the thread goes back to
// the namespace it started in and is unlocked for reuse. If going back fails
// the thread stays locked, and the Go runtime terminates it when the goroutine
// exits instead of letting other goroutines run in the wrong namespace; fn's
// work is done by then, so that is not reported as an error.
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the thread's netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			unix.Close(orig)
			errc <- ferr // the thread dies with this goroutine
			return
		}
		unix.Close(orig)
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

var (
	netnsDirMu    sync.Mutex
	netnsDirReady bool
)

// ensureNetnsDir prepares NetnsDir the way `ip netns add` does: the directory
// exists and is a shared mount point, so namespace bind mounts made here
// propagate to other mount namespaces, and so do their unmounts (a namespace
// is freed only when the last mount of it is gone).
func ensureNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if netnsDirReady {
		return nil
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself, then share it.
		if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s onto itself: %w", NetnsDir, err)
		}
		err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", NetnsDir, err)
	}
	netnsDirReady = true
	return nil
}
