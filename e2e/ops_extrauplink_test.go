package e2e

// Extra uplinks (`up --extra-uplink`): a host with a second network that
// routes the containers' addresses to it through another interface. Only
// the uplink and lo have l3iso's TCX programs unless the operator names
// the others: a shared container's wildcard listener holds a shadow port
// (docs/ARCHITECTURE.md, "Sharing a port"), so what arrives elsewhere is
// refused at it, and direct delivery puts nothing from there into a netns
// container.

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// addSecondNetwork joins the env's host namespace to a new "second
// network" namespace through veth x1 (host side) and returns the second
// network's namespace. Its hosts route the containers' prefixes via the
// host's x1 address, as the uplink's peers route them via up0's.
//
//	second netns              env netns
//	eth0 198.51.100.2  ─veth─  x1 198.51.100.1
//	     2001:db8:2::2             2001:db8:2::1
func (n *netEnv) addSecondNetwork(ifname string) string {
	t := n.t
	t.Helper()
	second := sockprobe.NewNetns(t)
	hostNS, secNS := filepath.Base(n.netns), filepath.Base(second)
	ipRun(t, [][]string{
		{"link", "add", ifname, "netns", hostNS, "type", "veth", "peer", "name", "eth0", "netns", secNS},
		{"-n", hostNS, "addr", "add", "198.51.100.1/24", "dev", ifname},
		{"-n", hostNS, "addr", "add", "2001:db8:2::1/64", "dev", ifname, "nodad"},
		{"-n", secNS, "addr", "add", "198.51.100.2/24", "dev", "eth0"},
		{"-n", secNS, "addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad"},
		{"-n", hostNS, "link", "set", ifname, "addrgenmode", "none"},
		{"-n", secNS, "link", "set", "eth0", "addrgenmode", "none"},
		{"-n", hostNS, "addr", "add", "fe80::2:1/64", "dev", ifname, "nodad"},
		{"-n", secNS, "addr", "add", "fe80::2:2/64", "dev", "eth0", "nodad"},
		{"-n", hostNS, "link", "set", ifname, "up"},
		{"-n", secNS, "link", "set", "eth0", "up"},
		{"-n", secNS, "route", "add", "10.0.0.0/8", "via", "198.51.100.1"},
		{"-n", secNS, "route", "add", "fd00::/8", "via", "2001:db8:2::1"},
	}...)
	return second
}

// programsOn lists the TCX programs status shows on interface ifname, as
// "direction/name".
func programsOn(st statusJSON, ifname string) []string {
	var out []string
	for _, i := range st.Interfaces {
		if i.Name == ifname {
			for _, p := range i.Programs {
				out = append(out, p.Direction+"/"+p.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestExtraUplink: from a second network behind interface x1, a shared
// container's wildcard TCP listener and UDP socket (and its subnet's
// broadcast) and a netns container are reached once x1 is an extra
// uplink — IPv4 and IPv6, the UDP reply from the port the client sent
// to — and not before (the control: refused, or lost; the netns container
// in direct delivery only: bridge delivery's kernel forwards to it);
// status shows x1 and its programs, up repairs them, bad names change
// nothing, dropping x1 detaches them, and a vanished x1 is a problem.
func TestExtraUplink(t *testing.T) {
	t.Parallel()
	for _, delivery := range []string{"direct", "bridge"} {
		t.Run(delivery, func(t *testing.T) { testExtraUplink(t, delivery) })
	}
}

func testExtraUplink(t *testing.T, delivery string) {
	const tcpPort, udpPort, netnsPort = 7621, 7622, 7623
	n := newNetEnv(t, delivery)
	second := n.addSecondNetwork("x1")
	s := n.name("s")
	n.mustRun("container", "add", s, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
	c := n.add("c", "10.78.0.3/24", "fd78::3/64")
	ins, inc := n.agent(s), n.in(c)
	far := sockprobe.Start(t, sockprobe.Options{NetnsPath: second})

	fams := []struct {
		name           string
		fam            int
		shared, netns  netip.Addr
		src            netip.Addr
		sharedL, netnL [2]int // TCP and UDP wildcard sockets in s; TCP in c
	}{
		{name: "ipv4", fam: unix.AF_INET, shared: netip.MustParseAddr("10.79.0.1"), netns: netip.MustParseAddr("10.78.0.3"), src: netip.MustParseAddr("198.51.100.2")},
		{name: "ipv6", fam: unix.AF_INET6, shared: netip.MustParseAddr("fd79::1"), netns: netip.MustParseAddr("fd78::3"), src: netip.MustParseAddr("2001:db8:2::2")},
	}
	for i := range fams {
		f := &fams[i]
		f.sharedL = [2]int{wildListener(t, ins, unix.SOCK_STREAM, f.fam, tcpPort), wildListener(t, ins, unix.SOCK_DGRAM, f.fam, udpPort)}
		f.netnL[0] = wildListener(t, inc, unix.SOCK_STREAM, f.fam, netnsPort)
	}

	// connectFrom connects from the second network to dst: nil, or why not.
	connectFrom := func(dst netip.AddrPort) error {
		id := far.Socket(family(dst.Addr()), unix.SOCK_STREAM, 0)
		defer far.Close(id)
		return far.Connect(id, dst)
	}
	// reached checks that a connection from the second network to dst is
	// accepted by listener lid of agent a, from the second network's
	// address src.
	reached := func(t *testing.T, a *sockprobe.Agent, lid int, dst netip.AddrPort, src netip.Addr) {
		t.Helper()
		id := far.Socket(family(dst.Addr()), unix.SOCK_STREAM, 0)
		defer far.Close(id)
		tcpExchange(t, far, id, a, lid, dst, src)
	}

	// The control: without the extra uplink, the second network's SYN to
	// s comes in on x1, where nothing steers it to s's shadow port, and
	// l3_sk_lookup refuses it; c gets nothing in direct delivery
	// (forwarding off; bridge delivery forwards).
	for _, f := range fams {
		if err := connectFrom(netip.AddrPortFrom(f.shared, tcpPort)); err == nil {
			t.Fatalf("%s: the second network reached s's wildcard listener without an extra uplink: the control does not hold", f.name)
		}
		if delivery != "direct" {
			continue
		}
		if err := connectFrom(netip.AddrPortFrom(f.netns, netnsPort)); err == nil {
			t.Fatalf("%s: the second network reached netns container c without an extra uplink: the control does not hold", f.name)
		}
		// What was queued for the listeners by a failed attempt, if anything.
		if id, _, err := ins.Accept(f.sharedL[0], 10*time.Millisecond); err == nil {
			ins.Close(id)
		}
	}

	// Bad names change nothing. t0: a tun device, no Ethernet header.
	ipRun(t, []string{"-n", filepath.Base(n.netns), "tuntap", "add", "t0", "mode", "tun"})
	for _, bad := range []struct {
		args []string
		says string
	}{
		{[]string{"--extra-uplink", "nosuch0"}, "--extra-uplink nosuch0: interface missing"},
		{[]string{"--extra-uplink", "up0"}, "is the uplink itself"},
		{[]string{"--extra-uplink", "x1", "--extra-uplink", "x1"}, "given twice"},
		{[]string{"--extra-uplink", "lo"}, "--extra-uplink lo"},
		{[]string{"--extra-uplink", "t0"}, "--extra-uplink t0 is no Ethernet interface (link/none)"},
		{[]string{"--uplink", "t0"}, "--uplink t0 is no Ethernet interface"},
	} {
		r := n.run(append([]string{"up"}, bad.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, bad.says) {
			t.Errorf("up %v: exit %d, stderr %q; want a failure saying %q", bad.args, r.code, r.stderr, bad.says)
		}
		if st := n.status(); len(st.ExtraUplinks) != 0 || len(programsOn(st, "x1")) != 0 || len(programsOn(st, "t0")) != 0 || st.Uplink != "up0" {
			t.Errorf("up %v failed but changed the installation: uplink %s, extra uplinks %v, programs on x1 %v, on t0 %v", bad.args, st.Uplink, st.ExtraUplinks, programsOn(st, "x1"), programsOn(st, "t0"))
		}
	}

	if out := n.mustRun("up", "--extra-uplink", "x1"); !strings.Contains(out, "extra uplinks now x1 (were none)") {
		t.Errorf("up --extra-uplink x1 says %q", out)
	}
	if recs := n.history(); len(recs) == 0 || recs[len(recs)-1].Command != "up" || !slices.Contains(recs[len(recs)-1].Changes, "extra uplinks now x1 (were none)") {
		t.Errorf("the audit log does not record the extra uplink: %+v", recs)
	}
	st := n.status()
	if !slices.Equal(st.ExtraUplinks, []string{"x1"}) {
		t.Errorf("status: extra_uplinks %v, want [x1]", st.ExtraUplinks)
	}
	want := []string{"egress/l3_tc_group_out", "ingress/l3_tc_group"}
	if delivery == "direct" {
		want = append(want, "ingress/l3_tc_uplink")
	}
	if got := programsOn(st, "x1"); !slices.Equal(got, want) {
		t.Errorf("status: programs on x1 %v, want %v", got, want)
	}
	if r := n.run("status"); !strings.Contains(r.stdout, "extra uplinks: x1") {
		t.Errorf("status does not show the extra uplink:\n%s", r.stdout)
	}
	if out := n.mustRun("up"); !strings.Contains(out, "nothing changed") {
		t.Errorf("a bare up after --extra-uplink x1: %q, want nothing changed (it keeps x1)", out)
	}

	check := func(t *testing.T) {
		for _, f := range fams {
			t.Run(f.name, func(t *testing.T) {
				t.Run("shared-tcp", func(t *testing.T) {
					reached(t, ins, f.sharedL[0], netip.AddrPortFrom(f.shared, tcpPort), f.src)
				})
				for _, size := range []int{4, 4000} {
					t.Run(fmt.Sprintf("shared-udp-%d", size), func(t *testing.T) {
						udpRoundTrip(t, far, ins, f.sharedL[1], netip.AddrPortFrom(f.shared, udpPort), f.src, size)
					})
				}
				t.Run("netns-tcp", func(t *testing.T) {
					reached(t, inc, f.netnL[0], netip.AddrPortFrom(f.netns, netnsPort), f.src)
				})
				if f.fam == unix.AF_INET {
					// s's subnet's broadcast address, routed here from
					// the second network: to its wildcard socket.
					t.Run("shared-bcast", func(t *testing.T) {
						id := far.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
						defer far.Close(id)
						dst := netip.MustParseAddrPort("10.79.0.255:7622")
						if err := far.SendTo(id, dst, []byte("all")); err != nil {
							t.Fatal(err)
						}
						if b, from, _, err := ins.RecvFrom(f.sharedL[1], 3*time.Second); err != nil || string(b) != "all" || from.Addr() != f.src {
							t.Errorf("s's wildcard socket got %q from %v, %v; want the broadcast to %v from %v", b, from, err, dst, f.src)
						}
					})
				}
			})
		}
	}
	t.Run("reached", check)

	// A detached program on x1 is a problem status names and up repairs.
	pin := "links/tc-x1-group"
	n.detach(pin)
	n.expectProblem(pin, "detached")
	n.repaired(pin, "detached")
	t.Run("reached-after-repair", check)

	if out := n.mustRun("up", "--extra-uplink", ""); !strings.Contains(out, "extra uplinks now none (were x1)") {
		t.Errorf("up --extra-uplink \"\" says %q", out)
	}
	st = n.status()
	if len(st.ExtraUplinks) != 0 || len(programsOn(st, "x1")) != 0 {
		t.Errorf("after dropping x1: extra uplinks %v, programs on x1 %v; want none", st.ExtraUplinks, programsOn(st, "x1"))
	}
	for _, f := range fams {
		if err := connectFrom(netip.AddrPortFrom(f.shared, tcpPort)); err == nil {
			t.Errorf("%s: the second network still reaches s after x1 was dropped", f.name)
		}
	}

	// An extra uplink that vanishes (unplugged): status names it, commands
	// on containers go on, a bare up says what to do, and dropping it
	// clears the installation.
	n.mustRun("up", "--extra-uplink", "x1")
	ipRun(t, []string{"-n", filepath.Base(n.netns), "link", "del", "x1"})
	n.expectProblem("interface x1", "missing")
	n.mustRun("container", "add", n.name("s2"), "--addr", "10.79.0.2/24")
	if r := n.run("up"); r.code == 0 || !strings.Contains(r.stderr, "extra uplink x1") || !strings.Contains(r.stderr, "--extra-uplink") {
		t.Errorf("a bare up with x1 gone: exit %d, stderr %q; want a failure naming x1 and --extra-uplink", r.code, r.stderr)
	}
	n.mustRun("up", "--extra-uplink", "")
	if r := n.run("status"); r.code != 0 || !strings.Contains(r.stdout, "problems:     none") {
		t.Errorf("status after dropping the vanished x1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
