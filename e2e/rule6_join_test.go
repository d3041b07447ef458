package e2e

// Rule 6 as a namespace of its own would behave (issue 13): a join that
// names no interface.

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestJoinWithoutInterface: a join that names no interface is made on the
// uplink, although the host routes multicast elsewhere (its default route
// is not the uplink): the uplink is where the container's groups arrive.
func TestJoinWithoutInterface(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	hostNS := filepath.Base(n.netns)
	ipRun(t, [][]string{
		{"-n", hostNS, "link", "add", "other0", "type", "veth", "peer", "name", "other1"},
		{"-n", hostNS, "addr", "add", "198.51.100.1/24", "dev", "other0"},
		{"-n", hostNS, "addr", "add", "2001:db8:9::1/64", "dev", "other0", "nodad"},
		{"-n", hostNS, "link", "set", "other0", "up"},
		{"-n", hostNS, "link", "set", "other1", "up"},
		{"-n", hostNS, "route", "replace", "default", "dev", "other0"},
		{"-n", hostNS, "-6", "route", "replace", "default", "dev", "other0"},
		{"-n", filepath.Base(n.outside), "route", "add", "224.0.0.0/4", "via", hostUp4.String()},
	}...)
	name := n.name("m")
	n.names = append(n.names, name)
	n.mustRun("container", "add", name, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64",
		"--mcast", "239.3.0.0/16", "--mcast", "ff15::/16")

	// The joins of the four APIs, none naming an interface, from inside
	// `l3iso exec`; it says "joined" and keeps its sockets.
	n.bg("joined", "exec", name, "--", "python3", "-c", `
import socket, struct, sys, time
def v4():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return s
a = v4(); a.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton("239.3.0.1"), socket.inet_aton("0.0.0.0")))
b = v4(); b.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4si", socket.inet_aton("239.3.0.2"), socket.inet_aton("0.0.0.0"), 0))
c = v4()
gr = struct.pack("I", 0) + b"\0" * 4 + struct.pack("H", socket.AF_INET) + b"\0\0" + socket.inet_aton("239.3.0.3") + b"\0" * 120
c.setsockopt(socket.IPPROTO_IP, 42, gr)  # MCAST_JOIN_GROUP, struct group_req
d = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
d.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, "ff15::3:4") + struct.pack("I", 0))
print("joined", flush=True)
time.sleep(60)
`)
	igmp := func(file string) string {
		out, err := exec.Command("nsenter", "--net="+n.netns, "cat", "/proc/net/"+file).CombinedOutput()
		if err != nil {
			t.Fatalf("read /proc/net/%s: %v: %s", file, err, out)
		}
		return string(out)
	}
	// /proc/net/igmp: a line per device, then its groups (hex, host order).
	groups4 := map[string][]string{}
	dev := ""
	for _, l := range strings.Split(igmp("igmp"), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && strings.HasSuffix(f[1], ":") || len(f) >= 3 && f[2] == ":":
			dev = strings.TrimSuffix(f[1], ":")
		case len(f) >= 1 && len(f[0]) == 8 && dev != "":
			groups4[dev] = append(groups4[dev], f[0])
		}
	}
	for _, g := range []string{"010003EF", "020003EF", "030003EF"} { // 239.3.0.1-3
		if !contains(groups4["up0"], g) {
			t.Errorf("group %s (a join without an interface) is not joined on the uplink up0: %v", g, groups4)
		}
		if contains(groups4["other0"], g) {
			t.Errorf("group %s was joined on other0, where the host routes multicast", g)
		}
	}
	var on6 string
	for _, l := range strings.Split(igmp("igmp6"), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[2] == "ff150000000000000000000000030004" {
			on6 = f[1]
		}
	}
	if on6 != "up0" {
		t.Errorf("ff15::3:4 (an IPv6 join without an interface) is joined on %q, want up0", on6)
	}

	// And what the uplink brings arrives: an agent's join (ip_mreqn or
	// ipv6_mreq, ifindex 0) receives the outside host's datagram, IPv4 and
	// IPv6.
	in := n.agent(name)
	out := n.out()
	for _, g := range []netip.Addr{netip.MustParseAddr("239.3.1.1"), netip.MustParseAddr("ff15::3:1:1")} {
		fam := family(g)
		s := udpBound(t, in, fam, grpPort)
		if err := in.JoinGroup(s, g, 0); err != nil {
			t.Fatalf("join %s without an interface: %v", g, err)
		}
		o := out.Socket(fam, unix.SOCK_DGRAM, 0)
		if err := out.SendTo(o, netip.AddrPortFrom(g, grpPort), []byte("g")); err != nil {
			t.Fatalf("outside host's send to %s: %v", g, err)
		}
		if _, _, dst, err := in.RecvFrom(s, 2*time.Second); err != nil {
			t.Errorf("the datagram to group %s from the uplink did not arrive: %v", g, err)
		} else if dst != g {
			t.Errorf("the datagram to group %s arrived with destination %s", g, dst)
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
