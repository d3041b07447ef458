package e2e

// IPv6 extension headers before the transport header: steering
// (l4_of, steer.h) and the skb backstops (sock.c, parse) must find the
// ports behind them, or a shared container's listener holding a shadow
// port is never found and a port-range owner's packets are dropped as
// foreign.

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// dstOpts is a destination options header with one PadN option (8 bytes):
// with IPV6_DSTOPTS, the kernel puts it in every packet of the socket.
var dstOpts = []byte{0, 0, 1, 4, 0, 0, 0, 0}

// withDstOpts opens a socket of type typ in agent a that sends a
// destination options header in every packet.
func withDstOpts(t *testing.T, a *sockprobe.Agent, typ int) int {
	t.Helper()
	id := a.Socket(unix.AF_INET6, typ, 0)
	if err := a.SetsockoptRaw(id, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, dstOpts); err != nil {
		t.Fatalf("IPV6_DSTOPTS: %v", err)
	}
	return id
}

// TestIPv6ExtensionHeaders: a peer on the uplink whose sockets put a
// destination options header in every packet reaches a shared container's
// wildcard TCP listener and UDP socket (steering walks the header) and a
// port-range owner's sockets (its backstop reads the ports behind the
// header, on the way in and, for a reply with the header, on the way out).
func TestIPv6ExtensionHeaders(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	s, p := n.name("s"), n.name("p")
	n.mustRun("container", "add", s, "--addr", "fd79::1/64")
	n.mustRun("container", "add", p, "--addr", "[fd79::5]:8000-8099/tcp", "--addr", "[fd79::5]:8000-8099/udp")
	ins, inp, out := n.agent(s), n.agent(p), n.out()
	sAddr, pAddr := netip.MustParseAddr("fd79::1"), netip.MustParseAddr("fd79::5")

	tcpTo := func(t *testing.T, a *sockprobe.Agent, lid int, dst netip.AddrPort) {
		t.Helper()
		id := withDstOpts(t, out, unix.SOCK_STREAM)
		defer out.Close(id)
		tcpExchange(t, out, id, a, lid, dst, outside6)
	}
	// udpTo sends from a connected socket with the header to dst: socket
	// sid of a must get it; its reply (with the header too, when sid has
	// it) must reach the client from dst.
	udpTo := func(t *testing.T, a *sockprobe.Agent, sid int, dst netip.AddrPort) {
		t.Helper()
		id := withDstOpts(t, out, unix.SOCK_DGRAM)
		defer out.Close(id)
		if err := out.Connect(id, dst); err != nil {
			t.Fatal(err)
		}
		if err := out.Write(id, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		b, from, _, err := a.RecvFrom(sid, 3*time.Second)
		if err != nil || string(b) != "ping" || from.Addr() != outside6 {
			t.Fatalf("the socket at %v got %q from %v, %v; want ping from %v", dst, b, from, err, outside6)
		}
		if err := a.SendTo(sid, from, []byte("pong")); err != nil {
			t.Fatal(err)
		}
		if b, err := out.Read(id, 3*time.Second); err != nil || string(b) != "pong" {
			t.Errorf("the client got %q, %v; want the reply from %v", b, err, dst)
		}
	}

	t.Run("shared-wildcard-tcp", func(t *testing.T) {
		l := wildListener(t, ins, unix.SOCK_STREAM, unix.AF_INET6, 7631)
		defer ins.Close(l)
		tcpTo(t, ins, l, netip.AddrPortFrom(sAddr, 7631))
	})
	t.Run("shared-wildcard-udp", func(t *testing.T) {
		u := wildListener(t, ins, unix.SOCK_DGRAM, unix.AF_INET6, 7632)
		defer ins.Close(u)
		udpTo(t, ins, u, netip.AddrPortFrom(sAddr, 7632))
	})
	t.Run("port-range-tcp", func(t *testing.T) {
		l := listen(t, inp, tcp6, "[fd79::5]:8080")
		defer inp.Close(l)
		tcpTo(t, inp, l, netip.AddrPortFrom(pAddr, 8080))
	})
	t.Run("port-range-udp", func(t *testing.T) {
		// An address-bound UDP socket keeps its address: no steering,
		// only the backstops; its reply carries the header too.
		u := withDstOpts(t, inp, unix.SOCK_DGRAM)
		defer inp.Close(u)
		if err := inp.Bind(u, netip.AddrPortFrom(pAddr, 8081)); err != nil {
			t.Fatal(err)
		}
		udpTo(t, inp, u, netip.AddrPortFrom(pAddr, 8081))
	})
}
