package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// TestBackstopsFollowLivePolicy: the skb backstops judge a live
// socket's packets by the policy in force now, not by the one its socket
// was made, bound or connected under:
//
//   - apply moves web's address to db (a generation switch): web's socket,
//     still bound to and connected from the address, may neither send
//     from it (egress_dropped_spoof: connected, it runs no sendmsg hook)
//     nor receive on it (ingress_dropped_foreign);
//   - web is deleted while one of its sockets lives on in another process
//     (here: the test, which took the descriptor with pidfd_getfd), and a
//     new container gets its address (l3_conts changes in the active
//     generation): the socket, now nobody's — a host socket — must not
//     receive the new owner's traffic (host_ingress_dropped).
//
// Whatever remembers a socket's container between its packets (a cache
// of the lookup; bench/README.md, "Why") must forget it on both changes.
// The agents that send are pinned to CPU 0, so that a per-CPU memory of
// the packets before a change would meet the packets after it. Checked
// against such a cache that did not forget: both subtests fail.
func TestBackstopsFollowLivePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const before = `
containers:
  web:
    addresses: [10.77.0.1/24]
  db:
    addresses: [10.77.0.2/24]
`
	const moved = `
containers:
  web:
    addresses: [10.77.0.3/24]
  db:
    addresses: [10.77.0.2/24, 10.77.0.1/24]
`
	webIP, dbIP := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")

	t.Run("apply-moves-the-address", func(t *testing.T) {
		e.apply(before, "--prune")
		web, db := e.agent("web"), e.agent("db")
		pinAgent(t, web, 0)
		pinAgent(t, db, 0)
		dbSock := db.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err := db.Bind(dbSock, netip.AddrPortFrom(dbIP, 7701)); err != nil {
			t.Fatal(err)
		}
		webSock := web.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err := web.Bind(webSock, netip.AddrPortFrom(webIP, 7702)); err != nil {
			t.Fatal(err)
		}
		if err := web.Connect(webSock, netip.AddrPortFrom(dbIP, 7701)); err != nil {
			t.Fatal(err)
		}
		// Both ways, a few times, before the change.
		for i := range 5 {
			if err := web.SendTo(webSock, netip.AddrPort{}, []byte("to db")); err != nil {
				t.Fatalf("web → db, before the change: %v", err)
			}
			if _, _, _, err := db.RecvFrom(dbSock, 2*time.Second); err != nil {
				t.Fatalf("db did not receive web's datagram %d before the change: %v", i, err)
			}
			if err := db.SendTo(dbSock, netip.AddrPortFrom(webIP, 7702), []byte("to web")); err != nil {
				t.Fatalf("db → web, before the change: %v", err)
			}
			if _, _, _, err := web.RecvFrom(webSock, 2*time.Second); err != nil {
				t.Fatalf("web did not receive db's datagram %d before the change: %v", i, err)
			}
		}

		e.apply(moved, "--prune")
		c0 := e.counters()["web"]
		// web's socket is still bound to and connected from 10.77.0.1,
		// db's now. Connected, it runs no sendmsg hook: the egress
		// backstop alone stops it.
		if err := web.SendTo(webSock, netip.AddrPort{}, []byte("spoof")); err != nil && err != unix.EPERM {
			t.Fatalf("web → db from the address it lost: %v, want EPERM or a silent drop", err)
		}
		if b, from, _, err := db.RecvFrom(dbSock, 500*time.Millisecond); err == nil {
			t.Errorf("db received %q from %s: web sent from an address it no longer owns", b, from)
		}
		if err := db.SendTo(dbSock, netip.AddrPortFrom(webIP, 7702), []byte("for db's own address")); err != nil {
			t.Fatalf("db → its own 10.77.0.1: %v", err)
		}
		if b, _, _, err := web.RecvFrom(webSock, 500*time.Millisecond); err == nil {
			t.Errorf("web's socket received %q on 10.77.0.1, db's address since the apply", b)
		}
		c1 := e.counters()["web"]
		for _, k := range []string{"egress_dropped_spoof", "ingress_dropped_foreign"} {
			if c1[k] != c0[k]+1 {
				t.Errorf("web's %s went from %d to %d over the change, want one more", k, c0[k], c1[k])
			}
		}
	})

	t.Run("delete-and-readd-the-address", func(t *testing.T) {
		e.apply(before, "--prune")
		web, db := e.agent("web"), e.agent("db")
		pinAgent(t, db, 0)
		dbSock := db.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		webSock := web.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err := web.Bind(webSock, netip.AddrPortFrom(webIP, 7703)); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := db.SendTo(dbSock, netip.AddrPortFrom(webIP, 7703), []byte("to web")); err != nil {
				t.Fatalf("db → web: %v", err)
			}
			if _, _, _, err := web.RecvFrom(webSock, 2*time.Second); err != nil {
				t.Fatalf("web did not receive db's datagram %d: %v", i, err)
			}
		}
		// The socket outlives web's processes in this process.
		held := takeSocket(t, web.Pid(), netip.AddrPortFrom(webIP, 7703))
		e.mustRun("container", "del", "web")
		e.mustRun("container", "add", "new", "--addr", "10.77.0.1/24")
		hostDrops := e.counters()["(host)"]["host_ingress_dropped"]
		if err := db.SendTo(dbSock, netip.AddrPortFrom(webIP, 7703), []byte("for new")); err != nil {
			t.Fatalf("db → new's 10.77.0.1: %v", err)
		}
		// Nonblocking, as the agent made it: wait a little, then look.
		time.Sleep(300 * time.Millisecond)
		b := make([]byte, 64)
		if n, _, err := unix.Recvfrom(held, b, unix.MSG_DONTWAIT); err == nil {
			t.Errorf("deleted web's socket received %q on 10.77.0.1, new's address", b[:n])
		}
		if got := e.counters()["(host)"]["host_ingress_dropped"]; got != hostDrops+1 {
			t.Errorf("host_ingress_dropped went from %d to %d, want one more: the orphaned socket is a host socket", hostDrops, got)
		}
		e.mustRun("container", "del", "new")
	})
}

// pinAgent binds every thread of agent a to CPU cpu.
func pinAgent(t *testing.T, a *sockprobe.Agent, cpu int) {
	t.Helper()
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(a.Pid()), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			t.Fatalf("pin thread %d of agent %d to CPU %d: %v", tid, a.Pid(), cpu, err)
		}
	}
}

// takeSocket duplicates into this process (pidfd_getfd) the socket of
// process pid bound to at; the test's cleanup closes it.
func takeSocket(t *testing.T, pid int, at netip.AddrPort) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fds {
		n, _ := strconv.Atoi(f.Name())
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue
		}
		if sa, err := unix.Getsockname(fd); err == nil {
			if in4, ok := sa.(*unix.SockaddrInet4); ok && netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) == at {
				t.Cleanup(func() { unix.Close(fd) })
				return fd
			}
		}
		unix.Close(fd)
	}
	t.Fatalf("process %d has no socket bound to %s", pid, at)
	return -1
}
