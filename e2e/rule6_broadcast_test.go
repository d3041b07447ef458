package e2e

// End-to-end tests of broadcast and multicast delivery (docs/DESIGN.md
// rule 6, docs/multicast.md): an outside host on the uplink and five
// shared-mode containers on one subnet, of which two listen.

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

const (
	grpPort   = 7400 // the port the listeners listen on
	otherPort = 7401 // every container's second socket: nothing may arrive there
)

var (
	group4 = netip.MustParseAddr("239.1.1.1")
	group6 = netip.MustParseAddr("ff15::4c33")
)

// groupEnv is a netEnv with five shared-mode containers c1..c5 on
// 10.79.0.0/24 and fd79::/64, all allowed 239.1.0.0/16 and ff15::/16
// except c5, which may join nothing.
type groupEnv struct {
	*netEnv
	names  [5]string
	agents [5]*sockprobe.Agent
	out    *sockprobe.Agent
}

func newGroupEnv(t *testing.T) *groupEnv {
	n := newNetEnv(t, "direct")
	g := &groupEnv{netEnv: n}
	// The outside host sends 255.255.255.255 out of its only link.
	if out, err := exec.Command("ip", "-n", filepath.Base(n.outside), "route", "add", "default", "via", hostUp4.String()).CombinedOutput(); err != nil {
		t.Fatalf("outside default route: %v: %s", err, out)
	}
	for i := range g.names {
		name := n.name(fmt.Sprintf("c%d", i+1))
		args := []string{"container", "add", name, "--addr", fmt.Sprintf("10.79.0.%d/24", i+1), "--addr", fmt.Sprintf("fd79::%d/64", i+1)}
		if i < 4 {
			args = append(args, "--mcast", "239.1.0.0/16", "--mcast", "ff15::/16")
		}
		n.mustRun(args...)
		g.names[i] = name
		g.agents[i] = n.agent(name)
	}
	g.out = n.out()
	return g
}

// udpBound opens a UDP socket of family fam in agent a bound to the
// wildcard address and port (wildListener).
func udpBound(t *testing.T, a *sockprobe.Agent, fam int, port uint16) int {
	t.Helper()
	return wildListener(t, a, unix.SOCK_DGRAM, fam, port)
}

// drain counts what socket id receives until nothing comes for a while; it
// checks each datagram's sender and header destination.
func drain(t *testing.T, who string, a *sockprobe.Agent, id int, from, dst netip.Addr) int {
	t.Helper()
	n := 0
	for {
		_, src, d, err := a.RecvFrom(id, 300*time.Millisecond)
		if errors.Is(err, unix.ETIMEDOUT) {
			return n
		}
		if err != nil {
			t.Fatalf("%s: recvfrom: %v", who, err)
		}
		if from.IsValid() && src.Addr().Unmap() != from {
			t.Errorf("%s: datagram from %v, want from %v", who, src, from)
		}
		if dst.IsValid() && d.Unmap() != dst {
			t.Errorf("%s: IP_PKTINFO destination %v, want %v", who, d, dst)
		}
		n++
	}
}

// sendN sends n datagrams from socket id of agent a to dst.
func sendN(t *testing.T, a *sockprobe.Agent, id int, dst netip.AddrPort, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := a.SendTo(id, dst, []byte(fmt.Sprintf("dgram %d", i))); err != nil {
			t.Fatalf("send to %v: %v", dst, err)
		}
	}
}

// expect checks how many copies each container's listening (port grpPort)
// and other (otherPort) socket got.
func (g *groupEnv) expect(t *testing.T, what string, socks, others [5]int, want [5]int, from, dst netip.Addr) {
	t.Helper()
	for i, a := range g.agents {
		if socks[i] >= 0 {
			if got := drain(t, g.names[i], a, socks[i], from, dst); got != want[i] {
				t.Errorf("%s: c%d got %d copies, want %d", what, i+1, got, want[i])
			}
		}
		if got := drain(t, g.names[i], a, others[i], netip.Addr{}, netip.Addr{}); got != 0 {
			t.Errorf("%s: c%d got %d stray datagrams on port %d", what, i+1, got, otherPort)
		}
	}
}

// bindAll gives each container a UDP socket of family fam on otherPort and
// the first listening ones a socket on grpPort (-1 for the others), bound
// to the wildcard.
func (g *groupEnv) bindAll(t *testing.T, fam, listening int) (socks, others [5]int) {
	t.Helper()
	for i, a := range g.agents {
		socks[i] = -1
		if i < listening {
			socks[i] = udpBound(t, a, fam, grpPort)
		}
		others[i] = udpBound(t, a, fam, otherPort)
	}
	return socks, others
}

// closeAll closes what bindAll opened and is still open (socks[i] >= 0):
// defer it with the caller's arrays, which a test updates when it closes
// a socket itself.
func (g *groupEnv) closeAll(socks, others *[5]int) {
	for i, a := range g.agents {
		if socks[i] >= 0 {
			a.Close(socks[i])
		}
		a.Close(others[i])
	}
}

func (g *groupEnv) listeners(t *testing.T) []listenerJSON {
	t.Helper()
	return g.status().Listeners
}

// TestBroadcastShared: IPv4 broadcasts from the outside host and from a
// container reach exactly the two listening containers, once each.
func TestBroadcastShared(t *testing.T) {
	t.Parallel()
	g := newGroupEnv(t)
	const n = 5
	socks, others := g.bindAll(t, unix.AF_INET, 2)
	ls := g.listeners(t)
	if len(ls) != 2*1+5 { // c1, c2 on grpPort; everyone on otherPort
		t.Errorf("registry has %d entries, want 7: %+v", len(ls), ls)
	}

	o := g.out.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := g.out.SetBroadcast(o, true); err != nil {
		t.Fatal(err)
	}
	want := [5]int{n, n, 0, 0, 0}
	for _, dst := range []netip.Addr{netip.MustParseAddr("10.79.0.255"), netip.MustParseAddr("255.255.255.255")} {
		sendN(t, g.out, o, netip.AddrPortFrom(dst, grpPort), n)
		g.expect(t, "outside → "+dst.String(), socks, others, want, outside4, dst)
	}

	// From a container (not listening itself) to its subnet's broadcast.
	s := g.agents[3].Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := g.agents[3].SetBroadcast(s, true); err != nil {
		t.Fatal(err)
	}
	bc := netip.MustParseAddr("10.79.0.255")
	sendN(t, g.agents[3], s, netip.AddrPortFrom(bc, grpPort), n)
	g.expect(t, "c4 → "+bc.String(), socks, others, want, netip.MustParseAddr("10.79.0.4"), bc)

	// The limited broadcast from a container: its source lives on lo, so
	// the kernel sends it through lo (as for any address on no interface);
	// l3iso sends it out of the uplink too, where the outside host gets it
	// from the container's address.
	ol := udpBound(t, g.out, unix.AF_INET, grpPort)
	lb := netip.MustParseAddr("255.255.255.255")
	sendN(t, g.agents[3], s, netip.AddrPortFrom(lb, grpPort), n)
	g.expect(t, "c4 → "+lb.String(), socks, others, want, netip.MustParseAddr("10.79.0.4"), lb)
	if got := drain(t, "outside", g.out, ol, netip.MustParseAddr("10.79.0.4"), lb); got != n {
		t.Errorf("outside host got %d of c4's %d limited broadcasts", got, n)
	}

	// The host's limited broadcast leaves by the uplink (the outside host
	// gets it) and reaches the listening containers too.
	host := g.agent("")
	hs := host.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := host.SetBroadcast(hs, true); err != nil {
		t.Fatal(err)
	}
	sendN(t, host, hs, netip.AddrPortFrom(lb, grpPort), n)
	g.expect(t, "host → "+lb.String(), socks, others, want, hostUp4, lb)
	if got := drain(t, "outside", g.out, ol, hostUp4, lb); got != n {
		t.Errorf("outside host got %d of the host's %d limited broadcasts", got, n)
	}

	// Closing a listener stops delivery at once and empties the registry.
	if err := g.agents[1].Close(socks[1]); err != nil {
		t.Fatal(err)
	}
	socks[1] = -1
	sendN(t, g.out, o, netip.AddrPortFrom(bc, grpPort), n)
	g.expect(t, "after c2 closed", socks, others, [5]int{n, 0, 0, 0, 0}, outside4, bc)
	for _, l := range g.listeners(t) {
		if l.Container == g.names[1] && l.Port == grpPort {
			t.Errorf("closed socket still registered: %+v", l)
		}
	}
	cnt := g.counters()
	if c := cnt[g.names[0]]["group_copies"]; c != 6*n {
		t.Errorf("c1 group_copies = %d, want %d", c, 6*n)
	}
	if c := cnt[g.names[2]]["group_copies"]; c != 0 {
		t.Errorf("c3 (not listening) group_copies = %d", c)
	}

	// Unicast to a host address on a listened port is not a broadcast:
	// no copies, nothing counted.
	before := g.counters()["(host)"]["group_no_listener"]
	hu := host.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := host.Bind(hu, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), grpPort)); err != nil {
		t.Fatal(err)
	}
	sendN(t, host, hs, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), grpPort), n)
	if got := drain(t, "host", host, hu, netip.Addr{}, netip.Addr{}); got != n {
		t.Errorf("host socket got %d of %d unicast datagrams", got, n)
	}
	g.expect(t, "host unicast", socks, others, [5]int{0, 0, 0, 0, 0}, netip.Addr{}, netip.Addr{})
	if after := g.counters()["(host)"]["group_no_listener"]; after != before {
		t.Errorf("unicast counted as broadcast without listener: %d → %d", before, after)
	}

	// A deleted container leaves nothing in the registry.
	g.agents[0].Close(socks[0])
	g.mustRun("container", "del", g.names[0])
	for _, l := range g.listeners(t) {
		if strings.HasPrefix(l.Container, "(gone") || l.Container == g.names[0] {
			t.Errorf("deleted container still registered: %+v", l)
		}
	}
}

// TestMulticastShared: IPv4 and IPv6 multicast reach exactly the
// containers whose listening sockets joined the group; leave and close
// stop delivery; joins outside the policy fail with EPERM.
func TestMulticastShared(t *testing.T) {
	t.Parallel()
	g := newGroupEnv(t)
	const n = 4
	// A netns container beside them sends too.
	nn := g.name("n6")
	g.netEnv.names = append(g.netEnv.names, nn)
	g.mustRun("container", "add", nn, "--mode", "netns", "--addr", "10.78.0.6/24", "--addr", "fd78::6/64", "--mcast", "239.1.0.0/16", "--mcast", "ff15::/16")
	na := g.in(nn)
	for _, tc := range []struct {
		fam   int
		group netip.Addr
		from  netip.Addr
		other netip.Addr // a group outside the policy
	}{
		{unix.AF_INET, group4, outside4, netip.MustParseAddr("239.9.9.9")},
		{unix.AF_INET6, group6, outside6, netip.MustParseAddr("ff1e::4c33")},
	} {
		t.Run(tc.group.String(), func(t *testing.T) {
			socks, others := g.bindAll(t, tc.fam, 3)
			defer g.closeAll(&socks, &others)
			// Policy: c5 may join nothing; nobody may join tc.other.
			x := udpBound(t, g.agents[4], tc.fam, grpPort+2)
			if err := g.agents[4].JoinGroup(x, tc.group, 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("c5 joined %v outside its policy: %v, want EPERM", tc.group, err)
			}
			if err := g.agents[0].JoinGroup(socks[0], tc.other, 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("c1 joined %v outside its policy: %v, want EPERM", tc.other, err)
			}
			// c1 and c2 join; c3 listens on the port without joining.
			for i := 0; i < 2; i++ {
				if err := g.agents[i].JoinGroup(socks[i], tc.group, 0); err != nil {
					t.Fatalf("c%d join %v: %v", i+1, tc.group, err)
				}
			}
			o := g.out.Socket(tc.fam, unix.SOCK_DGRAM, 0)
			dst := netip.AddrPortFrom(tc.group, grpPort)
			sendN(t, g.out, o, dst, n)
			g.expect(t, "joined c1, c2", socks, others, [5]int{n, n, 0, -1, -1}, tc.from, tc.group)

			// From a container (c4, no member) and from a host process:
			// the members get one copy each, and the outside host, a
			// member on its link, gets c4's too. IPv4 copies reach the
			// members through lo, a member of the all-hosts group only:
			// 224.0.0.1 is their destination in IP_PKTINFO
			// (docs/multicast.md, "What applications get"). IPv6 copies
			// re-enter through the uplink and keep the group.
			seen, c4addr, hostAddr := netip.MustParseAddr("224.0.0.1"), netip.MustParseAddr("10.79.0.4"), hostUp4
			if tc.fam == unix.AF_INET6 {
				seen, c4addr, hostAddr = tc.group, netip.MustParseAddr("fd79::4"), hostUp6
			}
			ol := udpBound(t, g.out, tc.fam, grpPort)
			if err := g.out.JoinGroup(ol, tc.group, 0); err != nil {
				t.Fatalf("outside join %v: %v", tc.group, err)
			}
			c4 := g.agents[3].Socket(tc.fam, unix.SOCK_DGRAM, 0)
			sendN(t, g.agents[3], c4, dst, n)
			g.expect(t, "c4 → group", socks, others, [5]int{n, n, 0, -1, -1}, c4addr, seen)
			if got := drain(t, "outside", g.out, ol, c4addr, tc.group); got != n {
				t.Errorf("outside host got %d of c4's %d datagrams to %v", got, n, tc.group)
			}
			g.out.Close(ol)
			host := g.agent("")
			hs := host.Socket(tc.fam, unix.SOCK_DGRAM, 0)
			sendN(t, host, hs, dst, n)
			g.expect(t, "host → group", socks, others, [5]int{n, n, 0, -1, -1}, hostAddr, seen)
			nfrom := netip.MustParseAddr("10.78.0.6")
			if tc.fam == unix.AF_INET6 {
				nfrom = netip.MustParseAddr("fd78::6")
			}
			ns := na.Socket(tc.fam, unix.SOCK_DGRAM, 0)
			sendN(t, na, ns, dst, n)
			g.expect(t, "netns n6 → group", socks, others, [5]int{n, n, 0, -1, -1}, nfrom, seen)

			// Leave stops delivery at once.
			if err := g.agents[0].LeaveGroup(socks[0], tc.group, 0); err != nil {
				t.Fatal(err)
			}
			sendN(t, g.out, o, dst, n)
			g.expect(t, "c1 left", socks, others, [5]int{0, n, 0, -1, -1}, tc.from, tc.group)

			// Close, too, and the registry forgets the socket.
			if err := g.agents[1].Close(socks[1]); err != nil {
				t.Fatal(err)
			}
			socks[1] = -1
			sendN(t, g.out, o, dst, n)
			g.expect(t, "c2 closed", socks, others, [5]int{0, 0, 0, -1, -1}, tc.from, tc.group)
			for _, l := range g.listeners(t) {
				if l.Group == tc.group.String() {
					t.Errorf("registry still lists %+v", l)
				}
			}
		})
	}
}

// newNetnsGroupEnv is groupEnv with netns containers (delivery direct) on
// 10.78.0.0/24 and fd78::/64.
func newNetnsGroupEnv(t *testing.T) *groupEnv {
	n := newNetEnv(t, "direct")
	g := &groupEnv{netEnv: n}
	if out, err := exec.Command("ip", "-n", filepath.Base(n.outside), "route", "add", "default", "via", hostUp4.String()).CombinedOutput(); err != nil {
		t.Fatalf("outside default route: %v: %s", err, out)
	}
	for i := range g.names {
		name := n.name(fmt.Sprintf("n%d", i+1))
		n.names = append(n.names, name)
		args := []string{"container", "add", name, "--mode", "netns", "--addr", fmt.Sprintf("10.78.0.%d/24", i+1), "--addr", fmt.Sprintf("fd78::%d/64", i+1)}
		if i < 4 {
			args = append(args, "--mcast", "239.1.0.0/16", "--mcast", "ff15::/16")
		}
		n.mustRun(args...)
		g.names[i] = name
		g.agents[i] = n.in(name)
	}
	g.out = n.out()
	return g
}

// TestGroupNetns: broadcast and multicast into netns containers (delivery
// direct) reach exactly the listening containers, once each; a netns
// container's broadcast reaches its listening siblings and the uplink.
func TestGroupNetns(t *testing.T) {
	t.Parallel()
	g := newNetnsGroupEnv(t)
	const n = 4
	socks, others := g.bindAll(t, unix.AF_INET, 2)
	for i := 0; i < 2; i++ {
		// Its own stack: the wildcard bind stays a wildcard.
		if la, err := g.agents[i].SockName(socks[i]); err != nil || !la.Addr().IsUnspecified() {
			t.Errorf("n%d: wildcard bind shows %v, %v; want 0.0.0.0", i+1, la, err)
		}
	}
	o := g.out.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := g.out.SetBroadcast(o, true); err != nil {
		t.Fatal(err)
	}
	want := [5]int{n, n, 0, 0, 0}
	// First with a host that does not forward (a new namespace inherits
	// the machine's ip_forward).
	g.setSysctl("net.ipv4.ip_forward", "0")
	for _, dst := range []netip.Addr{netip.MustParseAddr("10.78.0.255"), netip.MustParseAddr("255.255.255.255")} {
		sendN(t, g.out, o, netip.AddrPortFrom(dst, grpPort), n)
		g.expect(t, "outside → "+dst.String(), socks, others, want, outside4, dst)
	}
	// Still exactly once when the host forwards: the original of a
	// directed broadcast is then routed back out of the uplink, where
	// l3_tc_group_out must not copy it again (it fans out only what the
	// host itself sends).
	g.setSysctl("net.ipv4.ip_forward", "1")
	bc := netip.MustParseAddr("10.78.0.255")
	sendN(t, g.out, o, netip.AddrPortFrom(bc, grpPort), n)
	g.expect(t, "outside → "+bc.String()+" with ip_forward=1", socks, others, want, outside4, bc)
	g.setSysctl("net.ipv4.ip_forward", g.fwd0[0]) // as up found it

	// From a netns container: its listening siblings and the uplink.
	ol := udpBound(t, g.out, unix.AF_INET, grpPort)
	s := g.agents[3].Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := g.agents[3].SetBroadcast(s, true); err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("10.78.0.4")
	for _, dst := range []netip.Addr{netip.MustParseAddr("10.78.0.255"), netip.MustParseAddr("255.255.255.255")} {
		sendN(t, g.agents[3], s, netip.AddrPortFrom(dst, grpPort), n)
		g.expect(t, "n4 → "+dst.String(), socks, others, want, src, dst)
	}
	if got := drain(t, "outside", g.out, ol, src, netip.MustParseAddr("255.255.255.255")); got != n {
		t.Errorf("outside host got %d of n4's %d limited broadcasts", got, n)
	}

	// Multicast, IPv4 and IPv6: only the members.
	for _, tc := range []struct {
		fam   int
		group netip.Addr
		from  netip.Addr
	}{{unix.AF_INET, group4, outside4}, {unix.AF_INET6, group6, outside6}} {
		var ms [5]int
		for i := range ms {
			ms[i] = -1
		}
		for i := 0; i < 3; i++ {
			ms[i] = udpBound(t, g.agents[i], tc.fam, grpPort+10)
		}
		x := udpBound(t, g.agents[4], tc.fam, grpPort+11)
		if err := g.agents[4].JoinGroup(x, tc.group, 0); !errors.Is(err, unix.EPERM) {
			t.Errorf("n5 joined %v outside its policy: %v, want EPERM", tc.group, err)
		}
		for i := 0; i < 2; i++ {
			if err := g.agents[i].JoinGroup(ms[i], tc.group, 0); err != nil {
				t.Fatalf("n%d join %v: %v", i+1, tc.group, err)
			}
		}
		mo := g.out.Socket(tc.fam, unix.SOCK_DGRAM, 0)
		dst := netip.AddrPortFrom(tc.group, grpPort+10)
		sendN(t, g.out, mo, dst, n)
		for i := 0; i < 3; i++ {
			w := map[bool]int{true: n, false: 0}[i < 2]
			if got := drain(t, g.names[i], g.agents[i], ms[i], tc.from, tc.group); got != w {
				t.Errorf("%v: n%d got %d copies, want %d", tc.group, i+1, got, w)
			}
		}
		// From a netns container to its siblings: the members only.
		src := netip.MustParseAddr("10.78.0.4")
		if tc.fam == unix.AF_INET6 {
			src = netip.MustParseAddr("fd78::4")
		}
		ns := g.agents[3].Socket(tc.fam, unix.SOCK_DGRAM, 0)
		sendN(t, g.agents[3], ns, dst, n)
		for i := 0; i < 3; i++ {
			w := map[bool]int{true: n, false: 0}[i < 2]
			if got := drain(t, g.names[i], g.agents[i], ms[i], src, tc.group); got != w {
				t.Errorf("%v from n4: n%d got %d copies, want %d", tc.group, i+1, got, w)
			}
		}
		g.agents[3].Close(ns)

		if err := g.agents[0].LeaveGroup(ms[0], tc.group, 0); err != nil {
			t.Fatal(err)
		}
		sendN(t, g.out, mo, dst, n)
		for i := 0; i < 2; i++ {
			w := map[bool]int{true: n, false: 0}[i == 1]
			if got := drain(t, g.names[i], g.agents[i], ms[i], tc.from, tc.group); got != w {
				t.Errorf("%v after n1 left: n%d got %d copies, want %d", tc.group, i+1, got, w)
			}
		}
		for i := 0; i < 3; i++ {
			g.agents[i].Close(ms[i])
		}
	}
	for i := range g.agents {
		if got := drain(t, g.names[i], g.agents[i], others[i], netip.Addr{}, netip.Addr{}); got != 0 {
			t.Errorf("n%d: %d stray datagrams on port %d", i+1, got, otherPort)
		}
	}
}
