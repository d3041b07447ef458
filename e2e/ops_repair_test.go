package e2e

// Tampering, detection and repair (issue 12): what a process with access to
// l3iso's pins (container root, before exec hid bpffs) or a careless
// operator can do to an installation — BPF_LINK_DETACH a link and leave its
// pin, unlink a pin, remove a TCX link, flip disable_ipv6, delete a route —
// `status` finds (from the kernel, not the configuration: it exits 1 and
// says "run `l3iso up` to repair"), and a bare `up` repairs, after which
// the rules hold again.

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/loader"
)

const repairHint = "run `l3iso up` to repair"

// expectProblem runs `status` and `status -o json`: each must exit 1, say
// repairHint and report a problem that names every fragment.
func (e *env) expectProblem(fragments ...string) {
	e.t.Helper()
	has := func(s string) bool {
		for _, f := range fragments {
			if !strings.Contains(s, f) {
				return false
			}
		}
		return true
	}
	r := e.run("status")
	if r.code == 0 {
		e.t.Fatalf("status exits 0 after the tampering; want 1 and a problem naming %q\n%s", fragments, r.stdout)
	}
	if !strings.Contains(r.stdout, repairHint) || !strings.Contains(r.stderr, repairHint) {
		e.t.Errorf("status does not say %q: stdout %q, stderr %q", repairHint, r.stdout, r.stderr)
	}
	if !slices.ContainsFunc(strings.Split(r.stdout, "\n"), has) {
		e.t.Errorf("status names no problem with %q:\n%s", fragments, r.stdout)
	}
	r = e.run("status", "-o", "json")
	if r.code == 0 {
		e.t.Errorf("status -o json exits 0 after the tampering")
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		e.t.Fatalf("status -o json: %v\n%s", err, r.stdout)
	}
	if st.Repair != repairHint {
		e.t.Errorf("status -o json: repair = %q, want %q", st.Repair, repairHint)
	}
	if !slices.ContainsFunc(st.Problems, func(p loader.Problem) bool { return has(p.String()) }) {
		e.t.Errorf("status -o json names no problem with %q: %v", fragments, st.Problems)
	}
}

// repaired runs a bare `up`: it must say it repaired a problem naming every
// fragment, and `status` must find nothing wrong afterwards.
func (e *env) repaired(fragments ...string) {
	e.t.Helper()
	out := e.mustRun("up")
	ok := slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
		if !strings.Contains(l, "repaired: ") {
			return false
		}
		for _, f := range fragments {
			if !strings.Contains(l, f) {
				return false
			}
		}
		return true
	})
	if !ok {
		e.t.Errorf("up does not say it repaired %q:\n%s", fragments, out)
	}
	if r := e.run("status"); r.code != 0 || !strings.Contains(r.stdout, "problems:     none") {
		e.t.Errorf("status after up: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out := e.mustRun("up"); !strings.Contains(out, "nothing changed") {
		e.t.Errorf("a second up: %q, want nothing changed", out)
	}
}

// with is e for subtest t: its helpers fail t, not the whole test.
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// with is n for subtest t.
func (n *netEnv) with(t *testing.T) *netEnv {
	c := *n
	c.env = n.env.with(t)
	return &c
}

// pin is the path of pin name (links/NAME, maps/NAME, progs/NAME).
func (e *env) pin(name string) string { return filepath.Join(e.bpffs, name) }

// detach runs BPF_LINK_DETACH on the pinned link: the pin stays.
func (e *env) detach(pin string) {
	e.t.Helper()
	l, err := link.LoadPinnedLink(e.pin(pin), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil {
		e.t.Fatalf("BPF_LINK_DETACH %s: %v", pin, err)
	}
}

// eventually reports whether cond holds within a second: the kernel
// releases a link whose last reference went (its pin) from a workqueue.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// unpin removes a pin (a link's last reference: the kernel detaches it).
func (e *env) unpin(pin string) {
	e.t.Helper()
	if err := os.Remove(e.pin(pin)); err != nil {
		e.t.Fatal(err)
	}
}

// ip runs ip(8) in the env's netns.
func (e *env) ip(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", filepath.Base(e.netns)}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sysctlIn writes a sysctl (dotted key) in network namespace ns.
func sysctlIn(t *testing.T, ns, key, val string) {
	t.Helper()
	if out, err := exec.Command("nsenter", "--net="+ns, "sysctl", "-qw", key+"="+val).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s=%s: %v: %s", key, val, err, out)
	}
}

// bindErr binds a fresh socket of agent a to addr and closes it.
func bindErr(a *sockprobe.Agent, p proto, addr string) error {
	id := a.Socket(p.family, p.typ, p.protocol)
	defer a.Close(id)
	return a.Bind(id, ap(addr))
}

// TestStatusRepair tampers with a shared-mode installation (addresses on
// lo) in every way status must see, one at a time: status finds each,
// a bare up repairs it, and the rule it broke holds again. A foreign bind
// (web binding db's address, local on the host) shows whether the bind
// hooks run.
func TestStatusRepair(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.2/24", "--addr", "fd77::2")
	if r := e.run("status"); r.code != 0 || !strings.Contains(r.stdout, "problems:     none") {
		t.Fatalf("status of an intact installation: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	web := e.agent("web")
	foreignRefused := func(t *testing.T, when string) {
		t.Helper()
		if err := bindErr(web, tcp4, "10.77.0.2:0"); err != unix.EADDRNOTAVAIL {
			t.Errorf("%s: web binds db's 10.77.0.2: %v, want EADDRNOTAVAIL", when, err)
		}
	}
	foreignRefused(t, "intact")

	t.Run("detached link", func(t *testing.T) {
		e := e.with(t)
		e.detach("links/l3_bind4")
		if err := bindErr(web, tcp4, "10.77.0.2:0"); err != nil {
			t.Fatalf("after BPF_LINK_DETACH of l3_bind4, web's foreign bind: %v; want it to succeed (else the test proves nothing)", err)
		}
		e.expectProblem("links/l3_bind4", "detached")
		if st := e.run("status", "-o", "json"); !strings.Contains(st.stdout, `"target": "(detached)"`) {
			t.Errorf("status -o json does not show l3_bind4's target as (detached):\n%s", st.stdout)
		}
		e.repaired("links/l3_bind4", "detached")
		foreignRefused(t, "after up")
	})
	t.Run("unlinked link pin", func(t *testing.T) {
		e := e.with(t)
		e.unpin("links/l3_bind4")
		if !eventually(func() bool { return bindErr(web, tcp4, "10.77.0.2:0") == nil }) {
			t.Fatalf("after unlinking the l3_bind4 pin, web's foreign bind still fails; want it to succeed")
		}
		e.expectProblem("links/l3_bind4", "pin missing")
		e.repaired("links/l3_bind4", "pin missing")
		foreignRefused(t, "after up")
	})
	t.Run("unlinked map pin", func(t *testing.T) {
		e := e.with(t)
		before := mapID(t, e.pin("maps/l3_conts"))
		e.unpin("maps/l3_conts")
		e.expectProblem("maps/l3_conts", "pin missing")
		// Other commands keep working on the map the programs use.
		if got := e.mustRun("container", "list"); !strings.Contains(got, "web") {
			t.Errorf("container list without the l3_conts pin: %s", got)
		}
		e.repaired("maps/l3_conts", "pin missing")
		if after := mapID(t, e.pin("maps/l3_conts")); after != before {
			t.Errorf("up pinned map %d as l3_conts, want the programs' own, %d", after, before)
		}
		foreignRefused(t, "after up")
	})
	t.Run("unlinked program pin", func(t *testing.T) {
		e := e.with(t)
		e.unpin("progs/l3_tc_veth")
		e.expectProblem("progs/l3_tc_veth", "pin missing")
		e.repaired("progs/l3_tc_veth")
	})
	t.Run("detached TCX link", func(t *testing.T) {
		e := e.with(t)
		e.detach("links/tc-lo-group")
		e.expectProblem("links/tc-lo-group", "detached")
		e.repaired("links/tc-lo-group")
		if got := tcxIn(t, e.netns, "lo"); !slices.Equal(got, []string{"ingress:l3_tc_group"}) {
			t.Errorf("TCX programs on lo after up: %v", got)
		}
	})
	t.Run("removed TCX link", func(t *testing.T) {
		e := e.with(t)
		e.unpin("links/tc-lo-group")
		if !eventually(func() bool { return len(tcxIn(t, e.netns, "lo")) == 0 }) {
			t.Fatalf("TCX programs on lo after unpinning its link: %v, want none", tcxIn(t, e.netns, "lo"))
		}
		e.expectProblem("links/tc-lo-group", "pin missing")
		e.repaired("links/tc-lo-group")
		if got := tcxIn(t, e.netns, "lo"); !slices.Equal(got, []string{"ingress:l3_tc_group"}) {
			t.Errorf("TCX programs on lo after up: %v", got)
		}
	})
	t.Run("disable_ipv6 on lo", func(t *testing.T) {
		e := e.with(t)
		sysctlIn(t, e.netns, "net.ipv6.conf.lo.disable_ipv6", "1")
		sysctlIn(t, e.netns, "net.ipv6.conf.lo.disable_ipv6", "0")
		if err := bindErr(web, tcp6, "[fd77::1]:0"); err != unix.EADDRNOTAVAIL {
			t.Fatalf("after disable_ipv6 on lo, web binds its fd77::1: %v; want EADDRNOTAVAIL (the address should be gone)", err)
		}
		e.expectProblem("address fd77::1", "web", "missing")
		e.expectProblem("address fd6c:3369:736f::", "missing") // a private loopback
		e.repaired("address fd77::1", "web", "missing")
		if err := bindErr(web, tcp6, "[fd77::1]:0"); err != nil {
			t.Errorf("after up, web binds its fd77::1: %v", err)
		}
		if err := bindErr(web, tcp6, "[fd77::2]:0"); err != unix.EADDRNOTAVAIL {
			t.Errorf("after up, web binds db's fd77::2: %v, want EADDRNOTAVAIL", err)
		}
	})
	t.Run("disable_ipv6 left on", func(t *testing.T) {
		e := e.with(t)
		sysctlIn(t, e.netns, "net.ipv6.conf.lo.disable_ipv6", "1")
		e.expectProblem("interface lo", "IPv6 is disabled")
		e.repaired("interface lo", "IPv6 is disabled")
		if err := bindErr(web, tcp6, "[fd77::1]:0"); err != nil {
			t.Errorf("after up, web binds its fd77::1: %v", err)
		}
	})
	t.Run("deleted route", func(t *testing.T) {
		e := e.with(t)
		e.ip("route", "del", "local", "10.77.0.1", "dev", "lo", "table", "local", "proto", "76")
		if err := bindErr(web, tcp4, "10.77.0.1:0"); err != unix.EADDRNOTAVAIL {
			t.Fatalf("after deleting its local route, web binds 10.77.0.1: %v; want EADDRNOTAVAIL", err)
		}
		e.expectProblem("address 10.77.0.1", "web", "local route")
		e.repaired("address 10.77.0.1", "local route")
		if err := bindErr(web, tcp4, "10.77.0.1:0"); err != nil {
			t.Errorf("after up, web binds its 10.77.0.1: %v", err)
		}
		foreignRefused(t, "after up")
	})
}

// TestStatusRepairNetns removes and detaches the TCX links of a netns
// container's veth (ingress and egress) and of the uplink: status finds
// each, up repairs it, and traffic flows through the programs again.
func TestStatusRepairNetns(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	a := n.add("a", "10.78.0.1/24", "fd78::1/64")
	hostIf := n.hostIf(a)
	in, out := n.in(a), n.out()
	port := uint16(7950)
	works := func(t *testing.T) {
		t.Helper()
		port++
		reach(t, unix.SOCK_DGRAM, out, in, netip.AddrPortFrom(netip.MustParseAddr("10.78.0.1"), port), outside4)
		reach(t, unix.SOCK_STREAM, in, out, netip.AddrPortFrom(outside6, port), netip.MustParseAddr("fd78::1"))
	}
	works(t)
	for _, c := range []struct {
		name, pin, ifname string
		detach            bool
	}{
		{"veth link removed", "links/tc-" + hostIf + "-ingress", hostIf, false},
		{"veth link detached", "links/tc-" + hostIf + "-ingress", hostIf, true},
		{"veth egress link removed", "links/tc-" + hostIf + "-egress", hostIf, false},
		{"veth egress link detached", "links/tc-" + hostIf + "-egress", hostIf, true},
		{"uplink link removed", "links/tc-up0-ingress", "up0", false},
		{"uplink link detached", "links/tc-up0-ingress", "up0", true},
		{"uplink group link detached", "links/tc-up0-group-out", "up0", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := n.with(t)
			before := tcxIn(t, n.netns, c.ifname)
			if c.detach {
				n.detach(c.pin)
			} else {
				n.unpin(c.pin)
			}
			if !eventually(func() bool { return len(tcxIn(t, n.netns, c.ifname)) == len(before)-1 }) {
				t.Fatalf("TCX programs on %s: %v, then %v", c.ifname, before, tcxIn(t, n.netns, c.ifname))
			}
			what := "pin missing"
			if c.detach {
				what = "detached"
			}
			n.expectProblem(c.pin, what)
			n.repaired(c.pin, what)
			if got := tcxIn(t, n.netns, c.ifname); !slices.Equal(got, before) {
				t.Errorf("TCX programs on %s after up: %v, want %v", c.ifname, got, before)
			}
			works(t)
		})
	}
	t.Run("disable_ipv6 on the uplink", func(t *testing.T) {
		n := n.with(t)
		n.mustRun("container", "add", "web", "--addr", "fd77::1")
		sysctlIn(t, n.netns, "net.ipv6.conf.up0.disable_ipv6", "1")
		sysctlIn(t, n.netns, "net.ipv6.conf.up0.disable_ipv6", "0")
		n.expectProblem("address fd77::1", "web", "missing")
		n.repaired("address fd77::1", "missing")
		if got := n.ip("-6", "addr", "show", "dev", "up0"); !strings.Contains(got, "fd77::1/128") {
			t.Errorf("up did not put fd77::1 back on up0:\n%s", got)
		}
		// The uplink's own addresses are the operator's: put them back
		// for the other checks.
		n.ip("addr", "replace", hostUp6.String()+"/64", "dev", "up0", "nodad")
		n.ip("addr", "replace", "fe80::1:1/64", "dev", "up0", "nodad")
		n.ip("-6", "route", "replace", "default", "via", outside6.String())
	})
}

// TestUpRemembers: a bare `up` keeps what the first was told (the unit in
// examples/ runs one at every boot), and --cgroup-root cannot change under
// a running installation.
func TestUpRemembers(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "routed")
	a := n.add("a", "10.78.0.1/24")
	if out := n.mustRun("up"); !strings.Contains(out, "nothing changed") {
		t.Errorf("bare up after up --uplink up0 --delivery routed: %q", out)
	}
	st := n.status()
	if st.Uplink != "up0" || st.Delivery != "routed" || st.CgroupRoot != n.cgroot {
		t.Errorf("after a bare up: uplink %q, delivery %s, cgroup root %s", st.Uplink, st.Delivery, st.CgroupRoot)
	}
	if out := n.mustRun("up", "--delivery", "direct"); !strings.Contains(out, "delivery switched from routed to direct") {
		t.Errorf("up --delivery direct: %q", out)
	}
	if st := n.status(); st.Uplink != "up0" || st.Delivery != "direct" {
		t.Errorf("up --delivery direct alone: uplink %q, delivery %s", st.Uplink, st.Delivery)
	}
	other := sockprobe.NewCgroup(t, "")
	n.mustFail([]string{"--cgroup-root", n.cgroot, other, "l3iso down"}, "up", "--cgroup-root", other)
	if st := n.status(); st.CgroupRoot != n.cgroot || len(st.Containers) != 1 {
		t.Errorf("a refused up changed the installation: cgroup root %s, %d containers", st.CgroupRoot, len(st.Containers))
	}
	reach(t, unix.SOCK_DGRAM, n.out(), n.in(a), netip.MustParseAddrPort("10.78.0.1:7960"), outside4)
	// --uplink lo is no uplink (the addresses live on lo): not a second
	// set of lo's programs.
	if out := n.mustRun("up", "--uplink", "lo"); !strings.Contains(out, "uplink switched from up0 to none (lo)") {
		t.Errorf("up --uplink lo: %q", out)
	}
	if st := n.status(); st.Uplink != "" || len(st.Problems) != 0 {
		t.Errorf("after up --uplink lo: uplink %q, problems %v", st.Uplink, st.Problems)
	}
}

// TestUplinkSwitch: `up --uplink up1` on a running host moves what lived on
// up0 — the TCX programs, direct delivery, the shared containers' IPv6
// addresses — while a TCP connection into a netns container and one into a
// shared container stay up; the peer then routes through up1.
func TestUplinkSwitch(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	hostNS, outNS := filepath.Base(n.netns), filepath.Base(n.outside)
	host4, host6 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:2::1")
	out4, out6 := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8:2::2")
	ipRun(t, [][]string{
		{"link", "add", "up1", "netns", hostNS, "type", "veth", "peer", "name", "eth1", "netns", outNS},
		{"-n", hostNS, "addr", "add", host4.String() + "/24", "dev", "up1"},
		{"-n", outNS, "addr", "add", out4.String() + "/24", "dev", "eth1"},
		{"-n", hostNS, "link", "set", "up1", "addrgenmode", "none"},
		{"-n", outNS, "link", "set", "eth1", "addrgenmode", "none"},
		{"-n", hostNS, "addr", "add", host6.String() + "/64", "dev", "up1", "nodad"},
		{"-n", outNS, "addr", "add", out6.String() + "/64", "dev", "eth1", "nodad"},
		{"-n", hostNS, "addr", "add", "fe80::2:1/64", "dev", "up1", "nodad"},
		{"-n", outNS, "addr", "add", "fe80::2:2/64", "dev", "eth1", "nodad"},
		{"-n", hostNS, "link", "set", "up1", "up"},
		{"-n", outNS, "link", "set", "eth1", "up"},
	}...)
	// The peer's packets move to up1 while connections are open: no
	// reverse-path filter may drop them (a namespace inherits the host's).
	for _, ns := range []string{n.netns, n.outside} {
		sysctlIn(t, ns, "net.ipv4.conf.all.rp_filter", "0")
		sysctlIn(t, ns, "net.ipv4.conf.default.rp_filter", "0")
	}
	for _, i := range []string{"up0", "up1"} {
		sysctlIn(t, n.netns, "net.ipv4.conf."+i+".rp_filter", "0")
	}
	a := n.add("a", "10.78.0.1/24", "fd78::1/64")
	n.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	if got := n.ip("-6", "addr", "show", "dev", "up0"); !strings.Contains(got, "fd77::1/128") {
		t.Fatalf("web's fd77::1 is not on the uplink up0:\n%s", got)
	}
	ina, web, out := n.in(a), n.agent("web"), n.out()

	// One TCP connection into each container, from the outside.
	type conn struct {
		name     string
		srv      *sockprobe.Agent
		cid, sid int
	}
	var conns []conn
	for _, c := range []struct {
		name string
		srv  *sockprobe.Agent
		p    proto
		addr string
	}{
		{"netns a, IPv4", ina, tcp4, "10.78.0.1:7970"},
		{"netns a, IPv6", ina, tcp6, "[fd78::1]:7971"},
		{"shared web, IPv4", web, tcp4, "10.77.0.1:7972"},
		{"shared web, IPv6", web, tcp6, "[fd77::1]:7973"},
	} {
		cid, sid := tcpConn(t, out, c.srv, c.p, c.addr)
		conns = append(conns, conn{c.name, c.srv, cid, sid})
	}
	talk := func(when string) {
		t.Helper()
		for _, c := range conns {
			msg := []byte(c.name + " " + when)
			if err := out.Write(c.cid, msg); err != nil {
				t.Fatalf("%s, %s: write: %v", c.name, when, err)
			}
			if got, err := c.srv.Read(c.sid, 3*time.Second); err != nil || string(got) != string(msg) {
				t.Fatalf("%s, %s: server read %q, %v", c.name, when, got, err)
			}
			if err := c.srv.Write(c.sid, msg); err != nil {
				t.Fatalf("%s, %s: server write: %v", c.name, when, err)
			}
			if got, err := out.Read(c.cid, 3*time.Second); err != nil || string(got) != string(msg) {
				t.Fatalf("%s, %s: client read %q, %v", c.name, when, got, err)
			}
		}
	}
	talk("before")

	if got := n.mustRun("up", "--uplink", "up1"); !strings.Contains(got, "uplink switched from up0 to up1") {
		t.Errorf("up --uplink up1: %q", got)
	}
	// The peer now reaches the host's containers through up1, and the
	// host its default routes.
	ipRun(t, []string{"-n", outNS, "route", "replace", "10.0.0.0/8", "via", host4.String()},
		[]string{"-n", outNS, "route", "replace", "fd00::/8", "via", host6.String()},
		[]string{"-n", hostNS, "route", "replace", "default", "via", out4.String()},
		[]string{"-n", hostNS, "route", "replace", "default", "via", out6.String()})
	talk("after the switch")

	st := n.status()
	if st.Uplink != "up1" || st.Delivery != "direct" || len(st.Containers) != 2 {
		t.Errorf("after the switch: uplink %q, delivery %s, %d containers", st.Uplink, st.Delivery, len(st.Containers))
	}
	if got := tcxIn(t, n.netns, "up1"); !slices.Equal(got, []string{"ingress:l3_tc_uplink", "ingress:l3_tc_group", "egress:l3_tc_group_out"}) {
		t.Errorf("TCX programs on up1: %v", got)
	}
	if got := tcxIn(t, n.netns, "up0"); len(got) != 0 {
		t.Errorf("TCX programs left on up0: %v", got)
	}
	if pins, _ := filepath.Glob(filepath.Join(n.bpffs, "links", "tc-up0-*")); len(pins) != 0 {
		t.Errorf("TC link pins of up0 left: %v", pins)
	}
	if got := n.ip("-6", "addr", "show", "dev", "up0"); strings.Contains(got, "fd77::1") {
		t.Errorf("web's fd77::1 is still on up0:\n%s", got)
	}
	if got := n.ip("-6", "addr", "show", "dev", "up1"); !strings.Contains(got, "fd77::1/128") {
		t.Errorf("web's fd77::1 is not on up1:\n%s", got)
	}
	// New connections, both ways, through up1.
	reach(t, unix.SOCK_STREAM, out, ina, netip.MustParseAddrPort("[fd78::1]:7980"), out6)
	reach(t, unix.SOCK_DGRAM, ina, out, netip.AddrPortFrom(out4, 7981), netip.MustParseAddr("10.78.0.1"))
	reach(t, unix.SOCK_STREAM, out, web, netip.MustParseAddrPort("[fd77::1]:7982"), out6)
	if out := n.mustRun("up"); !strings.Contains(out, "nothing changed") {
		t.Errorf("bare up after the switch: %q", out)
	}
	talk("at the end")
}

// tcpConn opens a TCP connection from agent cli to a listener of agent
// srv at addr and returns both ends.
func tcpConn(t *testing.T, cli, srv *sockprobe.Agent, p proto, addr string) (cid, sid int) {
	t.Helper()
	lid := listen(t, srv, p, addr)
	defer srv.Close(lid)
	cid = cli.Socket(p.family, unix.SOCK_STREAM, 0)
	if err := cli.Connect(cid, ap(addr)); err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	sid, _, err := srv.Accept(lid, 3*time.Second)
	if err != nil {
		t.Fatalf("accept on %s: %v", addr, err)
	}
	return cid, sid
}

// mapID is the id of the map pinned at path.
func mapID(t *testing.T, path string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// tcxIn lists the programs on the TCX hooks of interface ifname in network
// namespace ns ("ingress:NAME", in the order they run), asking the kernel
// from a thread in that namespace (TCX queries go by ifindex).
func tcxIn(t *testing.T, ns, ifname string) []string {
	t.Helper()
	type result struct {
		progs []string
		err   error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromPath(ns)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			res <- result{err: err}
			return
		}
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			res <- result{err: err}
			return
		}
		progs, err := loader.QueryTCX(l.Attrs().Index)
		var out []string
		for _, p := range progs {
			out = append(out, p.Direction+":"+p.Name)
		}
		res <- result{out, err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("TCX programs of %s in %s: %v", ifname, ns, r.err)
	}
	return r.progs
}

// hostIf is the host-side veth of netns container name.
func (n *netEnv) hostIf(name string) string {
	for _, k := range n.listJSON() {
		if k.Name == name {
			return k.HostVeth
		}
	}
	n.t.Fatalf("no container %s", name)
	return ""
}

// TestContainersCgroupRemoved: the containers' parent cgroup (<root>/l3iso)
// holds the egress backstop's link. Removed by hand while empty, it takes
// the link with it: status says so, add and apply refuse (changing
// nothing) rather than make it anew without the program, and up repairs,
// after which a new container runs l3_egress again.
func TestContainersCgroupRemoved(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	parent := filepath.Join(e.cgroot, "l3iso")
	if err := os.Remove(parent); err != nil {
		t.Fatal(err)
	}
	if r := e.run("status"); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "l3_egress") {
		t.Errorf("status after the containers' cgroup went: exit %d, want non-zero naming l3_egress:\n%s%s", r.code, r.stdout, r.stderr)
	}
	pf := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(pf, []byte("containers:\n  db:\n    addresses: [10.77.0.2]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"container", "add", "web", "--addr", "10.77.0.1"}, {"apply", "-f", pf}} {
		r := e.run(args...)
		if r.code == 0 || !strings.Contains(r.stderr, "run `l3iso up`") {
			t.Errorf("%s: exit %d, want a refusal that says to run `l3iso up`:\n%s", args[0], r.code, r.stderr)
		}
	}
	if _, err := os.Stat(parent); err == nil {
		t.Errorf("a refused command made %s anew", parent)
	}
	if list := e.listJSON(); len(list) != 0 {
		t.Errorf("refused commands left containers: %v", list)
	}
	e.mustRun("up", "--cgroup-root", e.cgroot)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1")
	f, err := os.Open(filepath.Join(parent, "web"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := sockprobe.ProgramNames(t, link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInetEgress, QueryFlags: unix.BPF_F_QUERY_EFFECTIVE})
	if !slices.Contains(names, "l3_egress") {
		t.Errorf("after up, web's cgroup runs %v on egress, want l3_egress", names)
	}
}
