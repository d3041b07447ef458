package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
)

// wantEvent is what `monitor -o json` must print for one provoked denial
// or drop. Empty fields are not checked; pid is the agent's (0: a packet,
// which has none).
type wantEvent struct {
	container, typ, reason, verdict string
	family                          int
	proto                           string
	addr                            string // "" = absent
	port                            int    // -1: an ephemeral port, not known in advance (checked non-zero)
	dst                             string
	dstPort                         int // -2: not checked
	owner                           string
	agent                           *sockprobe.Agent // the process whose pid and comm the event names; nil: none
}

// expectEvent reads mon's events until one of w's container, type and
// reason arrives (5 s), and checks the rest of it; errno is what the
// application got (0: nothing, a drop).
func expectEvent(t *testing.T, mon *bgProc, w wantEvent, errno error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		got := nextEvent(t, mon)
		if got["kind"] != "event" || got["container"] != w.container || got["type"] != w.typ || got["reason"] != w.reason ||
			(w.addr != "" && got["addr"] != w.addr) {
			seen = append(seen, fmt.Sprint(got))
			continue
		}
		check := func(k string, want any) {
			t.Helper()
			if fmt.Sprint(got[k]) != fmt.Sprint(want) {
				t.Errorf("%s %s event: %s = %v, want %v (%v)", w.container, w.reason, k, got[k], want, got)
			}
		}
		var en unix.Errno
		if errno != nil && !errors.As(errno, &en) {
			t.Fatalf("%s %s: the application got %v, not an errno", w.container, w.reason, errno)
		}
		check("errno", int(en))
		if en != 0 {
			check("error", unix.ErrnoName(en))
		}
		check("verdict", w.verdict)
		check("family", w.family)
		check("proto", w.proto)
		check("addr", orNil(w.addr))
		if w.port >= 0 {
			check("port", w.port)
		} else if p, _ := got["port"].(float64); p == 0 && w.port == -1 {
			t.Errorf("%s %s event: port 0, want the socket's ephemeral port (%v)", w.container, w.reason, got)
		}
		check("dst", orNil(w.dst))
		if w.dst != "" && w.dstPort >= 0 {
			check("dst_port", w.dstPort)
		}
		check("owner", orNil(w.owner))
		if w.agent != nil {
			check("pid", w.agent.Pid())
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", w.agent.Pid()))
			check("comm", strings.TrimSpace(string(comm)))
		} else {
			check("pid", 0)
			check("comm", nil)
		}
		return
	}
	t.Fatalf("no %s %s event of %s within 5 s; saw %v", w.typ, w.reason, w.container, seen)
}

// orNil is a JSON field's expected value: absent (nil) for "".
func orNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// TestMonitorEvents: for the denials and drops the suite provokes in
// shared containers — binds of another's address (IPv4 TCP, IPv6 UDP; the
// host too), sends from a foreign source, a connect in a family the
// container has no address of, joins outside the policy, a connection
// only the host's wildcard listener could take, a datagram for another's
// address reaching an autobound socket — `monitor -o json` prints the
// matching event with its container, pid, comm, addresses, reason and
// errno. A flood from one container is rate-limited and its loss reported
// while another container's events still arrive.
func TestMonitorEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	web, db, v4only, host := e.agent("web"), e.agent("db"), e.agent("v4only"), e.agent("")
	mon := e.start("reading the events", binary, "--bpffs", e.bpffs, "monitor", "-o", "json")

	bind := func(a *sockprobe.Agent, p proto, addr string) error {
		id := a.Socket(p.family, p.typ, p.protocol)
		defer a.Close(id)
		return a.Bind(id, ap(addr))
	}
	t.Run("bind", func(t *testing.T) {
		err := bind(web, tcp4, "10.77.0.2:80")
		expectEvent(t, mon, wantEvent{container: "web", typ: "bind", reason: "bind_denied_foreign", verdict: "denied", family: 4, proto: "tcp",
			addr: "10.77.0.2", port: 80, owner: "db", agent: web}, err)
		err = bind(web, udp6, "[fd77::2]:53")
		expectEvent(t, mon, wantEvent{container: "web", typ: "bind", reason: "bind_denied_foreign", verdict: "denied", family: 6, proto: "udp",
			addr: "fd77::2", port: 53, owner: "db", agent: web}, err)
		err = bind(host, tcp6, "[fd77::1]:80")
		expectEvent(t, mon, wantEvent{container: "(host)", typ: "bind", reason: "host_bind_denied", verdict: "denied", family: 6, proto: "tcp",
			addr: "fd77::1", port: 80, owner: "web", agent: host}, err)
	})
	t.Run("spoofed-source", func(t *testing.T) {
		for _, p := range []struct {
			fam      int
			src, dst string
		}{{unix.AF_INET, "10.77.0.2", "10.77.0.2:7202"}, {unix.AF_INET6, "fd77::2", "[fd77::2]:7203"}} {
			id := web.Socket(p.fam, unix.SOCK_DGRAM, 0)
			err := web.SendFrom(id, netip.MustParseAddr(p.src), ap(p.dst), []byte("spoof"))
			web.Close(id)
			d := ap(p.dst)
			expectEvent(t, mon, wantEvent{container: "web", typ: "sendmsg", reason: "send_denied_spoof", verdict: "denied", family: map[int]int{unix.AF_INET: 4, unix.AF_INET6: 6}[p.fam],
				proto: "udp", addr: p.src, port: -1, dst: d.Addr().String(), dstPort: int(d.Port()), agent: web}, err)
		}
	})
	t.Run("no-address", func(t *testing.T) {
		id := v4only.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
		err := v4only.Connect(id, ap("[fd77::2]:7011"))
		v4only.Close(id)
		expectEvent(t, mon, wantEvent{container: "v4only", typ: "connect", reason: "denied_no_address", verdict: "denied", family: 6, proto: "tcp",
			dst: "fd77::2", dstPort: 7011, agent: v4only}, err)
	})
	t.Run("bound-port", func(t *testing.T) {
		// A fixed-port bind of a container is a shadow (the wildcard, on
		// l3iso's port): a connect that needs a source address then
		// fails, counted and recorded — IPv4 TCP, IPv6 UDP.
		for _, c := range []struct {
			p              proto
			bind, src, dst string
		}{{tcp4, "0.0.0.0:7410", "10.77.0.1", "10.77.0.2:7012"}, {udp6, "[::]:7411", "fd77::1", "[fd77::2]:7013"}} {
			was := e.counters()["web"]
			before := was["connect_denied_bound_port"]
			id := web.Socket(c.p.family, c.p.typ, 0)
			if err := web.Bind(id, ap(c.bind)); err != nil {
				t.Fatal(err)
			}
			err := web.Connect(id, ap(c.dst))
			web.Close(id)
			if !errors.Is(err, unix.EADDRNOTAVAIL) {
				t.Errorf("%s: connect to %s after bind %s: %v, want EADDRNOTAVAIL", c.p.name, c.dst, c.bind, err)
			}
			d := ap(c.dst)
			expectEvent(t, mon, wantEvent{container: "web", typ: "connect", reason: "connect_denied_bound_port", verdict: "denied",
				family: map[bool]int{true: 6, false: 4}[c.p.addrIsV6Sock], proto: c.p.name[:3], addr: c.src, port: -2,
				dst: d.Addr().String(), dstPort: int(d.Port()), agent: web}, err)
			now := e.counters()["web"]
			if after := now["connect_denied_bound_port"]; after != before+1 {
				t.Errorf("%s: connect_denied_bound_port %d → %d, want one more", c.p.name, before, after)
			}
			// Refused: neither allowed nor given a source.
			for _, k := range []string{"connect_allowed", "source_rewritten"} {
				if now[k] != was[k] {
					t.Errorf("%s: %s %d → %d on a refused connect, want no change", c.p.name, k, was[k], now[k])
				}
			}
		}
	})
	t.Run("join", func(t *testing.T) {
		for _, g := range []struct {
			p     proto
			group string
		}{{udp4, "239.9.9.9"}, {udp6, "ff15::9"}} {
			id := web.Socket(g.p.family, g.p.typ, 0)
			err := web.JoinGroup(id, netip.MustParseAddr(g.group), 0)
			web.Close(id)
			expectEvent(t, mon, wantEvent{container: "web", typ: "join", reason: "join_denied", verdict: "refused", family: map[bool]int{true: 6, false: 4}[g.p.addrIsV6Sock],
				proto: "udp", addr: g.group, agent: web}, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		// Only the host's wildcard listener could take it: refused.
		lid := listen(t, host, tcp4, "0.0.0.0:7201")
		defer host.Close(lid)
		id := db.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		err := db.Connect(id, ap("10.77.0.1:7201"))
		db.Close(id)
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("connect: %v, want ECONNREFUSED", err)
		}
		// Counted on the container addressed; the packet has no task.
		expectEvent(t, mon, wantEvent{container: "web", typ: "lookup", reason: "refused", verdict: "refused", family: 4, proto: "tcp",
			addr: "10.77.0.2", port: -1, dst: "10.77.0.1", dstPort: 7201}, err)
	})
	t.Run("ingress-foreign", func(t *testing.T) {
		cid := web.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer web.Close(cid)
		web.SendTo(cid, ap("10.77.0.2:9"), []byte("autobind")) // autobound: the wildcard and an ephemeral port
		local, _ := web.SockName(cid)
		hid := host.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer host.Close(hid)
		host.SendTo(hid, netip.AddrPortFrom(netip.MustParseAddr("10.77.0.2"), local.Port()), []byte("leak"))
		from, _ := host.SockName(hid) // the host talks to containers from its own address toward them
		expectEvent(t, mon, wantEvent{container: "web", typ: "ingress", reason: "ingress_dropped_foreign", verdict: "dropped", family: 4, proto: "udp",
			addr: maps.HostAddr4.String(), port: int(from.Port()), dst: "10.77.0.2", dstPort: int(local.Port())}, nil)
	})
	t.Run("flood", func(t *testing.T) {
		// web: 500 denied binds at once; then db: one. web's are
		// rate-limited, and what the limit keeps out is reported lost;
		// db's still arrives.
		lost0 := e.counters()["web"]["events_lost"]
		id := web.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer web.Close(id)
		const flood = 500
		for i := 0; i < flood; i++ {
			if err := web.Bind(id, ap("10.77.0.2:81")); !errors.Is(err, unix.EADDRNOTAVAIL) {
				t.Fatalf("flood bind %d: %v", i, err)
			}
		}
		dbErr := bind(db, tcp4, "10.77.0.1:81")
		lost := e.counters()["web"]["events_lost"] - lost0
		if lost == 0 || lost >= flood {
			t.Fatalf("a flood of %d denials: %d counted lost; want the rate limit to keep some, not all", flood, lost)
		}
		var (
			events, reported uint64
			dbSeen           bool
		)
		for deadline := time.Now().Add(10 * time.Second); (!dbSeen || reported < lost) && time.Now().Before(deadline); {
			got := nextEvent(t, mon)
			switch {
			case got["kind"] == "lost" && got["container"] == "web":
				reported += uint64(got["lost"].(float64))
			case got["kind"] == "lost":
				t.Errorf("a loss of another container than web: %v", got)
			case got["container"] == "web" && got["addr"] == "10.77.0.2" && got["port"] == float64(81):
				events++
			case got["container"] == "db" && got["reason"] == "bind_denied_foreign" && got["addr"] == "10.77.0.1":
				dbSeen = true
				if got["errno"] != float64(dbErr.(unix.Errno)) {
					t.Errorf("db's event: %v, want errno %d", got, dbErr)
				}
			}
		}
		t.Logf("a flood of %d denials from web: %d events, %d lost (counted %d); db's event arrived: %v", flood, events, reported, lost, dbSeen)
		if !dbSeen {
			t.Error("db's denial, after web's flood, never arrived")
		}
		if reported != lost {
			t.Errorf("monitor reported %d events of web lost, the counter says %d", reported, lost)
		}
		if events+lost != flood {
			t.Errorf("%d events + %d lost != %d denials", events, lost, flood)
		}
	})
}

// TestMonitorNetns: in a netns container, monitor shows a denied bind
// (IPv4 TCP, IPv6 UDP) with its process, and the TC program's drops of
// datagrams leaving with a source the container does not own (IPv4 and
// IPv6), which have no process.
func TestMonitorNetns(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	a := n.add("a", "10.78.0.1/24", "fd78::1/64")
	b := n.add("b", "10.78.0.2/24", "fd78::2/64")
	mon := n.start("reading the events", binary, "--bpffs", n.bpffs, "monitor", "-o", "json")
	in := n.in(a)
	for _, c := range []struct {
		p           proto
		addr, owner string
	}{{tcp4, "10.78.0.2:80", b}, {udp6, "[fd78::99]:53", ""}} {
		id := in.Socket(c.p.family, c.p.typ, 0)
		err := in.Bind(id, ap(c.addr))
		in.Close(id)
		w := ap(c.addr)
		expectEvent(t, mon, wantEvent{container: a, typ: "bind", reason: "bind_denied_foreign", verdict: "denied", family: map[bool]int{true: 6, false: 4}[c.p.addrIsV6Sock],
			proto: map[int]string{unix.SOCK_STREAM: "tcp", unix.SOCK_DGRAM: "udp"}[c.p.typ], addr: w.Addr().String(), port: int(w.Port()), owner: c.owner, agent: in}, err)
	}
	// From a's namespace, outside its cgroup: the socket programs cannot
	// stop it, its veth's TC program does.
	// checkSpoof sends from an ephemeral port to 7600.
	checkSpoof(t, n, a, [2]netip.Addr{netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("fd78::2")})
	expectEvent(t, mon, wantEvent{container: a, typ: "tc", reason: "tc_dropped_spoof", verdict: "dropped", family: 4, proto: "udp",
		addr: "10.78.0.2", port: -1, dst: outside4.String(), dstPort: 7600}, nil)
	expectEvent(t, mon, wantEvent{container: a, typ: "tc", reason: "tc_dropped_spoof", verdict: "dropped", family: 6, proto: "udp",
		addr: "fd78::2", port: -1, dst: outside6.String(), dstPort: 7600}, nil)
}
