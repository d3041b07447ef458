package e2e

// Rule 3 for datagrams that arrive in fragments: only the first fragment
// has ports, and the kernel reassembles the datagram after TC, so the
// wildcard socket a datagram is for is found when the kernel looks for it
// (l3_sk_lookup, from l3_socks; steer.h).

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// TestFragmentedToWildcard: a peer on the uplink sends a shared
// container's wildcard UDP socket datagrams larger than the uplink's MTU
// (IPv4 and IPv6, the IPv6 ones with a fragment header): the socket gets
// each whole, and its reply of the same size reaches the peer's connected
// socket — with and without a host wildcard socket on the port. Another
// shared container listening on the same port, and the host, get nothing.
// A small datagram goes the usual way (bpf_sk_assign) around them.
func TestFragmentedToWildcard(t *testing.T) {
	t.Parallel()
	const port = 7620
	n := newNetEnv(t, "direct")
	s, s2 := n.name("s"), n.name("s2")
	n.names = append(n.names, s, s2)
	n.mustRun("container", "add", s, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
	n.mustRun("container", "add", s2, "--addr", "10.79.0.2/24", "--addr", "fd79::2/64")
	ins, ins2, host, out := n.agent(s), n.agent(s2), n.agent(""), n.out()
	for _, f := range []struct {
		name      string
		fam       int
		dst, peer netip.Addr
	}{
		{"ipv4", unix.AF_INET, netip.MustParseAddr("10.79.0.1"), outside4},
		{"ipv6", unix.AF_INET6, netip.MustParseAddr("fd79::1"), outside6},
	} {
		t.Run(f.name, func(t *testing.T) {
			sid := wildListener(t, ins, unix.SOCK_DGRAM, f.fam, port)
			defer ins.Close(sid)
			others := map[string]*sockprobe.Agent{"s2": ins2}
			oth := map[string]int{"s2": wildListener(t, ins2, unix.SOCK_DGRAM, f.fam, port)}
			defer ins2.Close(oth["s2"])
			// Without a host socket on the port l3_sk_lookup has
			// nothing to refuse there, and with one it does.
			for _, withHost := range []bool{false, true} {
				if withHost {
					others["host"] = host
					oth["host"] = wildListener(t, host, unix.SOCK_DGRAM, f.fam, port)
					defer host.Close(oth["host"])
				}
				for _, size := range []int{4000, 4, 60000} {
					t.Run(fmt.Sprintf("host-socket=%v/%d", withHost, size), func(t *testing.T) {
						udpRoundTrip(t, out, ins, sid, netip.AddrPortFrom(f.dst, port), f.peer, size)
					})
				}
			}
			for who, a := range others {
				if b, from, _, err := a.RecvFrom(oth[who], 200*time.Millisecond); err == nil {
					t.Errorf("%s's wildcard socket got %d bytes from %v, meant for s", who, len(b), from)
				}
			}
		})
	}
}
