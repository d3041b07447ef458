package e2e

// Rule 4, source addresses: the address an unbound socket gets. ICMP
// datagram sockets and MPTCP subflows, which the socket hooks see less of,
// are in rule4_icmp_test.go and rule4_mptcp_test.go.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
)

// TestSource checks rule 4: a socket that connects or sends without a bound
// address gets the container's own address — on the destination's subnet if
// it has one, else its primary — for TCP, connected and unconnected UDP,
// IPv4, IPv6 and IPv4-mapped; and a host process talking to a container
// address does not borrow it.
func TestSource(t *testing.T) {
	t.Parallel()
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
		{multi, "multi", tcp6, "peer4", "[fd77:4::2]:7012", "", "fd77:4::1"},
		{multi, "multi", udp6, "peer4", "[fd77:4::2]:7013", "", "fd77:4::1"},
		{multi, "multi", tcp6, "peer4", "10.77.4.2:7014", "[::ffff:10.77.4.2]:7014", "10.77.4.1"},
		// ...else the first one.
		{multi, "multi", tcp4, "db", "10.77.0.2:7010", "", "10.77.3.1"},
		{multi, "multi", udp4, "db", "10.77.0.2:7015", "", "10.77.3.1"},
		{multi, "multi", tcp6, "db", "[fd77::2]:7016", "", "fd77:3::1"},
		{multi, "multi", udp6, "db", "[fd77::2]:7017", "", "fd77:3::1"},
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

	// The host may talk to a container address, but not from it: its
	// source is its own address toward containers (maps.HostAddr4/6).
	for _, h := range []struct {
		p   proto
		dst string
	}{
		{tcp4, "10.77.0.2:7022"},
		{udp4, "10.77.0.2:7023"},
		{tcp6, "[fd77::2]:7024"},
		{udp6, "[fd77::2]:7025"},
	} {
		t.Run("host-to-container/"+h.p.name, func(t *testing.T) {
			dst := ap(h.dst)
			lid := listen(t, db, h.p, h.dst)
			defer db.Close(lid)
			cid := host.Socket(h.p.family, h.p.typ, 0)
			defer host.Close(cid)
			var peer netip.AddrPort
			if h.p.typ == unix.SOCK_STREAM {
				if err := host.Connect(cid, dst); err != nil {
					t.Fatalf("host connect to container: %v", err)
				}
				aid, p, err := db.Accept(lid, 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				db.Close(aid)
				peer = p
			} else {
				if err := host.SendTo(cid, dst, []byte("x")); err != nil {
					t.Fatalf("host sendto container: %v", err)
				}
				_, p, _, err := db.RecvFrom(lid, 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				peer = p
			}
			if peer.Addr() == dst.Addr() {
				t.Fatalf("host reached %s from the container's own address %s", dst, peer)
			}
			want := maps.HostAddr4
			if h.p.family == unix.AF_INET6 {
				want = maps.HostAddr6
			}
			if peer.Addr() != want {
				t.Fatalf("host reached %s from %s, want the host's own address %s", dst, peer, want)
			}
		})
	}

	c := e.counters()
	if c["web"]["source_rewritten"] == 0 {
		t.Errorf("web's source_rewritten did not count: %v", c["web"])
	}
}
