package e2e

// Rule 3 across the two modes: a netns container reaches a shared
// container's wildcard listener as a host on the uplink does. Its packets
// come to the host stack through the container's host-side veth (direct:
// l3_tc_veth's FIB lookup hands them up; routed and bridge: the kernel
// does), where nothing else would find the listener — it holds a shadow
// port (docs/ARCHITECTURE.md, "Sharing a port").

import (
	"bytes"
	byteorder "encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
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

// udpRoundTrip sends size bytes from a connected UDP socket of client to
// dst: server's socket sid must get them whole, from an address want, and
// its reply of the same size must reach the client's connected socket —
// so it comes from dst, not from a shadow port.
func udpRoundTrip(t *testing.T, client, server *sockprobe.Agent, sid int, dst netip.AddrPort, want netip.Addr, size int) {
	t.Helper()
	id := client.Socket(family(dst.Addr()), unix.SOCK_DGRAM, 0)
	defer client.Close(id)
	if err := client.Connect(id, dst); err != nil {
		t.Fatal(err)
	}
	ping, pong := bytes.Repeat([]byte("p"), size), bytes.Repeat([]byte("P"), size)
	if err := client.Write(id, ping); err != nil {
		t.Fatal(err)
	}
	b, from, _, err := server.RecvFrom(sid, 3*time.Second)
	if err != nil || !bytes.Equal(b, ping) {
		t.Fatalf("the wildcard UDP socket at %v got %d bytes (want %d), %v", dst, len(b), size, err)
	}
	if from.Addr() != want {
		t.Errorf("the datagram to %v came from %v, want from %v", dst, from, want)
	}
	if err := server.SendTo(sid, from, pong); err != nil {
		t.Fatal(err)
	}
	if b, err := client.Read(id, 3*time.Second); err != nil || !bytes.Equal(b, pong) {
		t.Errorf("the client's connected socket got %d bytes (want %d), %v: the reply must come from %v", len(b), size, err, dst)
	}
}

// TestNetnsToSharedWildcard: in each delivery, a netns container's TCP
// connection and UDP datagrams (one fragmented) to a shared container's
// address reach that container's wildcard listener — not another shared container's on the
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

					for _, size := range []int{4, 4000} {
						// 4,000 bytes: fragmented by the container's
						// stack (the veth's MTU is 1,500), the reply by
						// the host's.
						t.Run(fmt.Sprintf("udp-%d", size), func(t *testing.T) {
							udpRoundTrip(t, inc, ins, lis["s"][1], netip.AddrPortFrom(f.dst, udpPort), f.src, size)
							for who, a := range others {
								if b, from, _, err := a.RecvFrom(lis[who][1], 200*time.Millisecond); err == nil {
									t.Errorf("%s's UDP socket got %d bytes from %v, meant for s", who, len(b), from)
								}
							}
						})
					}

					if f.fam == unix.AF_INET6 {
						// s's ::1 is its private loopback on the host,
						// an address a netns container can route to
						// (its 127/8 never leaves it). Its sockets
						// there are s's alone (rule 5).
						t.Run("private-loopback", func(t *testing.T) {
							lo := maps.Loopback6(n.idOf(s))
							l := listen(t, ins, tcp6, "[::1]:7612")
							defer ins.Close(l)
							u := listen(t, ins, udp6, "[::1]:7613")
							defer ins.Close(u)
							id := inc.Socket(f.fam, unix.SOCK_STREAM, 0)
							err := inc.Connect(id, netip.AddrPortFrom(lo, 7612))
							inc.Close(id)
							if _, peer, aerr := ins.Accept(l, 200*time.Millisecond); err == nil || aerr == nil {
								t.Errorf("c's connect to s's private loopback %v: %v; s accepted from %v (%v): want neither", lo, err, peer, aerr)
							}
							id = inc.Socket(f.fam, unix.SOCK_DGRAM, 0)
							serr := inc.SendTo(id, netip.AddrPortFrom(lo, 7613), []byte("x"))
							inc.Close(id)
							if b, from, _, err := ins.RecvFrom(u, 500*time.Millisecond); err == nil {
								t.Errorf("s's socket on ::1 got %q from %v, sent by c to %v (send: %v)", b, from, lo, serr)
							}
							// The socket hooks refuse those (ENETUNREACH);
							// a raw socket's datagram runs none of them
							// and goes through the veth.
							raw := inc.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_UDP)
							defer inc.Close(raw)
							if err := inc.SetsockoptInt(raw, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6); err != nil {
								t.Fatal(err)
							}
							// The control: the same datagram to s's own
							// address arrives.
							ctl := listen(t, ins, udp6, "[fd79::1]:7613")
							defer ins.Close(ctl)
							udp := byteorder.BigEndian.AppendUint16(nil, 5555) // source port
							udp = byteorder.BigEndian.AppendUint16(udp, 7613)
							udp = append(udp, 0, 9, 0, 0, 'r') // length, checksum (the kernel's: IPV6_CHECKSUM), data
							if err := inc.SendTo(raw, netip.AddrPortFrom(f.dst, 0), udp); err != nil {
								t.Fatal(err)
							}
							if b, _, _, err := ins.RecvFrom(ctl, 3*time.Second); err != nil || string(b) != "r" {
								t.Fatalf("the control: s's socket at %v:7613 got %q, %v from c's raw socket", f.dst, b, err)
							}
							before := n.counters()[s]["ingress_dropped_foreign"]
							rerr := inc.SendTo(raw, netip.AddrPortFrom(lo, 0), udp)
							if b, from, _, err := ins.RecvFrom(u, 500*time.Millisecond); err == nil {
								t.Errorf("s's socket on ::1 got %q from %v, a raw datagram of c to %v (send: %v)", b, from, lo, rerr)
							}
							if after := n.counters()[s]["ingress_dropped_foreign"]; after != before+1 {
								t.Errorf("s's ingress_dropped_foreign %d -> %d after c's raw datagram to %v (send: %v): want one more", before, after, lo, rerr)
							}
						})
					}

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
