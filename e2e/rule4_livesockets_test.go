package e2e

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// TestBackstopsFollowLivePolicy: the skb backstops judge a live UDP
// socket's packets, IPv4 and IPv6, by the policy in force now, not by the
// one its socket was made, bound or connected under:
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
// against such a cache: one that never forgets fails both subtests in
// both families; one that forgets on a generation switch only, the
// second.
func TestBackstopsFollowLivePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const before = `
containers:
  web:
    addresses: [10.77.0.1/24, fd77::1/64]
  db:
    addresses: [10.77.0.2/24, fd77::2/64]
`
	const moved = `
containers:
  web:
    addresses: [10.77.0.3/24, fd77::3/64]
  db:
    addresses: [10.77.0.2/24, 10.77.0.1/24, fd77::2/64, fd77::1/64]
`
	type family struct {
		name      string
		af        int
		web, db   netip.Addr // web's address (db's, or new's, after the change), db's
		port      uint16     // db's port; web binds port+1 (first subtest) and port+2 (second)
		newAddrAs string     // the address `container add new` gives it
	}
	fams := []family{
		{"v4", unix.AF_INET, netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2"), 7701, "10.77.0.1/24"},
		{"v6", unix.AF_INET6, netip.MustParseAddr("fd77::1"), netip.MustParseAddr("fd77::2"), 7711, "fd77::1/64"},
	}
	ap := netip.AddrPortFrom

	t.Run("apply-moves-the-address", func(t *testing.T) {
		e.apply(before, "--prune")
		web, db := e.agent("web"), e.agent("db")
		pinAgent(t, web, 0)
		pinAgent(t, db, 0)
		dbSock, webSock := map[string]int{}, map[string]int{}
		for _, f := range fams {
			dbSock[f.name] = db.Socket(f.af, unix.SOCK_DGRAM, 0)
			if err := db.Bind(dbSock[f.name], ap(f.db, f.port)); err != nil {
				t.Fatal(err)
			}
			webSock[f.name] = web.Socket(f.af, unix.SOCK_DGRAM, 0)
			if err := web.Bind(webSock[f.name], ap(f.web, f.port+1)); err != nil {
				t.Fatal(err)
			}
			if err := web.Connect(webSock[f.name], ap(f.db, f.port)); err != nil {
				t.Fatal(err)
			}
			// Both ways, a few times, before the change.
			for i := range 5 {
				if err := web.SendTo(webSock[f.name], netip.AddrPort{}, []byte("to db")); err != nil {
					t.Fatalf("%s: web → db, before the change: %v", f.name, err)
				}
				if _, _, _, err := db.RecvFrom(dbSock[f.name], 2*time.Second); err != nil {
					t.Fatalf("%s: db did not receive web's datagram %d before the change: %v", f.name, i, err)
				}
				if err := db.SendTo(dbSock[f.name], ap(f.web, f.port+1), []byte("to web")); err != nil {
					t.Fatalf("%s: db → web, before the change: %v", f.name, err)
				}
				if _, _, _, err := web.RecvFrom(webSock[f.name], 2*time.Second); err != nil {
					t.Fatalf("%s: web did not receive db's datagram %d before the change: %v", f.name, i, err)
				}
			}
		}

		e.apply(moved, "--prune")
		for _, f := range fams {
			c0 := e.counters()["web"]
			// web's socket is still bound to and connected from f.web,
			// db's now. Connected, it runs no sendmsg hook: the egress
			// backstop alone stops it. (IPv6 reports no error of the
			// output path.)
			if err := web.SendTo(webSock[f.name], netip.AddrPort{}, []byte("spoof")); err != nil && !errors.Is(err, unix.EPERM) {
				t.Fatalf("%s: web → db from the address it lost: %v, want EPERM or a silent drop", f.name, err)
			}
			if b, from, _, err := db.RecvFrom(dbSock[f.name], 500*time.Millisecond); err == nil {
				t.Errorf("%s: db received %q from %s: web sent from an address it no longer owns", f.name, b, from)
			}
			if err := db.SendTo(dbSock[f.name], ap(f.web, f.port+1), []byte("for db's own address")); err != nil {
				t.Fatalf("%s: db → its own %s: %v", f.name, f.web, err)
			}
			if b, _, _, err := web.RecvFrom(webSock[f.name], 500*time.Millisecond); err == nil {
				t.Errorf("%s: web's socket received %q on %s, db's address since the apply", f.name, b, f.web)
			}
			c1 := e.counters()["web"]
			for _, k := range []string{"egress_dropped_spoof", "ingress_dropped_foreign"} {
				if c1[k] != c0[k]+1 {
					t.Errorf("%s: web's %s went from %d to %d over the change, want one more", f.name, k, c0[k], c1[k])
				}
			}
		}
	})

	t.Run("delete-and-readd-the-address", func(t *testing.T) {
		e.apply(before, "--prune")
		web, db := e.agent("web"), e.agent("db")
		pinAgent(t, db, 0)
		dbSock := map[string]int{}
		for _, f := range fams {
			dbSock[f.name] = db.Socket(f.af, unix.SOCK_DGRAM, 0)
			webSock := web.Socket(f.af, unix.SOCK_DGRAM, 0)
			if err := web.Bind(webSock, ap(f.web, f.port+2)); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if err := db.SendTo(dbSock[f.name], ap(f.web, f.port+2), []byte("to web")); err != nil {
					t.Fatalf("%s: db → web: %v", f.name, err)
				}
				if _, _, _, err := web.RecvFrom(webSock, 2*time.Second); err != nil {
					t.Fatalf("%s: web did not receive db's datagram %d: %v", f.name, i, err)
				}
			}
		}
		// The sockets outlive web's processes in this process.
		held := map[string]int{}
		for _, f := range fams {
			held[f.name] = takeSocket(t, web.Pid(), ap(f.web, f.port+2))
		}
		e.mustRun("container", "del", "web")
		e.mustRun("container", "add", "new", "--addr", fams[0].newAddrAs, "--addr", fams[1].newAddrAs)
		for _, f := range fams {
			hostDrops := e.counters()["(host)"]["host_ingress_dropped"]
			if err := db.SendTo(dbSock[f.name], ap(f.web, f.port+2), []byte("for new")); err != nil {
				t.Fatalf("%s: db → new's %s: %v", f.name, f.web, err)
			}
			// Nonblocking, as the agent made it: wait a little, then look.
			time.Sleep(300 * time.Millisecond)
			b := make([]byte, 64)
			if n, _, err := unix.Recvfrom(held[f.name], b, unix.MSG_DONTWAIT); err == nil {
				t.Errorf("%s: deleted web's socket received %q on %s, new's address", f.name, b[:n], f.web)
			}
			if got := e.counters()["(host)"]["host_ingress_dropped"]; got != hostDrops+1 {
				t.Errorf("%s: host_ingress_dropped went from %d to %d, want one more: the orphaned socket is a host socket", f.name, hostDrops, got)
			}
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
		var got netip.AddrPort
		switch sa, _ := unix.Getsockname(fd); sa := sa.(type) {
		case *unix.SockaddrInet4:
			got = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			got = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		}
		if got == at {
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}
		unix.Close(fd)
	}
	t.Fatalf("process %d has no socket bound to %s", pid, at)
	return -1
}
