package veth

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/policy"
)

// Test addresses come only from 10.250.0.0/16 and fd00:250::/64. Each run
// picks a random third octet R (and the matching IPv6 group):
//
//	10.250.R.1, fd00:250::R:1          the host's test address (on a host-only veth)
//	10.250.R.2-254, fd00:250::R:2-254  routed containers (/32, /128)
//	10.250.R+1.0/24, fd00:250::R+1:0/112  the bridge test's subnet
//	10.250.R+2..R+9.x                  the benchmark
var (
	runID     = randomHex(4)
	base      = 10 + int(randomByte())%230
	addrCount atomic.Uint32
	benchAddr atomic.Uint32

	dummyOnce sync.Once
	dummyName = "l3t" + runID
	dummyErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if dummyErr == nil {
		if l, err := netlink.LinkByName(dummyName); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	os.Exit(code)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func randomByte() byte {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return b[0]
}

// requireRoot skips a privileged test when not root, but fails it when the
// environment says privileged tests must run (sockprobe.Required: CI or
// L3ISO_REQUIRE_PRIVILEGED).
func requireRoot(tb testing.TB) { sockprobe.RequirePrivileged(tb) }

// uniqueName returns a container name no other test uses.
func uniqueName() string { return "t" + randomHex(4) }

func v4(c, d int) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, byte(c), byte(d)}) }

func v6(c, d int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:250::%x:%x", c, d))
}

// nextAddrs returns a fresh container address pair (/32 and /128).
func nextAddrs(tb testing.TB) (netip.Prefix, netip.Prefix) {
	tb.Helper()
	n := int(addrCount.Add(1)) + 1
	if n > 254 {
		tb.Fatal("test ran out of container addresses")
	}
	return HostPrefix(v4(base, n)), HostPrefix(v6(base, n))
}

// hostAddrs returns the host's test addresses, on an interface made once per
// test binary (removed by TestMain).
func hostAddrs(tb testing.TB) (netip.Addr, netip.Addr) {
	tb.Helper()
	a4, a6 := v4(base, 1), v6(base, 1)
	dummyOnce.Do(func() {
		la := netlink.NewLinkAttrs()
		la.Name = dummyName
		la.Flags = net.FlagUp
		// No dummy driver in this kernel: a veth pair with both ends in
		// the host namespace carries the addresses instead.
		veth := &netlink.Veth{LinkAttrs: la, PeerName: dummyName + "p"}
		if dummyErr = netlink.LinkAdd(veth); dummyErr != nil {
			return
		}
		if dummyErr = netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: dummyName + "p"}}); dummyErr != nil {
			return
		}
		d, err := netlink.LinkByName(dummyName)
		if err != nil {
			dummyErr = err
			return
		}
		for _, a := range []netlink.Addr{
			{IPNet: ipNet(HostPrefix(a4))},
			{IPNet: ipNet(HostPrefix(a6)), Flags: unix.IFA_F_NODAD},
		} {
			if err := netlink.AddrAdd(d, &a); err != nil {
				dummyErr = err
				return
			}
		}
	})
	if dummyErr != nil {
		tb.Fatalf("set up host test addresses on %s: %v", dummyName, dummyErr)
	}
	return a4, a6
}

// mustCreate creates a container and registers its deletion, checking that
// nothing of it is left afterwards. The deletion is DeleteMany's, as in
// `l3iso container del`: it deletes the veth itself when the namespace
// outlives its mount, which a test's TCP connection still closing (an
// orphan in FIN_WAIT, retransmitting into a veth that changed) can make it
// do for minutes; Delete would leave that veth to the kernel.
func mustCreate(tb testing.TB, s Spec) *Endpoint {
	tb.Helper()
	ep, err := Create(s)
	if err != nil {
		tb.Fatalf("Create: %v", err)
	}
	tb.Cleanup(func() {
		if err := DeleteMany([]string{s.Container}); err != nil {
			tb.Errorf("DeleteMany(%q): %v", s.Container, err)
		}
		waitGone(tb, s.Container, goneWait)
	})
	return ep
}

// goneWait bounds how long a deleted container's kernel objects may take to
// go: the kernel destroys released namespaces asynchronously, in a work
// queue that falls behind on a busy 2-vCPU machine (5 s was once too few).
const goneWait = 30 * time.Second

// waitGone fails the test unless every kernel object of container is gone
// within wait (the kernel destroys released namespaces asynchronously).
func waitGone(tb testing.TB, container string, wait time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(wait)
	for {
		left := leftovers(container)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Errorf("container %q left behind: %s", container, strings.Join(left, ", "))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// leftovers lists what exists of container: its netns file, its place in
// `ip netns list`, its host veth.
func leftovers(container string) []string {
	var left []string
	if _, err := os.Stat(NetnsPath(container)); err == nil {
		left = append(left, NetnsPath(container))
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == NetnsName(container) {
				left = append(left, "`ip netns list` entry "+f[0])
			}
		}
	}
	if _, err := netlink.LinkByName(HostIfName(container)); err == nil {
		left = append(left, "host interface "+HostIfName(container))
	}
	return left
}

// inNS runs fn inside the container's namespace.
func inNS(tb testing.TB, container string, fn func() error) {
	tb.Helper()
	if err := Do(container, fn); err != nil {
		tb.Fatalf("in container %q: %v", container, err)
	}
}

// nsLinkHandle opens a netlink handle inside the container's namespace.
func nsLinkHandle(tb testing.TB, container string) *netlink.Handle {
	tb.Helper()
	h, err := nsHandle(NetnsPath(container))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// serveEcho answers every TCP connection and UDP datagram with
// "<message> from <source address>".
func serveTCP(tb testing.TB, ln net.Listener) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 512)
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				fmt.Fprintf(c, "%s from %v", buf[:n], from)
			}()
		}
	}()
}

func serveUDP(tb testing.TB, pc net.PacketConn) {
	tb.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s from %v", buf[:n], src), from)
		}
	}()
}

// checkTCP sends a message over conn and checks the echo names wantFrom as
// the source the server saw.
func checkTCP(tb testing.TB, what string, conn net.Conn, wantFrom netip.Addr) {
	tb.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "tcp-" + randomHex(4)
	if _, err := conn.Write([]byte(msg)); err != nil {
		tb.Fatalf("%s: write: %v", what, err)
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		tb.Fatalf("%s: read: %v", what, err)
	}
	if want := fmt.Sprintf("%s from %v", msg, wantFrom); string(buf[:n]) != want {
		tb.Fatalf("%s: got %q, want %q", what, buf[:n], want)
	}
}

// checkUDP sends a datagram from pc to to and checks the echo.
func checkUDP(tb testing.TB, what string, pc net.PacketConn, to netip.AddrPort, wantFrom netip.Addr) {
	tb.Helper()
	defer pc.Close()
	msg := "udp-" + randomHex(4)
	if _, err := pc.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(to)); err != nil {
		tb.Fatalf("%s: send to %v: %v", what, to, err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		tb.Fatalf("%s: receive: %v", what, err)
	}
	if got := from.(*net.UDPAddr).AddrPort(); got.Addr().Unmap() != to.Addr() || got.Port() != to.Port() {
		tb.Fatalf("%s: reply from %v, want %v", what, got, to)
	}
	if want := fmt.Sprintf("%s from %v", msg, wantFrom); string(buf[:n]) != want {
		tb.Fatalf("%s: got %q, want %q", what, buf[:n], want)
	}
}

func network(a netip.Addr, proto string) string {
	if a.Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// listenIn starts TCP and UDP echo servers on addr inside the container and
// returns their addresses.
func listenIn(tb testing.TB, container string, addr netip.Addr) (tcp, udp netip.AddrPort) {
	tb.Helper()
	inNS(tb, container, func() error {
		ln, err := net.Listen(network(addr, "tcp"), netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket(network(addr, "udp"), netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			ln.Close()
			return err
		}
		serveTCP(tb, ln)
		serveUDP(tb, pc)
		tcp = ln.Addr().(*net.TCPAddr).AddrPort()
		udp = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		return nil
	})
	return netip.AddrPortFrom(addr, tcp.Port()), netip.AddrPortFrom(addr, udp.Port())
}

// listenHost starts TCP and UDP echo servers on addr in the host namespace.
func listenHost(tb testing.TB, addr netip.Addr) (tcp, udp netip.AddrPort) {
	tb.Helper()
	ln, err := net.Listen(network(addr, "tcp"), netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		tb.Fatal(err)
	}
	pc, err := net.ListenPacket(network(addr, "udp"), netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		tb.Fatal(err)
	}
	serveTCP(tb, ln)
	serveUDP(tb, pc)
	return netip.AddrPortFrom(addr, uint16(ln.Addr().(*net.TCPAddr).Port)),
		netip.AddrPortFrom(addr, uint16(pc.LocalAddr().(*net.UDPAddr).Port))
}

// checkHostToContainer sends TCP and UDP from the host address from to the
// servers at tcp and udp.
func checkHostToContainer(tb testing.TB, from netip.Addr, tcp, udp netip.AddrPort) {
	tb.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
	conn, err := d.Dial(network(from, "tcp"), tcp.String())
	if err != nil {
		tb.Fatalf("host %v -> container %v: TCP connect: %v", from, tcp, err)
	}
	checkTCP(tb, fmt.Sprintf("host %v -> container %v TCP", from, tcp), conn, from)
	pc, err := net.ListenPacket(network(from, "udp"), netip.AddrPortFrom(from, 0).String())
	if err != nil {
		tb.Fatal(err)
	}
	checkUDP(tb, fmt.Sprintf("host %v -> container %v UDP", from, udp), pc, udp, from)
}

// checkFromContainer sends TCP and UDP from inside container (source address
// chosen by the container's kernel, expected to be wantFrom) to the servers.
func checkFromContainer(tb testing.TB, container string, wantFrom netip.Addr, tcp, udp netip.AddrPort) {
	tb.Helper()
	var conn net.Conn
	var pc net.PacketConn
	inNS(tb, container, func() error {
		var err error
		conn, err = net.DialTimeout(network(wantFrom, "tcp"), tcp.String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("TCP connect to %v: %w", tcp, err)
		}
		pc, err = net.ListenPacket(network(wantFrom, "udp"), ":0")
		return err
	})
	checkTCP(tb, fmt.Sprintf("container %s -> %v TCP", container, tcp), conn, wantFrom)
	checkUDP(tb, fmt.Sprintf("container %s -> %v UDP", container, udp), pc, udp, wantFrom)
}

func TestHostIfName(t *testing.T) {
	for _, tc := range []struct{ container, want string }{
		{"web", "l3i-web"},
		{"a", "l3i-a"},
		{"abcdefghijk", "l3i-abcdefghijk"}, // 15 characters: fits
	} {
		if got := HostIfName(tc.container); got != tc.want {
			t.Errorf("HostIfName(%q) = %q, want %q", tc.container, got, tc.want)
		}
	}
	long1, long2 := "abcdefghijkl", "abcdef-the-other-one"
	for _, c := range []string{long1, long2, strings.Repeat("z", MaxNameLen)} {
		got := HostIfName(c)
		if len(got) != 15 || !strings.HasPrefix(got, "l3i-"+c[:2]) || got != HostIfName(c) {
			t.Errorf("HostIfName(%q) = %q: want 15 characters, l3i-%s<9 hex>, stable", c, got, c[:2])
		}
	}
	// 36 bits of hash: 10,000 long names with one prefix do not collide
	// (20 bits did, with ~40% odds at 1,000 names).
	seen := map[string]string{}
	for i := 0; i < 10000; i++ {
		c := fmt.Sprintf("service-%05d", i)
		if other, ok := seen[HostIfName(c)]; ok {
			t.Fatalf("HostIfName(%q) == HostIfName(%q)", c, other)
		}
		seen[HostIfName(c)] = c
	}
	if HostIfName(long1) == HostIfName(long2) {
		t.Errorf("HostIfName(%q) == HostIfName(%q) == %q", long1, long2, HostIfName(long1))
	}
	if NetnsName("web") != "l3iso-web" || NetnsPath("web") != "/run/netns/l3iso-web" {
		t.Errorf("NetnsName/NetnsPath(web) = %q, %q", NetnsName("web"), NetnsPath("web"))
	}
}

// TestKey: a tagged key names a namespace and a veth apart from the same
// container of an installation with another tag, or with none, and
// nothing else changes for untagged keys.
func TestKey(t *testing.T) {
	if Key("", "web") != "web" || Key("k3fa", "web") != "k3fa_web" {
		t.Errorf("Key: %q, %q", Key("", "web"), Key("k3fa", "web"))
	}
	for key, want := range map[string][2]string{"web": {"", "web"}, "k3fa_web": {"k3fa", "web"}} {
		if tag, name := SplitKey(key); tag != want[0] || name != want[1] {
			t.Errorf("SplitKey(%q) = %q, %q; want %q", key, tag, name, want)
		}
	}
	for _, tc := range []struct{ key, want string }{
		{"k3fa_web", "l3i-k3fa_web"},
		{"k3fa_abcdef", "l3i-k3fa_abcdef"}, // 15 characters: fits
	} {
		if got := HostIfName(tc.key); got != tc.want {
			t.Errorf("HostIfName(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if NetnsName("k3fa_web") != "l3iso-k3fa_web" {
		t.Errorf("NetnsName(k3fa_web) = %q", NetnsName("k3fa_web"))
	}
	// The same names in two installations, and without a tag: all apart,
	// long ones (hashed) too; a long name keeps its tag in the veth's.
	seen := map[string]string{}
	for _, tag := range []string{"", "k3fa", "zz27"} {
		for i := 0; i < 3000; i++ {
			key := Key(tag, fmt.Sprintf("service-%05d", i%1000))
			if i >= 1000 {
				key = Key(tag, fmt.Sprintf("s%d", i))
			}
			ifn := HostIfName(key)
			if len(ifn) > 15 || !strings.HasPrefix(ifn, "l3i-"+tag) {
				t.Fatalf("HostIfName(%q) = %q: want at most 15 characters starting l3i-%s", key, ifn, tag)
			}
			if other, ok := seen[ifn]; ok {
				t.Fatalf("HostIfName(%q) == HostIfName(%q) == %q", key, other, ifn)
			}
			seen[ifn] = key
			if err := ValidateKey(key); err != nil {
				t.Errorf("ValidateKey(%q): %v", key, err)
			}
		}
	}
	for _, bad := range []string{"_web", "waytoolongtag_web", "K3FA_web", "k3fa_", "k3fa_Web", "a_b_c"} {
		if err := ValidateKey(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateKey(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestValidate(t *testing.T) {
	a4, a6 := HostPrefix(v4(250, 250)), HostPrefix(v6(250, 250))
	for _, tc := range []struct {
		name string
		spec Spec
	}{
		{"empty name", Spec{Container: ""}},
		{"long name", Spec{Container: strings.Repeat("a", MaxNameLen+1)}},
		{"upper case", Spec{Container: "Web"}},
		{"slash", Spec{Container: "a/b"}},
		{"invalid prefix", Spec{Container: "x", Addrs: []netip.Prefix{{}}}},
		{"4in6", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.250.0.1/128")}}},
		{"multicast", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("224.0.0.1/32")}}},
		{"loopback", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}},
		{"link-local", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("169.254.1.1/32")}}},
		{"link-local v6", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("fe80::1/128")}}},
		{"slash zero", Spec{Container: "x", Addrs: []netip.Prefix{netip.MustParsePrefix("10.250.0.1/0")}}},
		{"duplicate", Spec{Container: "x", Addrs: []netip.Prefix{a4, netip.PrefixFrom(a4.Addr(), 24)}}},
		{"mtu low", Spec{Container: "x", MTU: 60}},
		{"mtu v6", Spec{Container: "x", MTU: 1000, Addrs: []netip.Prefix{a6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Create(tc.spec)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Create(%+v) = %v, want ErrInvalid", tc.spec, err)
			}
			t.Log(err)
		})
	}
	for in, want := range map[string]string{"10.250.0.1": "10.250.0.1/32", "fd00:250::1": "fd00:250::1/128", "10.250.0.1/24": "10.250.0.1/24"} {
		if p, err := ParseAddr(in); err != nil || p.String() != want {
			t.Errorf("ParseAddr(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	if _, err := ParseAddr("10.250.0.300"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseAddr(bad) = %v, want ErrInvalid", err)
	}
}

// TestCreate checks every kernel object Create makes.
func TestCreate(t *testing.T) {
	requireRoot(t)
	name := uniqueName()
	a4, a6 := nextAddrs(t)
	sub4 := netip.PrefixFrom(v4(base, 200+int(randomByte())%50), 28) // an on-link prefix too
	ep := mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4, a6, sub4}, MTU: 9000})

	if ep.Container != name || ep.NetnsPath != "/run/netns/l3iso-"+name || ep.HostIf != HostIfName(name) {
		t.Errorf("endpoint names = %+v", ep)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), NetnsName(name)) {
		t.Errorf("`ip netns list` does not show %s: %v\n%s", NetnsName(name), err, out)
	}

	// Host side.
	host, err := netlink.LinkByName(ep.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	ha := host.Attrs()
	if host.Type() != "veth" || ha.Index != ep.HostIfIndex || !bytes.Equal(ha.HardwareAddr, ep.HostMAC) ||
		ha.MTU != 9000 || ha.Flags&net.FlagUp == 0 || ha.Alias != "l3iso:"+name || ha.ParentIndex != ep.PeerIfIndex {
		t.Errorf("host veth = type %s %+v, endpoint %+v", host.Type(), ha, ep)
	}
	if addrs, _ := netlink.AddrList(host, netlink.FAMILY_ALL); len(addrs) != 0 {
		t.Errorf("host veth has addresses %v, want none (addr_gen_mode none)", addrs)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + ep.HostIf + "/addr_gen_mode"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("host veth addr_gen_mode = %q, %v; want 1", b, err)
	}
	for _, p := range []netip.Prefix{a4, a6, sub4} {
		routes, err := netlink.RouteListFiltered(family(p.Addr()), &netlink.Route{Dst: ipNet(HostPrefix(p.Addr()))}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) != 1 || routes[0].LinkIndex != ep.HostIfIndex || routes[0].Protocol != RouteProtocol {
			t.Errorf("host routes to %v = %+v, %v; want one via %s proto %d", p.Addr(), routes, err, ep.HostIf, RouteProtocol)
		}
		checkNeigh(t, "host", netlink.NeighList, ep.HostIfIndex, p.Addr(), ep.PeerMAC)
	}

	// Container side.
	ns := nsLinkHandle(t, name)
	eth0, err := ns.LinkByName(PeerIfName)
	if err != nil {
		t.Fatal(err)
	}
	ea := eth0.Attrs()
	if ea.Index != ep.PeerIfIndex || !bytes.Equal(ea.HardwareAddr, ep.PeerMAC) || ea.MTU != 9000 || ea.Flags&net.FlagUp == 0 {
		t.Errorf("eth0 = %+v, endpoint %+v", ea, ep)
	}
	if lo, err := ns.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo = %+v, %v; want up", lo, err)
	}
	addrs, err := ns.AddrList(eth0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]int{}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		got[netip.PrefixFrom(ip.Unmap(), ones)] = a.Flags
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			t.Errorf("address %v is tentative or failed DAD (flags %#x)", a.IPNet, a.Flags)
		}
	}
	for _, p := range []netip.Prefix{a4, a6, sub4} {
		if _, ok := got[p]; !ok {
			t.Errorf("eth0 lacks %v; has %v", p, got)
		}
	}
	if got[a6]&unix.IFA_F_NODAD == 0 {
		t.Errorf("%v lacks IFA_F_NODAD", a6)
	}
	for _, gw := range []netip.Addr{GatewayIPv4, GatewayIPv6} {
		routes, err := ns.RouteListFiltered(family(gw), &netlink.Route{LinkIndex: ea.Index}, netlink.RT_FILTER_OIF)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range routes {
			isDefault := r.Dst == nil
			if r.Dst != nil {
				ones, _ := r.Dst.Mask.Size()
				isDefault = ones == 0
			}
			if isDefault && net.IP.Equal(r.Gw, gw.AsSlice()) {
				found = true
				if gw.Is4() && r.Flags&int(netlink.FLAG_ONLINK) == 0 {
					t.Errorf("default route via %v lacks onlink: %+v", gw, r)
				}
			}
		}
		if !found {
			t.Errorf("no default route via %v dev eth0 in %+v", gw, routes)
		}
		checkNeigh(t, "container", ns.NeighList, ea.Index, gw, ep.HostMAC)
	}
	if ll := netip.PrefixFrom(linkLocal(ep.PeerMAC), 64); got[ll]&unix.IFA_F_NODAD == 0 {
		t.Errorf("eth0 lacks link-local %v with IFA_F_NODAD; has %v", ll, got)
	}
	if len(got) != 4 {
		t.Errorf("eth0 addresses = %v, want the 3 given and one link-local", got)
	}
	// IPv6 is on; the kernel generates no (DAD-bound) link-local itself.
	for key, want := range map[string]string{"disable_ipv6": "0", "addr_gen_mode": "1"} {
		inNS(t, name, func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/" + key)
			if err != nil {
				return err
			}
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("in netns: net.ipv6.conf.eth0.%s = %s, want %s", key, got, want)
			}
			return nil
		})
	}
	// Processes started inside Do run in the container namespace.
	inNS(t, name, func() error {
		out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip link: %w: %s", err, out)
		}
		if !strings.Contains(string(out), "eth0@") || strings.Contains(string(out), ep.HostIf) {
			t.Errorf("`ip link` started in Do does not see the container namespace:\n%s", out)
		}
		return nil
	})

	// Lookup reads the same back.
	lk, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if lk.HostIf != ep.HostIf || lk.HostIfIndex != ep.HostIfIndex || !bytes.Equal(lk.HostMAC, ep.HostMAC) ||
		lk.PeerIfIndex != ep.PeerIfIndex || !bytes.Equal(lk.PeerMAC, ep.PeerMAC) || lk.NetnsPath != ep.NetnsPath || lk.Bridged {
		t.Errorf("Lookup = %+v, Create returned %+v", lk, ep)
	}
	slices.SortFunc(lk.Addrs, netip.Prefix.Compare)
	want := []netip.Prefix{a4, sub4, a6}
	slices.SortFunc(want, netip.Prefix.Compare)
	if !slices.Equal(lk.Addrs, want) {
		t.Errorf("Lookup addrs = %v, want %v", lk.Addrs, want)
	}
	if err := lk.Close(); err != nil {
		t.Error(err)
	}
	names, err := List()
	if err != nil || !slices.Contains(names, name) {
		t.Errorf("List() = %v, %v; want it to contain %q", names, err, name)
	}
}

func checkNeigh(t *testing.T, where string, list func(int, int) ([]netlink.Neigh, error), ifIndex int, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	neighs, err := list(ifIndex, family(ip))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if net.IP.Equal(n.IP, ip.AsSlice()) {
			if n.State != netlink.NUD_PERMANENT || !bytes.Equal(n.HardwareAddr, mac) {
				t.Errorf("%s neighbour %v = %v state %#x, want %v permanent", where, ip, n.HardwareAddr, n.State, mac)
			}
			return
		}
	}
	t.Errorf("%s: no neighbour entry for %v on ifindex %d", where, ip, ifIndex)
}

// TestTraffic sends real TCP and UDP traffic between the host and a
// container in routed mode, both ways, IPv4 and IPv6.
func TestTraffic(t *testing.T) {
	requireRoot(t)
	h4, h6 := hostAddrs(t)
	name := uniqueName()
	a4, a6 := nextAddrs(t)
	mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4, a6}})
	for _, tc := range []struct {
		family          string
		host, container netip.Addr
	}{{"ipv4", h4, a4.Addr()}, {"ipv6", h6, a6.Addr()}} {
		t.Run(tc.family, func(t *testing.T) {
			tcp, udp := listenIn(t, name, tc.container)
			checkHostToContainer(t, tc.host, tcp, udp)
			tcp, udp = listenHost(t, tc.host)
			checkFromContainer(t, name, tc.container, tcp, udp)
		})
	}
}

var errInjected = errors.New("injected failure")

// TestCreateRollback makes Create fail after each step and checks that
// nothing of the container is left behind.
func TestCreateRollback(t *testing.T) {
	requireRoot(t)
	for _, step := range []string{stepNetns, stepVeth, stepPeer, stepAddrs, stepGateways, stepHostRoutes, stepAlias} {
		t.Run(strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
			name := uniqueName()
			a4, a6 := nextAddrs(t)
			createHook = func(s string) error {
				if s == step {
					return errInjected
				}
				return nil
			}
			t.Cleanup(func() { createHook = nil })
			t.Cleanup(func() { _ = Delete(name) })
			_, err := Create(Spec{Container: name, Addrs: []netip.Prefix{a4, a6}})
			if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), step) {
				t.Fatalf("Create = %v, want the injected failure after %q", err, step)
			}
			if left := leftovers(name); len(left) != 0 {
				t.Errorf("failed Create left behind: %v", left)
			}
			for _, p := range []netip.Prefix{a4, a6} {
				if routes, _ := netlink.RouteListFiltered(family(p.Addr()), &netlink.Route{Dst: ipNet(p)}, netlink.RT_FILTER_DST); len(routes) != 0 {
					t.Errorf("failed Create left host route %+v", routes)
				}
			}
		})
	}
}

// TestCreateCrash stops Create after each step the way a killed process
// would (no undo runs). Until the last step Lookup must call the container
// incomplete (l3iso's repair then deletes it and makes it again, as here),
// never hand out a half-made one; after the last it is complete as it is.
// Either way it must end up carrying traffic both ways, IPv4 and IPv6.
func TestCreateCrash(t *testing.T) {
	requireRoot(t)
	h4, h6 := hostAddrs(t)
	for _, step := range []string{stepNetns, stepVeth, stepPeer, stepAddrs, stepGateways, stepHostRoutes, stepAlias} {
		t.Run(strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
			name := uniqueName()
			a4, a6 := nextAddrs(t)
			s := Spec{Container: name, Addrs: []netip.Prefix{a4, a6}}
			t.Cleanup(func() { _ = Delete(name) })
			crash(t, step, s)
			_, err := Lookup(name)
			switch {
			case step == stepAlias:
				if err != nil {
					t.Fatalf("Lookup of a complete container: %v", err)
				}
			case errors.Is(err, ErrIncomplete) || errors.Is(err, ErrNotFound):
				if err := Delete(name); err != nil {
					t.Fatal(err)
				}
				mustCreate(t, s)
			default:
				t.Fatalf("Lookup after a crash after %q = %v, want an incomplete container", step, err)
			}
			for _, tc := range []struct{ host, container netip.Addr }{{h4, a4.Addr()}, {h6, a6.Addr()}} {
				tcp, udp := listenIn(t, name, tc.container)
				checkHostToContainer(t, tc.host, tcp, udp)
				tcp, udp = listenHost(t, tc.host)
				checkFromContainer(t, name, tc.container, tcp, udp)
			}
		})
	}
}

// crash runs Create and stops it dead after step: the hook panics, so
// Create's undo (which runs only on a returned error) does not.
func crash(t *testing.T, step string, s Spec) {
	t.Helper()
	type stop struct{}
	createHook = func(st string) error {
		if st == step {
			panic(stop{})
		}
		return nil
	}
	defer func() {
		createHook = nil
		if r := recover(); r != (stop{}) {
			t.Fatalf("Create did not stop after %q: %v", step, r)
		}
	}()
	_, err := Create(s)
	t.Fatalf("Create returned %v", err)
}

// TestCreateConflicts covers real failures: a namespace made by someone
// else, a second container with the same name, and an address already
// routed to another container (which fails late, after the veth exists).
func TestCreateConflicts(t *testing.T) {
	requireRoot(t)
	t.Run("ip netns add", func(t *testing.T) {
		name := uniqueName()
		if out, err := exec.Command("ip", "netns", "add", NetnsName(name)).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", NetnsName(name)).Run() })
		_, err := Create(Spec{Container: name})
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "ip netns del "+NetnsName(name)) {
			t.Fatalf("Create over an existing netns = %v, want ErrExists with a hint", err)
		}
		t.Log(err)
		if _, err := os.Stat(NetnsPath(name)); err != nil {
			t.Fatalf("failed Create removed a netns it did not make: %v", err)
		}
		// Delete removes it, iproute2 agrees.
		if err := Delete(name); err != nil {
			t.Fatal(err)
		}
		waitGone(t, name, goneWait)
	})
	t.Run("same name twice", func(t *testing.T) {
		name := uniqueName()
		a4, _ := nextAddrs(t)
		ep := mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4}})
		if _, err := Create(Spec{Container: name}); !errors.Is(err, ErrExists) {
			t.Fatalf("second Create = %v, want ErrExists", err)
		}
		lk, err := Lookup(name)
		if err != nil || lk.HostIfIndex != ep.HostIfIndex {
			t.Fatalf("first container damaged: %+v, %v", lk, err)
		}
	})
	t.Run("host interface name taken", func(t *testing.T) {
		name := uniqueName()
		la := netlink.NewLinkAttrs()
		la.Name = HostIfName(name)
		foreign := &netlink.Veth{LinkAttrs: la, PeerName: "l3t" + randomHex(4)}
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlink.LinkDel(foreign) })
		_, err := Create(Spec{Container: name})
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "another program") {
			t.Fatalf("Create over a foreign interface = %v, want ErrExists naming the owner", err)
		}
		t.Log(err)
		if _, err := os.Stat(NetnsPath(name)); err == nil {
			t.Error("failed Create left its netns")
		}
		if _, err := netlink.LinkByName(la.Name); err != nil {
			t.Errorf("failed Create removed an interface it did not make: %v", err)
		}
	})
	t.Run("address owned by another container", func(t *testing.T) {
		first, second := uniqueName(), uniqueName()
		a4, a6 := nextAddrs(t)
		ep := mustCreate(t, Spec{Container: first, Addrs: []netip.Prefix{a4, a6}})
		t.Cleanup(func() { _ = Delete(second) })
		_, err := Create(Spec{Container: second, Addrs: []netip.Prefix{a6, a4}})
		if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "host route") {
			t.Fatalf("Create with a taken address = %v, want EEXIST on the host route", err)
		}
		t.Log(err)
		if left := leftovers(second); len(left) != 0 {
			t.Errorf("failed Create left behind: %v", left)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(a4)}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) != 1 || routes[0].LinkIndex != ep.HostIfIndex {
			t.Errorf("first container's route to %v = %+v, %v", a4, routes, err)
		}
	})
}

func TestLookupDeleteList(t *testing.T) {
	requireRoot(t)
	name := uniqueName()
	if _, err := Lookup(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(absent) = %v, want ErrNotFound", err)
	}
	if err := Delete(name); err != nil {
		t.Errorf("Delete(absent) = %v", err)
	}
	a4, a6 := nextAddrs(t)
	mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4, a6}})
	if err := Delete(name); err != nil {
		t.Fatal(err)
	}
	if err := Delete(name); err != nil {
		t.Fatalf("second Delete = %v", err)
	}
	if _, err := Lookup(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(deleted) = %v, want ErrNotFound", err)
	}
	names, _ := List()
	if slices.Contains(names, name) {
		t.Errorf("List() = %v still contains %q", names, name)
	}
	// Re-creating the name at once works even while the kernel may still be
	// destroying the old veth pair.
	start := time.Now()
	ep, err := Create(Spec{Container: name, Addrs: []netip.Prefix{a4, a6}})
	if err != nil {
		t.Fatalf("Create right after Delete: %v", err)
	}
	t.Logf("Create right after Delete took %v", time.Since(start))
	if _, err := Lookup(name); err != nil {
		t.Fatal(err)
	}
	h4, h6 := hostAddrs(t)
	tcp, udp := listenIn(t, name, a4.Addr())
	checkHostToContainer(t, h4, tcp, udp)
	tcp, udp = listenIn(t, name, a6.Addr())
	checkHostToContainer(t, h6, tcp, udp)
	_ = ep.Close()
}

// TestLeftoverVeth covers veths that outlive their namespace mount: removed
// with `ip netns del`, or kept alive by a process holding the namespace.
func TestLeftoverVeth(t *testing.T) {
	requireRoot(t)
	t.Run("ip netns del", func(t *testing.T) {
		name := uniqueName()
		mustCreate(t, Spec{Container: name})
		if out, err := exec.Command("ip", "netns", "del", NetnsName(name)).CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v: %s", err, out)
		}
		if _, err := Lookup(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup after ip netns del = %v, want ErrNotFound", err)
		}
		if err := Delete(name); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(name); len(left) != 0 {
			t.Errorf("Delete left %v", left)
		}
	})
	t.Run("netns held open", func(t *testing.T) {
		name := uniqueName()
		a4, _ := nextAddrs(t)
		mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4}})
		fd, err := unix.Open(NetnsPath(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := Delete(name); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(HostIfName(name)); err != nil {
			t.Fatalf("veth of a held namespace vanished: %v", err)
		}
		// Create clears the leftover of the same container.
		if _, err := Create(Spec{Container: name, Addrs: []netip.Prefix{a4}}); err != nil {
			t.Fatalf("Create over a leftover veth: %v", err)
		}
		if _, err := Lookup(name); err != nil {
			t.Fatal(err)
		}
	})
}

// TestConcurrentCreate creates and deletes containers from several
// goroutines at once.
func TestConcurrentCreate(t *testing.T) {
	requireRoot(t)
	h4, _ := hostAddrs(t)
	const workers, each = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	eps := make(chan *Endpoint, workers*each)
	for w := range workers {
		prefixes := make([][]netip.Prefix, each)
		for i := range prefixes {
			a4, a6 := nextAddrs(t)
			prefixes[i] = []netip.Prefix{a4, a6}
		}
		wg.Go(func() {
			for i := range each {
				name := fmt.Sprintf("cc%s-%d-%d", runID[:4], w, i)
				t.Cleanup(func() {
					_ = Delete(name)
					waitGone(t, name, goneWait)
				})
				ep, err := Create(Spec{Container: name, Addrs: prefixes[i]})
				if err != nil {
					errs <- err
					continue
				}
				eps <- ep
			}
		})
	}
	wg.Wait()
	close(errs)
	close(eps)
	for err := range errs {
		t.Error(err)
	}
	for ep := range eps {
		tcp, udp := listenIn(t, ep.Container, ep.Addrs[0].Addr())
		checkHostToContainer(t, h4, tcp, udp)
	}
}

// TestDeleteAll runs DeleteAll's logic restricted to this test's
// containers (the real one would remove other tests' containers too).
func TestDeleteAll(t *testing.T) {
	requireRoot(t)
	useTestBridge(t)
	if _, err := EnsureBridge(nil, nil); err != nil {
		t.Fatal(err)
	}
	prefix := "da" + randomHex(3) + "-"
	mine := func(c string) bool { return strings.HasPrefix(c, prefix) }
	var names []string
	for i := range 3 {
		name := fmt.Sprintf("%s%d", prefix, i)
		a4, a6 := nextAddrs(t)
		mustCreate(t, Spec{Container: name, Addrs: []netip.Prefix{a4, a6}})
		names = append(names, name)
	}
	// One namespace stays alive after its mount goes: its veth must be
	// deleted explicitly.
	fd, err := unix.Open(NetnsPath(names[0]), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := Enslave(HostIfName(names[1])); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := deleteAll(mine, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleteAll of 3 (one held, one bridged) took %v", time.Since(start))
	if _, err := netlink.LinkByName(bridgeName); err == nil {
		t.Error("deleteAll left the bridge")
	}
	for _, n := range names {
		if left := leftovers(n); len(left) != 0 {
			t.Errorf("deleteAll left %v", left)
		}
	}
}

// BenchmarkCreateDelete creates 100 containers, then deletes them; ns/op is
// per batch of 100, create-ns/ctr and delete-ns/ctr per container.
func BenchmarkCreateDelete(b *testing.B) {
	requireRoot(b)
	const n = 100
	prefix := "bn" + randomHex(3) + "-"
	b.Cleanup(func() {
		if err := deleteAll(func(c string) bool { return strings.HasPrefix(c, prefix) }, false); err != nil {
			b.Error(err)
		}
	})
	var createTime, deleteTime time.Duration
	batches := 0
	for b.Loop() {
		names := make([]string, n)
		start := time.Now()
		for i := range names {
			k := int(benchAddr.Add(1)) % 2000
			c, d := base+2+k/250, 1+k%250
			names[i] = fmt.Sprintf("%s%d-%d", prefix, batches, i)
			if _, err := Create(Spec{Container: names[i], Addrs: []netip.Prefix{HostPrefix(v4(c, d)), HostPrefix(v6(c, d))}}); err != nil {
				b.Fatal(err)
			}
		}
		mid := time.Now()
		for _, name := range names {
			if err := Delete(name); err != nil {
				b.Fatal(err)
			}
		}
		createTime += mid.Sub(start)
		deleteTime += time.Since(mid)
		batches++
	}
	b.ReportMetric(float64(createTime.Nanoseconds())/float64(batches*n), "create-ns/ctr")
	b.ReportMetric(float64(deleteTime.Nanoseconds())/float64(batches*n), "delete-ns/ctr")
}

// TestValidateNameIsPolicys: a container name is valid here exactly when
// the policy takes it (one rule: policy.ValidateName), and a refusal is
// ErrInvalid.
func TestValidateNameIsPolicys(t *testing.T) {
	for _, name := range []string{"web", "web-1", "web-", "0", "-web", "-", "", "Web", "web_1", "wéb",
		strings.Repeat("a", MaxNameLen), strings.Repeat("a", MaxNameLen+1)} {
		err, want := ValidateName(name), policy.ValidateName(name)
		if (err == nil) != (want == nil) {
			t.Errorf("ValidateName(%q) = %v, the policy says %v", name, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalid", name, err)
		}
		if key := Key("k3fa", name); (ValidateKey(key) == nil) != (want == nil) {
			t.Errorf("ValidateKey(%q) = %v, the policy says %v about %q", key, ValidateKey(key), want, name)
		}
	}
}
