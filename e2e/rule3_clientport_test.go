package e2e

// Rule 3 and a client's port: a shared container's wildcard UDP socket
// holds a shadow, so the port it asked for stays free in the kernel's
// table, and a client socket of the same container may be given it.

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestClientOnWildcardPort: the kernel gives a container's connected UDP
// client the port of the container's own wildcard UDP socket (forced here
// with ip_local_port_range); the peer's replies reach the client, not the
// wildcard socket (steer.h, udp_flow_socket). IPv4 and IPv6.
func TestClientOnWildcardPort(t *testing.T) {
	t.Parallel()
	const port, peerPort = 40123, 7630
	n := newNetEnv(t, "direct")
	s := n.name("s")
	n.names = append(n.names, s)
	n.mustRun("container", "add", s, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
	in, out := n.agent(s), n.out()
	rangeWas := strings.Join(strings.Fields(n.sysctl("net/ipv4/ip_local_port_range")), " ")
	for _, f := range []struct {
		name      string
		src, peer netip.Addr
	}{
		{"ipv4", netip.MustParseAddr("10.79.0.1"), outside4},
		{"ipv6", netip.MustParseAddr("fd79::1"), outside6},
	} {
		t.Run(f.name, func(t *testing.T) {
			fam := family(f.peer)
			w := wildListener(t, in, unix.SOCK_DGRAM, fam, port)
			defer in.Close(w)
			srv := out.Socket(fam, unix.SOCK_DGRAM, 0)
			defer out.Close(srv)
			if err := out.Bind(srv, netip.AddrPortFrom(f.peer, peerPort)); err != nil {
				t.Fatal(err)
			}
			// The wildcard socket's shadow is in the usual range; the
			// client's port is the one the wildcard socket asked for.
			c := in.Socket(fam, unix.SOCK_DGRAM, 0)
			defer in.Close(c)
			n.setSysctl("net.ipv4.ip_local_port_range", strconv.Itoa(port)+" "+strconv.Itoa(port))
			err := in.Connect(c, netip.AddrPortFrom(f.peer, peerPort))
			n.setSysctl("net.ipv4.ip_local_port_range", rangeWas)
			if err != nil {
				t.Fatal(err)
			}
			if la, err := in.SockName(c); err != nil || la != netip.AddrPortFrom(f.src, port) {
				t.Fatalf("the client is at %v (%v); the test needs the kernel to give it %v:%d", la, err, f.src, port)
			}
			if err := in.Write(c, []byte("query")); err != nil {
				t.Fatal(err)
			}
			_, from, _, err := out.RecvFrom(srv, 3*time.Second)
			if err != nil || from != netip.AddrPortFrom(f.src, port) {
				t.Fatalf("the peer got the query from %v, %v; want from %v:%d", from, err, f.src, port)
			}
			if err := out.SendTo(srv, from, []byte("answer")); err != nil {
				t.Fatal(err)
			}
			if b, err := in.Read(c, 3*time.Second); err != nil || !bytes.Equal(b, []byte("answer")) {
				t.Errorf("the client got %q, %v: its answer", b, err)
			}
			if b, from, _, err := in.RecvFrom(w, 200*time.Millisecond); err == nil {
				t.Errorf("the wildcard socket on the port got %q from %v: the client's answer", b, from)
			}
		})
	}
}
