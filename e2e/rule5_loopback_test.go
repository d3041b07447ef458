package e2e

// Rule 5, loopback: a container's own 127.0.0.1 / ::1. The escapes
// through unspecified destinations and loopback sources are in
// rule8_escape_test.go.

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopback checks rule 5: a container's 127.0.0.1 / ::1 reaches only its
// own sockets, applications still see 127.0.0.1 / ::1, and `loopback: host`
// shares the host's.
func TestLoopback(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	web, db, host, share := e.agent("web"), e.agent("db"), e.agent(""), e.agent("shareloop")

	for _, fam := range []struct {
		name      string
		p         proto
		lo, loStr string
	}{
		{"v4", tcp4, "127.0.0.1", "127.0.0.1"},
		{"v6", tcp6, "::1", "[::1]"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			addr := fmt.Sprintf("%s:7100", fam.loStr)
			lid := listen(t, web, fam.p, addr)
			defer web.Close(lid)

			// web reaches its own loopback listener and sees loopback
			// addresses on both ends.
			cid := web.Socket(fam.p.family, fam.p.typ, 0)
			defer web.Close(cid)
			if err := web.Connect(cid, ap(addr)); err != nil {
				t.Fatalf("web → own %s: %v", addr, err)
			}
			aid, peer, err := web.Accept(lid, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer web.Close(aid)
			for what, got := range map[string]netip.AddrPort{"accepted peer": peer} {
				if got.Addr().String() != fam.lo {
					t.Errorf("%s = %s, want %s", what, got, fam.lo)
				}
			}
			if got, _ := web.PeerName(cid); got.Addr().String() != fam.lo {
				t.Errorf("getpeername = %s, want %s", got, fam.lo)
			}
			if got, _ := web.SockName(cid); got.Addr().String() != fam.lo {
				t.Errorf("getsockname = %s, want %s", got, fam.lo)
			}

			// Nobody else reaches it through their 127.0.0.1 / ::1.
			for name, a := range map[string]interface {
				Socket(int, int, int) int
				Connect(int, netip.AddrPort) error
				Close(int) error
			}{"db": db, "host": host} {
				id := a.Socket(fam.p.family, fam.p.typ, 0)
				err := a.Connect(id, ap(addr))
				a.Close(id)
				if !errors.Is(err, unix.ECONNREFUSED) {
					t.Errorf("%s → %s: got %v, want ECONNREFUSED (web's loopback must be private)", name, addr, err)
				}
			}
		})
	}

	t.Run("wildcard-listener-via-loopback", func(t *testing.T) {
		// A wildcard listener answers on 127.0.0.1 inside the container,
		// as in a namespace, although bind put it on 10.77.0.1.
		lid := listen(t, web, tcp4, "0.0.0.0:7101")
		defer web.Close(lid)
		cid := web.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer web.Close(cid)
		if err := web.Connect(cid, ap("127.0.0.1:7101")); err != nil {
			t.Fatalf("web → 127.0.0.1:7101 (wildcard listener): %v", err)
		}
		if got, _ := web.PeerName(cid); got.Addr().String() != "127.0.0.1" {
			t.Errorf("getpeername = %s, want 127.0.0.1", got)
		}
		aid, _, err := web.Accept(lid, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		web.Close(aid)
	})

	for _, fam := range []struct {
		name    string
		p       proto
		lo, dst string
	}{
		{"udp-v4", udp4, "127.0.0.1", "127.0.0.1:7102"},
		{"udp-v6", udp6, "::1", "[::1]:7106"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			lid := listen(t, web, fam.p, fam.dst)
			defer web.Close(lid)
			cid := web.Socket(fam.p.family, unix.SOCK_DGRAM, 0)
			defer web.Close(cid)
			if err := web.SendTo(cid, ap(fam.dst), []byte("hi")); err != nil {
				t.Fatal(err)
			}
			// recvfrom (the recvmsg hook) shows the private loopback
			// underneath as the loopback address.
			_, from, _, err := web.RecvFrom(lid, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if from.Addr().String() != fam.lo {
				t.Errorf("recvfrom source = %s, want %s", from, fam.lo)
			}
			// db's datagram to the same address goes to db's own loopback:
			// the send must succeed (else nothing was tested), db's own
			// listener on that address gets it, and web's does not.
			dl := listen(t, db, fam.p, fam.dst)
			defer db.Close(dl)
			did := db.Socket(fam.p.family, unix.SOCK_DGRAM, 0)
			defer db.Close(did)
			if err := db.SendTo(did, ap(fam.dst), []byte("leak")); err != nil {
				t.Fatalf("db → its own %s: %v", fam.dst, err)
			}
			if b, from, _, err := db.RecvFrom(dl, 3*time.Second); err != nil {
				t.Errorf("db's datagram to %s did not reach db's own loopback listener: %v", fam.dst, err)
			} else if string(b) != "leak" || from.Addr().String() != fam.lo {
				t.Errorf("db's loopback listener got %q from %s, want \"leak\" from %s", b, from, fam.lo)
			}
			if b, _, _, err := web.RecvFrom(lid, 300*time.Millisecond); err == nil {
				t.Errorf("web's loopback socket received %q from db", b)
			}
		})
	}

	t.Run("host-mode", func(t *testing.T) {
		// loopback: host shares the host's 127.0.0.1 both ways.
		lid := listen(t, share, tcp4, "127.0.0.1:7103")
		defer share.Close(lid)
		cid := host.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer host.Close(cid)
		if err := host.Connect(cid, ap("127.0.0.1:7103")); err != nil {
			t.Fatalf("host → shareloop's 127.0.0.1 listener: %v", err)
		}
		// And shareloop reaches the host's 127.0.0.1 from 127.0.0.1, not
		// from its own address (rule 5: applications see loopback).
		hl := listen(t, host, tcp4, "127.0.0.1:7105")
		defer host.Close(hl)
		sid := share.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer share.Close(sid)
		if err := share.Connect(sid, ap("127.0.0.1:7105")); err != nil {
			t.Fatalf("shareloop → host's 127.0.0.1: %v", err)
		}
		if got, _ := share.SockName(sid); got.Addr().String() != "127.0.0.1" {
			t.Errorf("shareloop's loopback connection has source %s, want 127.0.0.1", got)
		}
	})

	t.Run("host-cannot-reach-private-loopback", func(t *testing.T) {
		// web's private loopbacks underneath (ask l3iso for them): the
		// host's connect and sendto to them fail with ENETUNREACH, in
		// both families, while web listens there.
		var lo4, lo6 string
		for _, c := range e.listJSON() {
			if c.Name == "web" {
				lo4, lo6 = c.Loopback4, c.Loopback6
			}
		}
		if lo4 == "" || lo6 == "" {
			t.Fatalf("web's private loopbacks not listed: %q, %q", lo4, lo6)
		}
		for _, c := range []struct {
			kind     proto
			listenAt string
			lo       string
		}{{tcp4, "127.0.0.1:7104", lo4}, {tcp6, "[::1]:7104", lo6}, {udp4, "127.0.0.1:7104", lo4}, {udp6, "[::1]:7104", lo6}} {
			lid := listen(t, web, c.kind, c.listenAt)
			dst := netip.AddrPortFrom(netip.MustParseAddr(c.lo), 7104)
			cid := host.Socket(c.kind.family, c.kind.typ, c.kind.protocol)
			var err error
			if c.kind.typ == unix.SOCK_STREAM {
				err = host.Connect(cid, dst)
			} else {
				err = host.SendTo(cid, dst, []byte("x"))
			}
			if err != unix.ENETUNREACH {
				t.Errorf("%s: host → web's private loopback %s: %v, want ENETUNREACH", c.kind.name, dst, err)
			}
			host.Close(cid)
			web.Close(lid)
		}
	})
	if c := e.counters(); c["web"]["loopback_remapped"] == 0 {
		t.Errorf("loopback_remapped did not count: %v", c["web"])
	}
}
