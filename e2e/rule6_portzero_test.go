package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// TestListenPortZero: a UDP wildcard bind to port 0 listens on the port
// the kernel chose — it is registered once the bind is done (post_bind) —
// and a bind the kernel refuses registers nothing. Shared containers
// (IPv4 broadcast, IPv6 multicast) and netns containers (IPv4 broadcast).
func TestListenPortZero(t *testing.T) {
	t.Parallel()
	t.Run("shared", func(t *testing.T) {
		g := newGroupEnv(t)
		checkPortZero(t, g, "10.79.0.255")

		// IPv6: c1's socket on [::]:0 joins a group; c3's does not.
		s1 := udpBound(t, g.agents[0], unix.AF_INET6, 0)
		defer g.agents[0].Close(s1)
		p6 := mustPort(t, g.agents[0], s1)
		if err := g.agents[0].JoinGroup(s1, group6, 0); err != nil {
			t.Fatal(err)
		}
		s3 := udpBound(t, g.agents[2], unix.AF_INET6, p6)
		defer g.agents[2].Close(s3)
		o := g.out.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		defer g.out.Close(o)
		const n = 4
		sendN(t, g.out, o, netip.AddrPortFrom(group6, p6), n)
		if got := drain(t, "c1", g.agents[0], s1, outside6, group6); got != n {
			t.Errorf("c1 (joined %v on port 0 → %d) got %d of %d", group6, p6, got, n)
		}
		if got := drain(t, "c3", g.agents[2], s3, netip.Addr{}, netip.Addr{}); got != 0 {
			t.Errorf("c3 (not joined) got %d", got)
		}
	})
	t.Run("netns", func(t *testing.T) {
		checkPortZero(t, newNetnsGroupEnv(t), "10.78.0.255")
	})
}

// checkPortZero: the first container listens on port 0 (P, the kernel's
// choice), the second binds P itself, the others only have their socket
// on otherPort; a broadcast to P from the outside reaches the first two
// once per datagram. Then a bind to a port the third container already
// holds fails, and the registry still counts one socket there.
func checkPortZero(t *testing.T, g *groupEnv, bcast string) {
	t.Helper()
	const n = 4
	socks, others := g.bindAll(t, unix.AF_INET, 0)
	defer g.closeAll(&socks, &others)
	socks[0] = udpBound(t, g.agents[0], unix.AF_INET, 0)
	p := mustPort(t, g.agents[0], socks[0])
	socks[1] = udpBound(t, g.agents[1], unix.AF_INET, p)

	var mine []listenerJSON
	for _, l := range g.listeners(t) {
		if l.Port == p {
			mine = append(mine, l)
		}
	}
	if len(mine) != 2 || mine[0].Group != "broadcast" || mine[1].Group != "broadcast" {
		t.Errorf("registry on port %d (c1's port 0): %+v, want c1 and c2 as broadcast listeners", p, mine)
	}

	o := g.out.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	defer g.out.Close(o)
	if err := g.out.SetBroadcast(o, true); err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddr(bcast)
	sendN(t, g.out, o, netip.AddrPortFrom(dst, p), n)
	g.expect(t, fmt.Sprintf("outside → %v:%d", dst, p), socks, others, [5]int{n, n, 0, 0, 0}, outside4, dst)

	// A second wildcard bind to c3's otherPort: the kernel refuses it
	// (shared: the address is c3's, rewritten; netns: its own stack), and
	// it must not be counted as a listener.
	x := g.agents[2].Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	defer g.agents[2].Close(x)
	err := g.agents[2].Bind(x, netip.AddrPortFrom(netip.IPv4Unspecified(), otherPort))
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second bind to %d in c3: %v, want EADDRINUSE", otherPort, err)
	}
	var c3 []listenerJSON
	for _, l := range g.listeners(t) {
		if l.Container == g.names[2] && l.Port == otherPort {
			c3 = append(c3, l)
		}
	}
	if len(c3) != 1 || c3[0].Sockets != 1 {
		t.Errorf("c3 on %d after a refused bind: %+v, want one entry with 1 socket", otherPort, c3)
	}
}

// mustPort is the port socket id is bound to.
func mustPort(t *testing.T, a *sockprobe.Agent, id int) uint16 {
	t.Helper()
	la, err := a.SockName(id)
	if err != nil || la.Port() == 0 {
		t.Fatalf("getsockname: %v, %v", la, err)
	}
	return la.Port()
}
