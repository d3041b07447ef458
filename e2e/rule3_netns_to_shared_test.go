package e2e

// Rule 3 across the two modes: a netns container reaches a shared
// container's wildcard listener as a host on the uplink does. Its packets
// come to the host stack through the container's host-side veth (direct:
// l3_tc_veth's FIB lookup hands them up; routed and bridge: the kernel
// does), where nothing else would find the listener — it holds a shadow
// port (docs/ARCHITECTURE.md, "Sharing a port").

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/veth"
)

// wildListener opens a socket of type typ and family fam in agent a bound
// to the wildcard address and port (IPv6: IPV6_V6ONLY, so that an IPv4
// listener can share the port), listening if it is TCP.
func wildListener(t *testing.T, a *sockprobe.Agent, typ, fam int, port uint16) int {
	t.Helper()
	id := a.Socket(fam, typ, 0)
	any := netip.IPv4Unspecified()
	if fam == unix.AF_INET6 {
		any = netip.IPv6Unspecified()
		if err := a.SetV6Only(id, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Bind(id, netip.AddrPortFrom(any, port)); err != nil {
		t.Fatalf("bind %v:%d: %v", any, port, err)
	}
	if typ == unix.SOCK_STREAM {
		if err := a.Listen(id); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// TestNetnsToSharedWildcard: in each delivery, a netns container's TCP
// connection and UDP datagrams to a shared container's address reach that
// container's wildcard listener — not another shared container's on the
// same port, not the host's — and a UDP reply comes from the port the
// client sent to, so the client's connected socket takes it (the shadow
// port would be refused: l3_tc_veth_out). A port nobody listens on is
// refused at once.
func TestNetnsToSharedWildcard(t *testing.T) {
	t.Parallel()
	const tcpPort, udpPort, closedPort = 7611, 7610, 7619
	for _, delivery := range []string{"direct", "routed", "bridge"} {
		t.Run(delivery, func(t *testing.T) {
			n := newNetEnv(t, delivery)
			s, s2 := n.name("s"), n.name("s2")
			n.names = append(n.names, s, s2)
			n.mustRun("container", "add", s, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
			n.mustRun("container", "add", s2, "--addr", "10.79.0.2/24", "--addr", "fd79::2/64")
			c := n.add("c", "10.78.0.3/24", "fd78::3/64")
			ins, ins2, host, inc := n.agent(s), n.agent(s2), n.agent(""), n.in(c)
			if delivery == "bridge" {
				// The bridge's program is the installation's: status
				// misses it, up puts it back (and the checks below need
				// it).
				pin := "links/tc-" + veth.BridgeName + "-ingress"
				n.detach(pin)
				n.expectProblem(pin, "detached")
				n.repaired(pin, "detached")
			}
			for _, f := range []struct {
				name     string
				fam      int
				dst, src netip.Addr
			}{
				{"ipv4", unix.AF_INET, netip.MustParseAddr("10.79.0.1"), netip.MustParseAddr("10.78.0.3")},
				{"ipv6", unix.AF_INET6, netip.MustParseAddr("fd79::1"), netip.MustParseAddr("fd78::3")},
			} {
				t.Run(f.name, func(t *testing.T) {
					// The same ports in s, in s2 and on the host.
					lis := map[string][2]int{}
					for who, a := range map[string]*sockprobe.Agent{"s": ins, "s2": ins2, "host": host} {
						lis[who] = [2]int{wildListener(t, a, unix.SOCK_STREAM, f.fam, tcpPort), wildListener(t, a, unix.SOCK_DGRAM, f.fam, udpPort)}
						defer a.Close(lis[who][0])
						defer a.Close(lis[who][1])
					}
					others := map[string]*sockprobe.Agent{"s2": ins2, "host": host}

					t.Run("tcp", func(t *testing.T) {
						id := inc.Socket(f.fam, unix.SOCK_STREAM, 0)
						defer inc.Close(id)
						if err := inc.Connect(id, netip.AddrPortFrom(f.dst, tcpPort)); err != nil {
							t.Fatalf("connect %v:%d: %v", f.dst, tcpPort, err)
						}
						aid, peer, err := ins.Accept(lis["s"][0], 3*time.Second)
						if err != nil {
							t.Fatalf("s's wildcard listener did not accept: %v", err)
						}
						defer ins.Close(aid)
						if peer.Addr() != f.src {
							t.Errorf("s accepted a connection from %v, want from %v", peer, f.src)
						}
						if err := inc.Write(id, []byte("ping")); err != nil {
							t.Fatal(err)
						}
						if b, err := ins.Read(aid, 3*time.Second); err != nil || string(b) != "ping" {
							t.Errorf("s read %q, %v", b, err)
						}
						for who, a := range others {
							if _, peer, err := a.Accept(lis[who][0], 200*time.Millisecond); err == nil {
								t.Errorf("%s's listener accepted a connection (from %v) for s", who, peer)
							}
						}
					})

					t.Run("udp", func(t *testing.T) {
						id := inc.Socket(f.fam, unix.SOCK_DGRAM, 0)
						defer inc.Close(id)
						if err := inc.Connect(id, netip.AddrPortFrom(f.dst, udpPort)); err != nil {
							t.Fatal(err)
						}
						if err := inc.Write(id, []byte("ping")); err != nil {
							t.Fatal(err)
						}
						b, from, _, err := ins.RecvFrom(lis["s"][1], 3*time.Second)
						if err != nil || string(b) != "ping" {
							t.Fatalf("s's wildcard UDP socket got %q, %v", b, err)
						}
						if from.Addr() != f.src {
							t.Errorf("s got the datagram from %v, want from %v", from, f.src)
						}
						if err := ins.SendTo(lis["s"][1], from, []byte("pong")); err != nil {
							t.Fatal(err)
						}
						if b, err := inc.Read(id, 3*time.Second); err != nil || string(b) != "pong" {
							t.Errorf("the client's connected socket got %q, %v: the reply must come from %v:%d", b, err, f.dst, udpPort)
						}
						for who, a := range others {
							if b, from, _, err := a.RecvFrom(lis[who][1], 200*time.Millisecond); err == nil {
								t.Errorf("%s's UDP socket got %q from %v, meant for s", who, b, from)
							}
						}
					})

					t.Run("closed-port", func(t *testing.T) {
						id := inc.Socket(f.fam, unix.SOCK_STREAM, 0)
						defer inc.Close(id)
						start := time.Now()
						if err := inc.Connect(id, netip.AddrPortFrom(f.dst, closedPort)); !errors.Is(err, unix.ECONNREFUSED) || time.Since(start) > time.Second {
							t.Errorf("connect to a closed port of s: %v after %v, want ECONNREFUSED at once", err, time.Since(start))
						}
					})
				})
			}
		})
	}
}
