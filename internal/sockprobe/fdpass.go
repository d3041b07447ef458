package sockprobe

// Handing a descriptor to a process that cannot open what it refers to:
// inside `l3iso exec` the host's cgroup paths do not exist (the only
// cgroup2 mount is the container's own cgroup), and exec closes every
// inherited descriptor above 2 on purpose. So the test process opens the
// object and passes the descriptor (SCM_RIGHTS) over a unix socket whose
// path the process can reach.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdPassTimeout bounds how long an offered descriptor waits for its taker.
const fdPassTimeout = 30 * time.Second

// OfferFD listens on a unix socket that any user may connect to, in a
// fresh directory under os.TempDir, and passes f (SCM_RIGHTS, with one
// byte) to the first process that connects. wait returns once it was
// passed, or why not; it (or else the test's cleanup) closes the
// listener and removes the directory.
// Python takes it with socket.recv_fds(s, 1, 1).
func OfferFD(t testing.TB, f *os.File) (path string, wait func() error) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sockprobe-fd-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("sockprobe: directory for a descriptor socket: %v", err)
	}
	path = filepath.Join(dir, "fd")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err == nil {
		err = os.Chmod(path, 0o777)
	}
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("sockprobe: descriptor socket: %v", err)
	}
	t.Cleanup(func() { // when the test fails before wait
		l.Close()
		os.RemoveAll(dir)
	})
	l.SetDeadline(time.Now().Add(fdPassTimeout))
	done := make(chan error, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			done <- fmt.Errorf("no process took the descriptor of %s: %w", f.Name(), err)
			return
		}
		defer c.Close()
		_, _, err = c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil)
		done <- err
	}()
	return path, func() error {
		l.Close() // an accept still waiting returns
		err := <-done
		os.RemoveAll(dir)
		return err
	}
}

// takeFD connects to the unix socket at path and returns the one
// descriptor passed on it (close-on-exec).
func takeFD(path string) (int, error) {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(s)
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: path}); err != nil {
		return -1, fmt.Errorf("connect to %s: %w", path, err)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(s, make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("receive on %s: %w", path, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("receive on %s: no descriptor (%v)", path, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, errors.Join(fmt.Errorf("receive on %s: want one descriptor, got %d", path, len(fds)), err)
	}
	return fds[0], nil
}
