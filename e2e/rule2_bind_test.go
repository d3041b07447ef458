package e2e

// Rule 2, bind: the sock_addr table (after the kernel's selftests), and
// the socket helpers most tests use (proto, ap, listen).

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
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
    addresses: [10.77.3.1/24, 10.77.4.1/24, fd77:3::1/64, fd77:4::1/64]
  peer4:
    addresses: [10.77.4.2/24, fd77:4::2/64]
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
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	agents := map[string]*sockprobe.Agent{}
	for _, n := range []string{"web", "db", "v4only", "shareloop", ""} {
		agents[n] = e.agent(n)
	}
	type bindRow struct {
		container string
		p         proto
		req       string
		want      string // bound address as getsockname shows it (port 0 = any)
		err       error
	}
	rows := []bindRow{
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
		{"db", udp6, "[fd77::9]:5432", "", unix.EACCES},
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
		{"", udp6, "[fd77::1]:0", "", unix.EADDRNOTAVAIL},
		{"", tcp6, "[fd77::9]:80", "", unix.EADDRNOTAVAIL},
		{"", udp6, "[fd77::9]:5432", "", unix.EADDRNOTAVAIL},
		{"", tcp6, "[::ffff:10.77.0.1]:0", "", unix.EADDRNOTAVAIL},
		{"", mptcp6, "[fd77::1]:0", "", unix.EADDRNOTAVAIL},
		{"", tcp4, "127.0.0.1:0", "127.0.0.1:0", nil},
		{"", tcp4, "0.0.0.0:0", "0.0.0.0:0", nil},
		{"", tcp6, "[::]:0", "[::]:0", nil},
	}
	// The private IPv6 loopbacks (fd6c:3369:736f::/48) are addresses on lo,
	// which the kernel alone would let anyone bind: nobody binds one by
	// hand, not the host, not another container.
	lo6 := map[string]string{}
	for _, c := range e.listJSON() {
		lo6[c.Name] = c.Loopback6
	}
	if !maps.Loopback6Prefix.Contains(netip.MustParseAddr(lo6["web"])) || !maps.Loopback6Prefix.Contains(netip.MustParseAddr(lo6["db"])) {
		t.Fatalf("private IPv6 loopbacks of web and db: %q, %q, want in %s", lo6["web"], lo6["db"], maps.Loopback6Prefix)
	}
	webLo6, dbLo6 := "["+lo6["web"]+"]:0", "["+lo6["db"]+"]:0"
	rows = append(rows, []bindRow{
		{"", tcp6, webLo6, "", unix.EADDRNOTAVAIL},
		{"", udp6, webLo6, "", unix.EADDRNOTAVAIL},
		{"web", tcp6, dbLo6, "", unix.EADDRNOTAVAIL},
		{"web", udp6, dbLo6, "", unix.EADDRNOTAVAIL},
	}...)
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

func trim(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}
