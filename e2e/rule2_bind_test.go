package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// basePolicy is the layout the socket tests share.
const basePolicy = `
containers:
  web:
    addresses: [10.77.0.1/24, fd77::1/64]
  db:
    addresses: [10.77.0.2/24, fd77::2/64, "10.77.0.9:5432/tcp", "[fd77::9]:5432/tcp"]
  v4only:
    addresses: [10.77.1.1]
  multi:
    addresses: [10.77.3.1/24, 10.77.4.1/24]
  peer4:
    addresses: [10.77.4.2/24]
  shareloop:
    addresses: [10.77.2.1]
    loopback: host
`

type proto struct {
	name         string
	family, typ  int
	protocol     int
	addrIsV6Sock bool
}

var (
	tcp4   = proto{"tcp4", unix.AF_INET, unix.SOCK_STREAM, 0, false}
	udp4   = proto{"udp4", unix.AF_INET, unix.SOCK_DGRAM, 0, false}
	tcp6   = proto{"tcp6", unix.AF_INET6, unix.SOCK_STREAM, 0, true}
	udp6   = proto{"udp6", unix.AF_INET6, unix.SOCK_DGRAM, 0, true}
	mptcp6 = proto{"mptcp6", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, true}
	mptcp4 = proto{"mptcp4", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, false}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestBind is the sock_addr table for bind: one row per (container, socket,
// requested address) with the address the socket ends up bound to, or the
// errno. "" as container is a process outside every container.
func TestBind(t *testing.T) {
	e := newEnv(t)
	e.apply(basePolicy)
	agents := map[string]*sockprobe.Agent{}
	for _, n := range []string{"web", "db", "v4only", "shareloop", ""} {
		agents[n] = e.agent(n)
	}
	rows := []struct {
		container string
		p         proto
		req       string
		want      string // bound address as getsockname shows it (port 0 = any)
		err       error
	}{
		// Rule 2: own addresses, foreign addresses (errno as in a namespace).
		{"web", tcp4, "10.77.0.1:0", "10.77.0.1:0", nil},
		{"web", udp4, "10.77.0.1:0", "10.77.0.1:0", nil},
		{"web", tcp4, "10.77.0.2:0", "", unix.EADDRNOTAVAIL},
		{"web", udp4, "10.77.0.2:0", "", unix.EADDRNOTAVAIL},
		{"web", tcp4, "192.0.2.1:0", "", unix.EADDRNOTAVAIL},
		{"web", tcp6, "[fd77::1]:0", "[fd77::1]:0", nil},
		{"web", udp6, "[fd77::1]:0", "[fd77::1]:0", nil},
		{"web", tcp6, "[fd77::2]:0", "", unix.EADDRNOTAVAIL},
		{"web", udp6, "[fd77::2]:0", "", unix.EADDRNOTAVAIL},
		{"web", tcp6, "[::ffff:10.77.0.1]:0", "[::ffff:10.77.0.1]:0", nil},
		{"web", tcp6, "[::ffff:10.77.0.2]:0", "", unix.EADDRNOTAVAIL},
		{"web", mptcp6, "[fd77::1]:0", "[fd77::1]:0", nil},
		{"web", mptcp6, "[fd77::2]:0", "", unix.EADDRNOTAVAIL},
		{"web", mptcp4, "10.77.0.2:0", "", unix.EADDRNOTAVAIL},
		// Derivative: the broadcast address of an owned subnet.
		{"web", udp4, "10.77.0.255:0", "10.77.0.255:0", nil},
		{"v4only", udp4, "10.77.0.255:0", "", unix.EADDRNOTAVAIL},
		// Rule 1: port-level ownership of a shared IP (EACCES, as for a
		// port someone else holds).
		{"db", tcp4, "10.77.0.9:5432", "10.77.0.9:5432", nil},
		{"db", tcp4, "10.77.0.9:5433", "", unix.EACCES},
		{"db", tcp4, "10.77.0.9:0", "", unix.EACCES},
		{"db", udp4, "10.77.0.9:5432", "", unix.EACCES},
		{"db", tcp6, "[fd77::9]:5432", "[fd77::9]:5432", nil},
		{"db", tcp6, "[::ffff:10.77.0.9]:5432", "[::ffff:10.77.0.9]:5432", nil},
		{"db", tcp6, "[fd77::9]:80", "", unix.EACCES},
		{"web", tcp4, "10.77.0.9:5432", "", unix.EADDRNOTAVAIL},
		// Rule 3: the wildcard becomes the container's own address.
		{"web", tcp4, "0.0.0.0:0", "10.77.0.1:0", nil},
		{"web", udp4, "0.0.0.0:0", "10.77.0.1:0", nil},
		{"web", tcp6, "[::]:0", "[fd77::1]:0", nil},
		{"web", udp6, "[::]:0", "[fd77::1]:0", nil},
		{"web", mptcp6, "[::]:0", "[fd77::1]:0", nil},
		{"web", mptcp4, "0.0.0.0:0", "10.77.0.1:0", nil},
		{"web", tcp6, "[::ffff:0.0.0.0]:0", "[::ffff:10.77.0.1]:0", nil},
		{"v4only", tcp6, "[::]:0", "[::ffff:10.77.1.1]:0", nil},
		{"v4only", udp6, "[::]:0", "[::ffff:10.77.1.1]:0", nil},
		// Rule 5: loopback stays 127.0.0.1 / ::1 for the application.
		{"web", tcp4, "127.0.0.1:0", "127.0.0.1:0", nil},
		{"web", tcp6, "[::1]:0", "[::1]:0", nil},
		{"web", udp6, "[::ffff:127.0.0.1]:0", "[::ffff:127.0.0.1]:0", nil},
		{"shareloop", tcp4, "127.0.0.1:0", "127.0.0.1:0", nil},
		// The private loopback range is nobody's to bind by hand.
		{"", tcp4, "127.128.0.1:0", "", unix.EADDRNOTAVAIL},
		// Rule 2: the host lost every pushed address, whole or port.
		{"", tcp4, "10.77.0.1:0", "", unix.EADDRNOTAVAIL},
		{"", udp4, "10.77.0.1:0", "", unix.EADDRNOTAVAIL},
		{"", tcp4, "10.77.0.9:80", "", unix.EADDRNOTAVAIL},
		{"", tcp6, "[fd77::1]:0", "", unix.EADDRNOTAVAIL},
		{"", tcp6, "[::ffff:10.77.0.1]:0", "", unix.EADDRNOTAVAIL},
		{"", mptcp6, "[fd77::1]:0", "", unix.EADDRNOTAVAIL},
		{"", tcp4, "127.0.0.1:0", "127.0.0.1:0", nil},
		{"", tcp4, "0.0.0.0:0", "0.0.0.0:0", nil},
		{"", tcp6, "[::]:0", "[::]:0", nil},
	}
	for _, r := range rows {
		who := r.container
		if who == "" {
			who = "host"
		}
		t.Run(fmt.Sprintf("%s/%s/%s", who, r.p.name, r.req), func(t *testing.T) {
			a := agents[r.container]
			id := a.Socket(r.p.family, r.p.typ, r.p.protocol)
			defer a.Close(id)
			err := a.Bind(id, ap(r.req))
			if r.err != nil {
				if !errors.Is(err, r.err) {
					t.Fatalf("bind %s: got %v, want %v", r.req, err, r.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("bind %s: %v", r.req, err)
			}
			got, err := a.SockName(id)
			if err != nil {
				t.Fatal(err)
			}
			want := ap(r.want)
			if got.Addr() != want.Addr() || (want.Port() != 0 && got.Port() != want.Port()) {
				t.Fatalf("bind %s: bound to %s, want %s", r.req, got, want)
			}
		})
	}
	c := e.counters()
	if c["web"]["bind_denied_foreign"] == 0 || c["web"]["bind_rewritten"] == 0 || c["web"]["bind_allowed"] == 0 {
		t.Errorf("web's bind counters did not count: %v", c["web"])
	}
	if c["db"]["bind_denied_port"] == 0 {
		t.Errorf("db's bind_denied_port did not count: %v", c["db"])
	}
	if c["(host)"]["host_bind_denied"] == 0 {
		t.Errorf("host_bind_denied did not count: %v", c["(host)"])
	}
}

// listen starts a TCP or UDP listener in agent a at addr and returns its id.
func listen(t *testing.T, a *sockprobe.Agent, p proto, addr string) int {
	t.Helper()
	id := a.Socket(p.family, p.typ, p.protocol)
	if err := a.Bind(id, ap(addr)); err != nil {
		t.Fatalf("listener bind %s: %v", addr, err)
	}
	if p.typ == unix.SOCK_STREAM {
		if err := a.Listen(id); err != nil {
			t.Fatalf("listen %s: %v", addr, err)
		}
	}
	return id
}

// TestSource checks rule 4: a socket that connects or sends without a bound
// address gets the container's own address — on the destination's subnet if
// it has one, else its primary — for TCP, connected and unconnected UDP,
// IPv4, IPv6 and IPv4-mapped; and a host process talking to a container
// address does not borrow it.
func TestSource(t *testing.T) {
	e := newEnv(t)
	e.apply(basePolicy)
	web, db, multi, peer4, v4only, host := e.agent("web"), e.agent("db"), e.agent("multi"), e.agent("peer4"), e.agent("v4only"), e.agent("")

	servers := map[string]*sockprobe.Agent{"db": db, "peer4": peer4}
	type row struct {
		client  *sockprobe.Agent
		cname   string
		p       proto
		server  string // agent name
		dst     string // where the server listens (and the client connects)
		connect string // address the client uses, if not dst (v4-mapped)
		src     string // expected source as the server sees it
	}
	rows := []row{
		{web, "web", tcp4, "db", "10.77.0.2:7001", "", "10.77.0.1"},
		{web, "web", tcp6, "db", "[fd77::2]:7002", "", "fd77::1"},
		{web, "web", mptcp6, "db", "[fd77::2]:7003", "", "fd77::1"},
		{web, "web", tcp6, "db", "10.77.0.2:7004", "[::ffff:10.77.0.2]:7004", "10.77.0.1"},
		{web, "web", udp4, "db", "10.77.0.2:7005", "", "10.77.0.1"},
		{web, "web", udp6, "db", "[fd77::2]:7006", "", "fd77::1"},
		{web, "web", udp6, "db", "10.77.0.2:7007", "[::ffff:10.77.0.2]:7007", "10.77.0.1"},
		// Several addresses: the one on the destination's subnet...
		{multi, "multi", tcp4, "peer4", "10.77.4.2:7008", "", "10.77.4.1"},
		{multi, "multi", udp4, "peer4", "10.77.4.2:7009", "", "10.77.4.1"},
		// ...else the first one.
		{multi, "multi", tcp4, "db", "10.77.0.2:7010", "", "10.77.3.1"},
		{v4only, "v4only", tcp6, "db", "10.77.0.2:7011", "[::ffff:10.77.0.2]:7011", "10.77.1.1"},
	}
	for _, r := range rows {
		for _, mode := range []string{"connect", "sendto"} {
			if mode == "sendto" && r.p.typ != unix.SOCK_DGRAM {
				continue
			}
			t.Run(fmt.Sprintf("%s/%s/%s/%s", r.cname, r.p.name, mode, r.dst), func(t *testing.T) {
				srv := servers[r.server]
				sp := r.p
				if sp.protocol == unix.IPPROTO_MPTCP {
					sp.protocol = 0
				}
				dst := ap(r.dst)
				if dst.Addr().Is4() {
					if sp.typ == unix.SOCK_STREAM {
						sp = tcp4
					} else {
						sp = udp4
					}
				}
				lid := listen(t, srv, sp, r.dst)
				defer srv.Close(lid)
				to := dst
				if r.connect != "" {
					to = ap(r.connect)
				}
				cid := r.client.Socket(r.p.family, r.p.typ, r.p.protocol)
				defer r.client.Close(cid)
				var peer netip.AddrPort
				if r.p.typ == unix.SOCK_STREAM {
					if err := r.client.Connect(cid, to); err != nil {
						t.Fatalf("connect %s: %v", to, err)
					}
					aid, p, err := srv.Accept(lid, 3*time.Second)
					if err != nil {
						t.Fatalf("accept: %v", err)
					}
					srv.Close(aid)
					peer = p
				} else {
					if mode == "connect" {
						if err := r.client.Connect(cid, to); err != nil {
							t.Fatalf("connect %s: %v", to, err)
						}
						if err := r.client.SendTo(cid, netip.AddrPort{}, []byte("x")); err != nil {
							t.Fatalf("send: %v", err)
						}
					} else if err := r.client.SendTo(cid, to, []byte("x")); err != nil {
						t.Fatalf("sendto %s: %v", to, err)
					}
					_, p, _, err := srv.RecvFrom(lid, 3*time.Second)
					if err != nil {
						t.Fatalf("recvfrom: %v", err)
					}
					peer = p
				}
				if got := peer.Addr().Unmap(); got != netip.MustParseAddr(r.src) {
					t.Fatalf("server saw source %s, want %s", got, r.src)
				}
			})
		}
	}

	t.Run("go-net", func(t *testing.T) {
		// Go programs: net.Dial from a container picks its address.
		id, local, err := db.GoListen("tcp", "10.77.0.2:7020")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(id)
		src, _, err := web.GoDial("tcp", local.String(), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if src.Addr().Unmap() != netip.MustParseAddr("10.77.0.1") {
			t.Fatalf("Go dial from web used source %s, want 10.77.0.1", src)
		}
	})

	t.Run("python", func(t *testing.T) {
		// A non-Go client: CPython's socket module.
		lid := listen(t, db, tcp4, "10.77.0.2:7021")
		defer db.Close(lid)
		out, err := sockprobe.Python(t, sockprobe.Options{CgroupDir: e.cgroupOf("web"), NetnsPath: e.netns},
			"import socket; s=socket.create_connection(('10.77.0.2',7021)); print(s.getsockname()[0])")
		if err != nil {
			t.Fatal(err)
		}
		if got := trim(out); got != "10.77.0.1" {
			t.Fatalf("python connect from web used source %q, want 10.77.0.1", got)
		}
	})

	t.Run("host-to-container", func(t *testing.T) {
		// The host may talk to a container address, but not from it.
		lid := listen(t, db, tcp4, "10.77.0.2:7022")
		defer db.Close(lid)
		cid := host.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer host.Close(cid)
		if err := host.Connect(cid, ap("10.77.0.2:7022")); err != nil {
			t.Fatalf("host connect to container: %v", err)
		}
		aid, peer, err := db.Accept(lid, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		db.Close(aid)
		if peer.Addr() == netip.MustParseAddr("10.77.0.2") {
			t.Fatalf("host connected from the container's own address %s", peer)
		}
	})

	c := e.counters()
	if c["web"]["source_rewritten"] == 0 {
		t.Errorf("web's source_rewritten did not count: %v", c["web"])
	}
}

func trim(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}
