package e2e

// Rule 3, wildcard binds: two containers on *:PORT each get their own
// traffic; sockets the kernel binds (listen without bind, autobind) and
// the host's wildcard listeners are held by the backstops; a new
// connection on a 4-tuple in TIME_WAIT finds its listener. Unmodified
// servers: rule3_realservers_test.go.

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
)

// TestBackstop checks what no sock_addr hook sees: sockets bound by the
// kernel (listen() without bind(), UDP autobind) still receive only the
// container's own traffic; the host's wildcard listeners lose container
// addresses; explicit foreign sources are refused.
func TestBackstop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	web, db, host := e.agent("web"), e.agent("db"), e.agent("")

	for _, fam := range []struct {
		name            string
		af              int
		web, db, dbPort string // web's and db's addresses, a db listener address
	}{
		{"v4", unix.AF_INET, "10.77.0.1", "10.77.0.2", "10.77.0.2:7200"},
		{"v6", unix.AF_INET6, "fd77::1", "fd77::2", "[fd77::2]:7210"},
	} {
		webIP, dbIP := netip.MustParseAddr(fam.web), netip.MustParseAddr(fam.db)
		t.Run(fam.name+"/listen-without-bind", func(t *testing.T) {
			lid := web.Socket(fam.af, unix.SOCK_STREAM, 0)
			defer web.Close(lid)
			if err := web.Listen(lid); err != nil { // autobinds to the wildcard
				t.Fatal(err)
			}
			local, _ := web.SockName(lid)
			port := local.Port()
			// To web's own address: accepted.
			c1 := db.Socket(fam.af, unix.SOCK_STREAM, 0)
			defer db.Close(c1)
			if err := db.Connect(c1, netip.AddrPortFrom(webIP, port)); err != nil {
				t.Fatalf("connect to web's own address on its autobound listener: %v", err)
			}
			// To db's address, same port: must not reach web's listener.
			c2 := host.Socket(fam.af, unix.SOCK_STREAM, 0)
			defer host.Close(c2)
			if err := host.Connect(c2, netip.AddrPortFrom(dbIP, port)); err == nil {
				t.Fatalf("a connection to db's address reached web's autobound listener")
			} else {
				t.Logf("connect to db's address on web's autobound port: %v", err)
			}
		})

		t.Run(fam.name+"/udp-autobind", func(t *testing.T) {
			srv := listen(t, db, map[int]proto{unix.AF_INET: udp4, unix.AF_INET6: udp6}[fam.af], fam.dbPort)
			defer db.Close(srv)
			cid := web.Socket(fam.af, unix.SOCK_DGRAM, 0)
			defer web.Close(cid)
			if err := web.SendTo(cid, ap(fam.dbPort), []byte("q")); err != nil {
				t.Fatal(err)
			}
			local, _ := web.SockName(cid) // the wildcard and an ephemeral port: autobound
			if !local.Addr().IsUnspecified() {
				t.Fatalf("expected an autobound wildcard socket, got %s", local)
			}
			// A datagram to web's address reaches it...
			hid := host.Socket(fam.af, unix.SOCK_DGRAM, 0)
			defer host.Close(hid)
			host.SendTo(hid, netip.AddrPortFrom(webIP, local.Port()), []byte("ok"))
			if _, _, _, err := web.RecvFrom(cid, 2*time.Second); err != nil {
				t.Fatalf("datagram to web's own address: %v", err)
			}
			// ...one to db's address on the same port does not.
			host.SendTo(hid, netip.AddrPortFrom(dbIP, local.Port()), []byte("leak"))
			if b, _, _, err := web.RecvFrom(cid, 300*time.Millisecond); err == nil {
				t.Fatalf("web's autobound socket received %q sent to db's address", b)
			}
		})

		t.Run(fam.name+"/host-wildcard-loses-container-addresses", func(t *testing.T) {
			any := "0.0.0.0:7201"
			if fam.af == unix.AF_INET6 {
				any = "[::]:7211"
			}
			p := map[int]proto{unix.AF_INET: tcp4, unix.AF_INET6: tcp6}[fam.af]
			lid := listen(t, host, p, any)
			defer host.Close(lid)
			cid := db.Socket(fam.af, unix.SOCK_STREAM, 0)
			defer db.Close(cid)
			// Refused (l3_sk_lookup), not taken by the host's listener
			// nor left to time out.
			if err := db.Connect(cid, netip.AddrPortFrom(webIP, ap(any).Port())); !errors.Is(err, unix.ECONNREFUSED) {
				t.Fatalf("connect to web's address on the host's wildcard port: %v, want ECONNREFUSED", err)
			}
			if _, _, err := host.Accept(lid, 200*time.Millisecond); err == nil {
				t.Fatal("the host's wildcard listener accepted a connection to web's address")
			}
		})
	}

	t.Run("spoofed-source", func(t *testing.T) {
		srv := listen(t, db, udp4, "10.77.0.2:7202")
		defer db.Close(srv)
		// web sends from db's address, to db.
		spoofs := []struct {
			fam      int
			src, dst string
		}{{unix.AF_INET, "10.77.0.2", "10.77.0.2:7202"}, {unix.AF_INET6, "fd77::2", "[fd77::2]:7203"}}
		for _, p := range spoofs {
			id := web.Socket(p.fam, unix.SOCK_DGRAM, 0)
			err := web.SendFrom(id, netip.MustParseAddr(p.src), ap(p.dst), []byte("spoof"))
			web.Close(id)
			if !errors.Is(err, unix.EPERM) {
				t.Errorf("send from %s: got %v, want EPERM", p.src, err)
			}
		}
		// The same from a connected socket (a control message makes the
		// kernel run the sendmsg hook even then; the egress backstop is
		// behind it).
		refused := func() uint64 { c := e.counters()["web"]; return c["send_denied_spoof"] + c["egress_dropped_spoof"] }
		spoof := refused()
		for _, p := range spoofs {
			id := web.Socket(p.fam, unix.SOCK_DGRAM, 0)
			if err := web.Connect(id, ap(p.dst)); err != nil {
				t.Fatal(err)
			}
			err := web.SendFrom(id, netip.MustParseAddr(p.src), netip.AddrPort{}, []byte("spoof"))
			web.Close(id)
			if !errors.Is(err, unix.EPERM) {
				t.Errorf("connected socket, send from %s: got %v, want EPERM", p.src, err)
			}
		}
		if got := refused(); got != spoof+2 {
			t.Errorf("send_denied_spoof + egress_dropped_spoof went from %d to %d, want 2 more", spoof, got)
		}
		if b, from, _, err := db.RecvFrom(srv, 300*time.Millisecond); err == nil {
			t.Fatalf("db received %q from %s: a spoofed datagram got through", b, from)
		}
		// Its own address as explicit source is fine.
		id := web.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer web.Close(id)
		if err := web.SendFrom(id, netip.MustParseAddr("10.77.0.1"), ap("10.77.0.2:7202"), []byte("ok")); err != nil {
			t.Fatalf("send from own address: %v", err)
		}
		if _, from, _, err := db.RecvFrom(srv, 2*time.Second); err != nil || from.Addr().String() != "10.77.0.1" {
			t.Fatalf("got from=%s err=%v, want from 10.77.0.1", from, err)
		}
	})

	c := e.counters()
	if c["web"]["ingress_dropped_foreign"] == 0 {
		t.Errorf("ingress_dropped_foreign did not count: %v", c["web"])
	}
	if c["web"]["send_denied_spoof"] == 0 {
		t.Errorf("send_denied_spoof did not count: %v", c["web"])
	}
	if c["web"]["refused"] == 0 {
		t.Errorf("refused did not count: %v", c["web"])
	}
}

// TestWildcardTwoContainers checks rule 3 end to end with Go's own
// listeners (dual-stack, MPTCP since Go 1.24) and plain TCP and UDP
// sockets, IPv4 and IPv6: two containers listen on *:PORT and each gets
// only what is sent to its addresses, the other nothing of it.
func TestWildcardTwoContainers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	web, db, host := e.agent("web"), e.agent("db"), e.agent("")

	// Go: net.Listen("tcp", ":7300") in both.
	wid, wlocal, err := web.GoListen("tcp", ":7300")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close(wid)
	did, dlocal, err := db.GoListen("tcp", ":7300")
	if err != nil {
		t.Fatalf("second container's Go listener on :7300: %v", err)
	}
	defer db.Close(did)
	// Each shows what it bound, as in a namespace of its own.
	if wlocal.String() != "[::]:7300" || dlocal.String() != "[::]:7300" {
		t.Fatalf("Go listeners bound to %s and %s, want [::]:7300 both", wlocal, dlocal)
	}
	goAcceptors := map[string]interface {
		GoAccept(int, time.Duration) (netip.AddrPort, error)
	}{"web": web, "db": db}
	goListeners := map[string]int{"web": wid, "db": did}
	other := map[string]string{"web": "db", "db": "web"}
	for _, tc := range []struct{ dst, who string }{{"[fd77::1]:7300", "web"}, {"[fd77::2]:7300", "db"}, {"10.77.0.1:7300", "web"}, {"10.77.0.2:7300", "db"}} {
		_, remote, err := host.GoDial("tcp", tc.dst, 3*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", tc.dst, err)
		}
		if _, err := goAcceptors[tc.who].GoAccept(goListeners[tc.who], 3*time.Second); err != nil {
			t.Fatalf("%s did not accept the connection to %s: %v", tc.who, remote, err)
		}
		o := other[tc.who]
		if peer, err := goAcceptors[o].GoAccept(goListeners[o], 200*time.Millisecond); err == nil {
			t.Fatalf("%s's Go listener accepted a connection (from %s) when %s was dialled", o, peer, tc.dst)
		}
	}

	// Plain sockets (as C programs do): the same wildcard in both, TCP and
	// UDP, IPv4 and IPv6 (dual-stack: its IPv4 addresses too). Whatever
	// the host sends to one container's address reaches that container's
	// socket, and not the other's.
	agents := map[string]*sockprobe.Agent{"web": web, "db": db}
	for _, pc := range []struct {
		p    proto
		bind string
		dsts []string // web's address first, then db's, per family
	}{
		{tcp4, "0.0.0.0:7301", []string{"10.77.0.1", "10.77.0.2"}},
		{tcp6, "[::]:7302", []string{"fd77::1", "fd77::2", "10.77.0.1", "10.77.0.2"}},
		{udp4, "0.0.0.0:7303", []string{"10.77.0.1", "10.77.0.2"}},
		{udp6, "[::]:7304", []string{"fd77::1", "fd77::2", "10.77.0.1", "10.77.0.2"}},
	} {
		t.Run("plain/"+pc.p.name, func(t *testing.T) {
			ls := map[string]int{}
			for _, who := range []string{"web", "db"} {
				ls[who] = listen(t, agents[who], pc.p, pc.bind)
				defer agents[who].Close(ls[who])
			}
			port := ap(pc.bind).Port()
			for i, d := range pc.dsts {
				who := []string{"web", "db"}[i%2]
				dst := netip.AddrPortFrom(netip.MustParseAddr(d), port)
				own, oth := agents[who], agents[other[who]]
				c := host.Socket(family(dst.Addr()), pc.p.typ, 0)
				defer host.Close(c)
				if pc.p.typ == unix.SOCK_STREAM {
					if err := host.Connect(c, dst); err != nil {
						t.Fatalf("connect %s: %v", dst, err)
					}
					a, _, err := own.Accept(ls[who], 3*time.Second)
					if err != nil {
						t.Fatalf("%s did not get the connection to its address %s: %v", who, dst, err)
					}
					own.Close(a)
					if a, peer, err := oth.Accept(ls[other[who]], 200*time.Millisecond); err == nil {
						oth.Close(a)
						t.Fatalf("%s accepted a connection (from %s) meant for %s at %s", other[who], peer, who, dst)
					}
					continue
				}
				if err := host.SendTo(c, dst, []byte(d)); err != nil {
					t.Fatalf("sendto %s: %v", dst, err)
				}
				b, _, to, err := own.RecvFrom(ls[who], 3*time.Second)
				if err != nil {
					t.Fatalf("%s did not get the datagram to its address %s: %v", who, dst, err)
				}
				if string(b) != d || to.Unmap() != dst.Addr() {
					t.Fatalf("%s got %q to %s, want %q to %s", who, b, to, d, dst.Addr())
				}
				if b, from, _, err := oth.RecvFrom(ls[other[who]], 300*time.Millisecond); err == nil {
					t.Fatalf("%s received %q (from %s) meant for %s at %s", other[who], b, from, who, dst)
				}
			}
		})
	}
}

// TestTimeWaitReuse: a client that reuses its source port for a new
// connection while the server's side of the old one is in TIME_WAIT gets
// connected at once, as without l3iso: the kernel ends the TIME_WAIT, and
// l3_sk_lookup finds the listener (in l3_socks) instead of refusing it. The
// client is the host, bound to a fixed port of its own address toward
// containers (a container's TCP bind to a fixed port is a shadow: it can
// listen, not connect).
func TestTimeWaitReuse(t *testing.T) {
	// Not parallel: each connect must finish within 500 ms.
	e := newEnv(t)
	e.apply(basePolicy)
	web, db := e.agent(""), e.agent("db")
	for _, fam := range []struct {
		p          proto
		srv, local string
	}{{tcp4, "10.77.0.2:7500", maps.HostAddr4.String() + ":40001"}, {tcp6, "[fd77::2]:7500", "[" + maps.HostAddr6.String() + "]:40001"}} {
		l := listen(t, db, fam.p, fam.srv)
		for round := 0; round < 3; round++ {
			c := web.Socket(fam.p.family, unix.SOCK_STREAM, 0)
			if err := web.SetReuseAddr(c); err != nil {
				t.Fatal(err)
			}
			if err := web.Bind(c, ap(fam.local)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := web.Connect(c, ap(fam.srv)); err != nil {
				t.Fatalf("round %d: connect %s from %s: %v", round, fam.srv, fam.local, err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("round %d: connect %s from %s took %v: the SYN waited for a retransmission", round, fam.srv, fam.local, d)
			}
			a, _, err := db.Accept(l, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			db.Close(a) // the server closes first: its side goes to TIME_WAIT
			time.Sleep(50 * time.Millisecond)
			web.Close(c)
			time.Sleep(50 * time.Millisecond)
		}
		db.Close(l)
	}
	// Each SYN went to the listener, none was refused first (the kernel
	// would then answer from the TIME_WAIT, the client reset it, and
	// retransmit).
	if c := e.counters()["db"]; c["steered"] != 6 || c["refused"] != 0 {
		t.Errorf("db: steered %d, refused %d; want 6 steered, none refused", c["steered"], c["refused"])
	}
}
