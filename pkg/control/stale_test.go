package control

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockdiag"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// TestCountHolding counts, from one read of l3_binds and the kernel's
// socket table, the sockets that hold each lost address, by container.
// (e2e's TestStaleSockets does it with real sockets.)
func TestCountHolding(t *testing.T) {
	ip := netip.MustParseAddr
	app := netip.MustParseAddrPort
	const cgWeb, cgDB, cgGone = 100, 200, 999
	binds := []maps.Bind{
		// web's TCP listener on .5:80, a SO_REUSEPORT group of 2, held
		// on the wildcard and a shadow port.
		{ID: 1, Proto: "tcp", Addr: ip("10.77.0.5"), Family: 4, Port: 80, SPort: 40001, Sockets: 2},
		// web's UDP socket on .5:53: the kernel holds .5:53 (in socks).
		{ID: 1, Proto: "udp", Addr: ip("10.77.0.5"), Family: 4, Port: 53, SAddr: ip("10.77.0.5"), SPort: 53, Sockets: 1},
		// web's wildcard listener: no address of its own.
		{ID: 1, Proto: "tcp", Family: 6, Port: 8080, SPort: 40002, Sockets: 1},
		// web's IPv6 listener on fd77::5.
		{ID: 1, Proto: "tcp", Addr: ip("fd77::5"), Family: 6, Port: 443, SPort: 40003, Sockets: 1},
		// db's listener on the shared IP .9.
		{ID: 2, Proto: "tcp", Addr: ip("10.77.0.9"), Family: 4, Port: 5432, SPort: 40004, Sockets: 1},
	}
	socks := []sockdiag.Socket{
		{Proto: unix.IPPROTO_UDP, State: sockdiag.StateClose, Local: app("10.77.0.5:53"), Remote: app("0.0.0.0:0"), Inode: 11, Cgroup: cgWeb},
		// An accepted connection on .5:80, listed twice (an MPTCP
		// connection's subflows share the file): one socket.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateEstablished, Local: app("10.77.0.5:80"), Remote: app("127.255.255.254:5000"), Inode: 12, Cgroup: cgWeb},
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateEstablished, Local: app("10.77.0.5:80"), Remote: app("127.255.255.254:5000"), Inode: 12, Cgroup: cgWeb},
		// Not live: TIME_WAIT, an orphan.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateTimeWait, Local: app("10.77.0.5:80"), Remote: app("127.255.255.254:5001")},
		// A socket whose cgroup is gone: web lost .5 alone, so it is web's.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateEstablished, Local: app("10.77.0.5:80"), Remote: app("127.255.255.254:5002"), Inode: 13, Cgroup: cgGone},
		// The shadow listeners themselves: the wildcard, not counted.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateListen, Local: app("0.0.0.0:40001"), Inode: 14, Cgroup: cgWeb},
		// web's connection on the address it keeps.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateEstablished, Local: app("10.77.0.1:80"), Remote: app("10.77.0.2:5000"), Inode: 15, Cgroup: cgWeb},
		// An IPv6 UDP socket on fd77::5.
		{Proto: unix.IPPROTO_UDP, State: sockdiag.StateClose, Local: app("[fd77::5]:53"), Inode: 16, Cgroup: cgWeb},
		// .9 is lost by web and db (each had ports of it): only their
		// own sockets count; one of no container counts for neither.
		{Proto: unix.IPPROTO_TCP, State: sockdiag.StateEstablished, Local: app("10.77.0.9:5432"), Remote: app("10.77.0.1:5000"), Inode: 17, Cgroup: cgDB},
		{Proto: unix.IPPROTO_UDP, State: sockdiag.StateClose, Local: app("10.77.0.9:7"), Inode: 18, Cgroup: cgGone},
		// A socket of another container on .5 (the host's, say): not web's.
		{Proto: unix.IPPROTO_UDP, State: sockdiag.StateClose, Local: app("10.77.0.5:99"), Inode: 19, Cgroup: 300},
	}
	of := func(cg uint64) uint32 {
		return map[uint64]uint32{cgWeb: 1, cgDB: 2, 300: 3}[cg]
	}
	lost := map[netip.Addr][]uint32{
		ip("10.77.0.5"): {1},
		ip("fd77::5"):   {1},
		ip("10.77.0.9"): {1, 2},
	}
	got := countHolding(lost, holds(binds, socks, of))
	want := map[staleKey]Stale{
		{1, ip("10.77.0.5")}: {Addr: ip("10.77.0.5"), Sockets: 5, TCPListening: 2, TCPConnected: 2, UDP: 1},
		{1, ip("fd77::5")}:   {Addr: ip("fd77::5"), Sockets: 2, TCPListening: 1, UDP: 1},
		{2, ip("10.77.0.9")}: {Addr: ip("10.77.0.9"), Sockets: 2, TCPListening: 1, TCPConnected: 1},
	}
	if len(got) != len(want) {
		t.Errorf("got %d counts, want %d", len(got), len(want))
	}
	for k, w := range want {
		if g := got[k]; g == nil || *g != w {
			t.Errorf("container %d, %s: %+v, want %+v", k.id, k.addr, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected count: container %d, %s: %+v", k.id, k.addr, g)
		}
	}

	// A container that goes loses its wildcard too.
	got = countHolding(map[netip.Addr][]uint32{netip.IPv6Unspecified(): {1}}, holds(binds, socks, of))
	if g := got[staleKey{1, netip.IPv6Unspecified()}]; len(got) != 1 || g == nil || g.TCPListening != 1 {
		t.Errorf("the wildcard of a container that goes: %v", got)
	}
}

// TestOwns: what status takes for a container's own.
func TestOwns(t *testing.T) {
	k := maps.Container{ID: 1, Spec: policy.Container{Name: "web"}}
	for _, s := range []string{"10.77.0.1/24", "10.77.0.9:5432/tcp", "fd77::1"} {
		a, err := policy.ParseAddress(s)
		if err != nil {
			t.Fatal(err)
		}
		k.Spec.Addresses = append(k.Spec.Addresses, a)
	}
	tcp, udp := uint8(unix.IPPROTO_TCP), uint8(unix.IPPROTO_UDP)
	for _, c := range []struct {
		proto  uint8
		local  string
		listen bool
		want   bool
	}{
		{tcp, "10.77.0.1:80", true, true},
		{udp, "10.77.0.255:67", false, true}, // its subnet's broadcast
		{tcp, "10.77.0.9:5432", true, true},
		{tcp, "10.77.0.9:80", true, false},    // not its port
		{udp, "10.77.0.9:5432", false, false}, // not its protocol
		{tcp, "10.77.0.9:40000", false, true}, // a connection: any local port
		{tcp, "[fd77::1]:443", false, true},   //
		{tcp, "10.77.0.5:80", true, false},    // not its address
		{udp, "[fd77::5]:53", false, false},   //
	} {
		h := hold{proto: c.proto, local: netip.MustParseAddrPort(c.local), listen: c.listen}
		if got := owns(k, h); got != c.want {
			t.Errorf("owns(%s %s, listen %v) = %v, want %v", map[uint8]string{tcp: "tcp", udp: "udp"}[c.proto], c.local, c.listen, got, c.want)
		}
	}
	for a, want := range map[string]bool{"10.77.0.5": true, "127.0.0.1": false, "127.128.0.1": false, "fd6c:3369:736f::1": false,
		"fe80::1": false, "239.1.1.1": false, "255.255.255.255": false, "0.0.0.0": false, "::": false} {
		if got := ownable(netip.MustParseAddr(a)); got != want {
			t.Errorf("ownable(%s) = %v, want %v", a, got, want)
		}
	}
}
