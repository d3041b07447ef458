package e2e

// netEnv, the harness of the netns-mode tests (issue 3) and of every test
// with an uplink: an "outside host" network namespace is joined to the
// env's host namespace by a veth pair
// whose host end, up0, is l3iso's --uplink. Like an unmodified peer on the
// uplink's segment, the outside host reaches the containers with one plain
// route via the host's uplink address.
//
//	outside netns            env netns ("the host", l3iso runs here)      container netns
//	eth0 192.0.2.2  ─veth─  up0 192.0.2.1    l3i-NAME ──────veth──────── eth0 10.78.0.x
//	     2001:db8:1::2           2001:db8:1::1                                fd78::x

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/veth"
)

var (
	hostUp4  = netip.MustParseAddr("192.0.2.1")
	hostUp6  = netip.MustParseAddr("2001:db8:1::1")
	outside4 = netip.MustParseAddr("192.0.2.2")
	outside6 = netip.MustParseAddr("2001:db8:1::2")
)

// netEnv is an env with an uplink to an outside host.
type netEnv struct {
	*env
	outside string // path of the outside host's netns
	suffix  string // makes container names (and so /run/netns/l3iso-NAME) unique on the machine
	names   []string
	// fwd0 is IPv4 and IPv6 forwarding in the host netns before `up`: a
	// new namespace inherits the machine's ip_forward, so it is 1 on a
	// host that forwards, and l3iso must leave it as it found it.
	fwd0 [2]string
}

// forwardSysctls are IPv4 and IPv6 forwarding (sysctl paths).
var forwardSysctls = [2]string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}

// forwarding reads forwardSysctls in the host netns.
func (n *netEnv) forwarding() [2]string {
	return [2]string{n.sysctl(forwardSysctls[0]), n.sysctl(forwardSysctls[1])}
}

// newNetEnv builds the env, its outside host and uplink, and brings l3iso
// up with --uplink up0 and the given delivery. Cleanup runs `down` and then
// checks that no namespace, veth, bridge or pin of it is left — and removes
// any namespace that is, so a failed test leaves nothing behind either.
func newNetEnv(t *testing.T, delivery string) *netEnv {
	t.Helper()
	e := newBareEnv(t)
	b := make([]byte, 3)
	rand.Read(b)
	n := &netEnv{env: e, outside: sockprobe.NewNetns(t), suffix: hex.EncodeToString(b)}
	hostNS, outNS := filepath.Base(e.netns), filepath.Base(n.outside)
	ipRun(t, [][]string{
		{"link", "add", "up0", "netns", hostNS, "type", "veth", "peer", "name", "eth0", "netns", outNS},
		{"-n", hostNS, "addr", "add", hostUp4.String() + "/24", "dev", "up0"},
		{"-n", hostNS, "addr", "add", hostUp6.String() + "/64", "dev", "up0", "nodad"},
		{"-n", outNS, "addr", "add", outside4.String() + "/24", "dev", "eth0"},
		{"-n", outNS, "addr", "add", outside6.String() + "/64", "dev", "eth0", "nodad"},
		// Link-local addresses usable at once, as on an uplink that has
		// been up a while: while DAD runs (1–2 s) the host sends no
		// neighbour solicitation, and a container's first datagrams out
		// would wait for the next probe, past a test's patience.
		{"-n", hostNS, "link", "set", "up0", "addrgenmode", "none"},
		{"-n", outNS, "link", "set", "eth0", "addrgenmode", "none"},
		{"-n", hostNS, "addr", "add", "fe80::1:1/64", "dev", "up0", "nodad"},
		{"-n", outNS, "addr", "add", "fe80::1:2/64", "dev", "eth0", "nodad"},
		{"-n", hostNS, "link", "set", "up0", "up"},
		{"-n", outNS, "link", "set", "eth0", "up"},
		// One plain route via the host per family, as on any peer.
		{"-n", outNS, "route", "add", "10.0.0.0/8", "via", hostUp4.String()},
		{"-n", outNS, "route", "add", "fd00::/8", "via", hostUp6.String()},
		{"-n", hostNS, "route", "add", "default", "via", outside4.String()},
		{"-n", hostNS, "route", "add", "default", "via", outside6.String()},
	}...)
	// Registered before up's own cleanup, so it runs after `down`.
	t.Cleanup(func() {
		var left []string
		for _, c := range n.names {
			if _, err := os.Stat(veth.NetnsPath(n.key(c))); err == nil {
				left = append(left, veth.NetnsName(n.key(c)))
				unix.Unmount(veth.NetnsPath(n.key(c)), unix.MNT_DETACH)
				os.Remove(veth.NetnsPath(n.key(c)))
			}
		}
		if len(left) > 0 {
			t.Errorf("down left network namespaces %v (removed now)", left)
		}
		out, _ := exec.Command("ip", "-n", hostNS, "-br", "link").CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, veth.HostIfPrefix) || strings.HasPrefix(line, veth.BridgeName) {
				t.Errorf("down left interface %s", strings.Fields(line)[0])
			}
		}
		if fwd := n.forwarding(); fwd != n.fwd0 {
			t.Errorf("down left forwarding (IPv4, IPv6) = %v; it was %v before up", fwd, n.fwd0)
		}
	})
	n.fwd0 = n.forwarding()
	e.up("--uplink", "up0", "--delivery", delivery)
	return n
}

// name returns the machine-unique name of test container base.
func (n *netEnv) name(base string) string { return base + "-" + n.suffix }

// add creates netns container base with the given addresses.
func (n *netEnv) add(base string, addrs ...string) string {
	n.t.Helper()
	name := n.name(base)
	n.names = append(n.names, name)
	args := []string{"container", "add", name, "--mode", "netns"}
	for _, a := range addrs {
		args = append(args, "--addr", a)
	}
	n.mustRun(args...)
	return name
}

// in starts an agent in container name: its cgroup and its netns.
func (n *netEnv) in(name string) *sockprobe.Agent {
	n.t.Helper()
	return sockprobe.Start(n.t, sockprobe.Options{CgroupDir: n.cgroupOf(name), NetnsPath: veth.NetnsPath(n.key(name))})
}

// out starts an agent on the outside host.
func (n *netEnv) out() *sockprobe.Agent {
	n.t.Helper()
	return sockprobe.Start(n.t, sockprobe.Options{NetnsPath: n.outside})
}

// sysctl reads /proc/sys/KEY in the host netns.
func (n *netEnv) sysctl(key string) string {
	out, err := exec.Command("nsenter", "--net="+n.netns, "cat", "/proc/sys/"+key).CombinedOutput()
	if err != nil {
		return "?" + string(out)
	}
	return strings.TrimSpace(string(out))
}

// setSysctl writes key (dotted) in the host namespace.
func (n *netEnv) setSysctl(key, val string) {
	n.t.Helper()
	if out, err := exec.Command("nsenter", "--net="+n.netns, "sysctl", "-qw", key+"="+val).CombinedOutput(); err != nil {
		n.t.Fatalf("sysctl %s=%s: %v: %s", key, val, err, out)
	}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// tcpExchange connects client socket cid of agent from to dst; listener
// lid of agent to must accept the connection from wantSrc, and a ping and
// a pong must cross it.
func tcpExchange(t *testing.T, from *sockprobe.Agent, cid int, to *sockprobe.Agent, lid int, dst netip.AddrPort, wantSrc netip.Addr) {
	t.Helper()
	if err := from.Connect(cid, dst); err != nil {
		t.Fatalf("connect %s: %v", dst, err)
	}
	aid, peer, err := to.Accept(lid, 3*time.Second)
	if err != nil {
		t.Fatalf("accept on %s: %v", dst, err)
	}
	defer to.Close(aid)
	if peer.Addr() != wantSrc {
		t.Errorf("tcp %s: connection from %s, want from %s", dst, peer.Addr(), wantSrc)
	}
	if err := from.Write(cid, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if b, err := to.Read(aid, 3*time.Second); err != nil || string(b) != "ping" {
		t.Fatalf("tcp %s: server read %q, %v", dst, b, err)
	}
	if err := to.Write(aid, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if b, err := from.Read(cid, 3*time.Second); err != nil || string(b) != "pong" {
		t.Fatalf("tcp %s: client read %q, %v", dst, b, err)
	}
}

// reach checks one TCP connection (both directions of data) or one UDP
// exchange from agent from to agent to, listening on dst, and that to sees
// wantSrc as the peer (the client binds nothing: its source is chosen by the
// kernel and l3iso).
func reach(t *testing.T, typ int, from, to *sockprobe.Agent, dst netip.AddrPort, wantSrc netip.Addr) {
	t.Helper()
	fam := family(dst.Addr())
	sid := to.Socket(fam, typ, 0)
	defer to.Close(sid)
	to.SetReuseAddr(sid)
	if err := to.Bind(sid, dst); err != nil {
		t.Fatalf("server bind %s: %v", dst, err)
	}
	cid := from.Socket(fam, typ, 0)
	defer from.Close(cid)
	if typ == unix.SOCK_STREAM {
		if err := to.Listen(sid); err != nil {
			t.Fatal(err)
		}
		tcpExchange(t, from, cid, to, sid, dst, wantSrc)
		return
	}
	if err := from.SendTo(cid, dst, []byte("ping")); err != nil {
		t.Fatalf("udp send to %s: %v", dst, err)
	}
	b, peer, _, err := to.RecvFrom(sid, 3*time.Second)
	if err != nil || string(b) != "ping" {
		t.Fatalf("udp %s: server got %q, %v", dst, b, err)
	}
	if peer.Addr() != wantSrc {
		t.Errorf("udp %s: datagram from %s, want from %s", dst, peer.Addr(), wantSrc)
	}
	if err := to.SendTo(sid, peer, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if b, _, _, err := from.RecvFrom(cid, 3*time.Second); err != nil || string(b) != "pong" {
		t.Fatalf("udp %s: client got %q, %v", dst, b, err)
	}
}

// statusJSON reads `l3iso status -o json`.
func (e *env) status() statusJSON {
	e.t.Helper()
	var st statusJSON
	if err := decodeStrict(e.mustRun("status", "-o", "json"), &st); err != nil {
		e.t.Fatalf("status -o json: %v", err)
	}
	return st
}

// tcxOn returns the names of the TCX ingress programs on interface ifname,
// as status shows them, but for l3_tc_group (broadcast and multicast, on
// the uplink in every delivery mode: see rule6_broadcast_test.go).
func tcxOn(st statusJSON, ifname string) []string {
	var out []string
	for _, i := range st.Interfaces {
		if i.Name == ifname {
			for _, p := range i.Programs {
				if p.Direction == "ingress" && p.Name != "l3_tc_group" {
					out = append(out, p.Name)
				}
			}
		}
	}
	return out
}

// hostCounters are what the host stack counts of forwarded and filtered
// packets: the nftables counters of chains on the forward and input hooks
// that match container traffic, and the IP forwarding counters.
type hostCounters struct {
	nftForward, nftInput, forw4, forw6 uint64
}

func (n *netEnv) installNFT() {
	n.t.Helper()
	rules := `table inet l3t {
	chain l3fwd { type filter hook forward priority 0; policy accept; counter; }
	chain l3in {
		type filter hook input priority 0; policy accept;
		ip saddr 10.78.0.0/24 counter
		ip daddr 10.78.0.0/24 counter
		ip6 saddr fd78::/64 counter
		ip6 daddr fd78::/64 counter
	}
}
`
	cmd := exec.Command("nsenter", "--net="+n.netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("nft: %v: %s", err, out)
	}
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

func (n *netEnv) hostCounters() hostCounters {
	n.t.Helper()
	var c hostCounters
	for chain, dst := range map[string]*uint64{"l3fwd": &c.nftForward, "l3in": &c.nftInput} {
		out, err := exec.Command("nsenter", "--net="+n.netns, "nft", "list", "chain", "inet", "l3t", chain).CombinedOutput()
		if err != nil {
			n.t.Fatalf("nft list chain %s: %v: %s", chain, err, out)
		}
		for _, m := range packetsRE.FindAllStringSubmatch(string(out), -1) {
			v, _ := strconv.ParseUint(m[1], 10, 64)
			*dst += v
		}
	}
	c.forw4 = netCounter(n.t, n.netns, "Ip:ForwDatagrams")
	c.forw6 = netCounter(n.t, n.netns, "Ip6OutForwDatagrams")
	return c
}

// checkSpoof sends, from inside container a's namespace but from outside
// its cgroup (so the socket programs cannot stop it, as if the container
// had found a way around them), datagrams whose source a does not own:
// another container's address and an address nobody owns. The TC program on
// a's veth must drop them and count them.
func checkSpoof(t *testing.T, n *netEnv, a string, other [2]netip.Addr) {
	checkSpoofAt(t, n, a, veth.NetnsPath(n.key(a)), "eth0", other)
}

// checkSpoofAt is checkSpoof for container a whose namespace is at nsPath
// (a runtime's, for one the CNI plugin made) with its veth side ifName.
func checkSpoofAt(t *testing.T, n *netEnv, a, nsPath, ifName string, other [2]netip.Addr) {
	out := n.out()
	before := n.counters()[a]["tc_dropped_spoof"]
	sent := 0
	for fi, src := range []netip.Addr{other[0], other[1], netip.MustParseAddr("10.78.0.99"), netip.MustParseAddr("fd78::99")} {
		dst := []netip.Addr{outside4, outside6}[fi%2]
		sid := out.Socket(family(dst), unix.SOCK_DGRAM, 0)
		if err := out.Bind(sid, netip.AddrPortFrom(dst, 7600)); err != nil {
			t.Fatal(err)
		}
		err := veth.DoAt(nsPath, func() error {
			h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				return err
			}
			defer h.Close()
			eth0, err := h.LinkByName(ifName)
			if err != nil {
				return err
			}
			addr := &netlink.Addr{IPNet: netlink.NewIPNet(src.AsSlice()), Flags: unix.IFA_F_NODAD}
			if err := h.AddrAdd(eth0, addr); err != nil {
				return fmt.Errorf("add %s to eth0: %w", src, err)
			}
			defer h.AddrDel(eth0, addr)
			fd, err := unix.Socket(family(src), unix.SOCK_DGRAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			var sa, da unix.Sockaddr
			if src.Is4() {
				sa, da = &unix.SockaddrInet4{Addr: src.As4()}, &unix.SockaddrInet4{Addr: dst.As4(), Port: 7600}
			} else {
				sa, da = &unix.SockaddrInet6{Addr: src.As16()}, &unix.SockaddrInet6{Addr: dst.As16(), Port: 7600}
			}
			if err := unix.Bind(fd, sa); err != nil {
				return fmt.Errorf("bind %s: %w", src, err)
			}
			for i := 0; i < 3; i++ {
				if err := unix.Sendto(fd, []byte("spoof"), 0, da); err != nil {
					return fmt.Errorf("send from %s: %w", src, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("spoof from %s: %v", src, err)
		}
		sent += 3
		if b, from, _, err := out.RecvFrom(sid, 300*time.Millisecond); err == nil {
			t.Errorf("the outside host received %q from %s: a spoofed source left container %s", b, from, a)
		}
		out.Close(sid)
	}
	if got := n.counters()[a]["tc_dropped_spoof"] - before; got < uint64(sent) {
		t.Errorf("tc_dropped_spoof of %s rose by %d, want %d", a, got, sent)
	}
}
