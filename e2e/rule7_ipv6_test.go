package e2e

// Rule 7, IPv6 parity, where it is easy to get wrong (issue 13, as a
// namespace of its own would behave): the host reaching a shared
// container over IPv6 with an uplink. Most other tests run each case in
// both families.

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHostToContainerOverIPv6: with an uplink, the host reaches a shared
// container's IPv6 address over TCP and UDP, the replies come back, and a
// closed port is refused (the host talks from its own address on lo,
// which the reply reaches, not from ::1, which the container's loopback
// would take, nor from the uplink's).
func TestHostToContainerOverIPv6(t *testing.T) {
	// Not parallel: a refused connect must come back within a second.
	n := newNetEnv(t, "direct")
	name := n.name("s")
	n.names = append(n.names, name)
	n.mustRun("container", "add", name, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
	in := n.agent(name)
	host := n.agent("")
	u := listen(t, in, udp6, "[fd79::1]:7900")
	l := listen(t, in, tcp6, "[::]:7901")
	for _, fam := range []struct {
		af   int
		addr string
	}{{unix.AF_INET6, "fd79::1"}, {unix.AF_INET, "10.79.0.1"}} {
		h := host.Socket(fam.af, unix.SOCK_STREAM, 0)
		if err := host.Connect(h, netip.AddrPortFrom(netip.MustParseAddr(fam.addr), 7901)); err != nil {
			t.Errorf("host connect to %s:7901: %v", fam.addr, err)
		} else if _, _, err := in.Accept(l, 2*time.Second); err != nil {
			t.Errorf("the container's wildcard listener did not accept the host's connection to %s: %v", fam.addr, err)
		}
		host.Close(h)
		c := host.Socket(fam.af, unix.SOCK_STREAM, 0)
		start := time.Now()
		if err := host.Connect(c, netip.AddrPortFrom(netip.MustParseAddr(fam.addr), 9999)); !errors.Is(err, unix.ECONNREFUSED) || time.Since(start) > time.Second {
			t.Errorf("host connect to a closed port of %s: %v after %v, want ECONNREFUSED at once", fam.addr, err, time.Since(start))
		}
		host.Close(c)
	}
	h := host.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	defer host.Close(h)
	if err := host.SendTo(h, ap("[fd79::1]:7900"), []byte("ping")); err != nil {
		t.Fatal(err)
	}
	_, from, _, err := in.RecvFrom(u, 2*time.Second)
	if err != nil {
		t.Fatalf("the container did not get the host's datagram: %v", err)
	}
	if err := in.SendTo(u, from, []byte("pong")); err != nil {
		t.Fatalf("the container's reply to %s: %v", from, err)
	}
	if _, _, _, err := host.RecvFrom(h, 2*time.Second); err != nil {
		t.Errorf("the host did not get the container's reply (it sent from %s): %v", from, err)
	}
}
