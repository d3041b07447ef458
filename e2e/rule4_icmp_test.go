package e2e

import (
	be "encoding/binary"
	"errors"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestICMPSockets checks rules 3 and 4 for ICMP datagram ("ping") sockets,
// which unprivileged processes may open where net.ipv4.ping_group_range
// allows it (systemd turns it on for every group). The kernel runs the
// connect hooks for them but neither the bind nor the sendmsg hooks, so
// the packet backstops carry the rules:
//
//   - connect picks the container's own source, as for UDP;
//   - a bind to an address it does not own may succeed, but nothing can be
//     sent from it (EPERM, egress_dropped_spoof);
//   - an unbound, unconnected socket gets no source rewrite: to another
//     container's address the kernel's source is that address, and the
//     send fails with EPERM;
//   - an echo reply addressed to another container never reaches the
//     container's socket, whatever its ident (ingress_dropped_foreign).
func TestICMPSockets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if out, err := exec.Command("nsenter", "--net="+e.netns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647").CombinedOutput(); err != nil {
		t.Fatalf("allow ICMP datagram sockets in the test netns: %v: %s", err, out)
	}
	e.apply(basePolicy)
	web, host := e.agent("web"), e.agent("")
	before := e.counters()["web"]

	for _, fam := range []struct {
		name           string
		af, proto, raw int
		request, reply byte   // ICMP types
		echos          string // the netns's counter of echo requests received
		web, db        string
		any            netip.Addr
	}{
		{"v4", unix.AF_INET, unix.IPPROTO_ICMP, unix.IPPROTO_ICMP, 8, 0, "Icmp:InEchos", "10.77.0.1", "10.77.0.2", netip.IPv4Unspecified()},
		{"v6", unix.AF_INET6, unix.IPPROTO_ICMPV6, unix.IPPROTO_ICMPV6, 128, 129, "Icmp6InEchos", "fd77::1", "fd77::2", netip.IPv6Unspecified()},
	} {
		webIP, dbIP := netip.MustParseAddr(fam.web), netip.MustParseAddr(fam.db)
		webAt, dbAt := netip.AddrPortFrom(webIP, 0), netip.AddrPortFrom(dbIP, 0)
		ping := func() int { return web.Socket(fam.af, unix.SOCK_DGRAM, fam.proto) }
		// dropped checks that send is refused on the way out: counted as
		// egress_dropped_spoof, and no echo request reached the stack.
		// IPv4 reports the drop (EPERM); IPv6 ping sockets do not report
		// errors of the output path (icmpv6_push_pending_frames).
		dropped := func(t *testing.T, what string, send func() error) {
			t.Helper()
			spoof, echos := e.counters()["web"]["egress_dropped_spoof"], netCounter(t, e.netns, fam.echos)
			if err := send(); err != nil && !errors.Is(err, unix.EPERM) {
				t.Fatalf("%s: got %v, want EPERM or a silent drop", what, err)
			}
			if got := e.counters()["web"]["egress_dropped_spoof"]; got != spoof+1 {
				t.Errorf("%s: egress_dropped_spoof went from %d to %d, want one more", what, spoof, got)
			}
			if got := netCounter(t, e.netns, fam.echos); got != echos {
				t.Errorf("%s: %d echo requests reached the stack, want none", what, got-echos)
			}
		}

		t.Run(fam.name+"/connect-picks-own-source", func(t *testing.T) {
			id := ping()
			defer web.Close(id)
			if err := web.Connect(id, dbAt); err != nil {
				t.Fatalf("connect a ping socket to db's %s: %v", dbIP, err)
			}
			if got, _ := web.SockName(id); got.Addr() != webIP {
				t.Fatalf("ping socket connected to %s has source %s, want web's %s", dbIP, got.Addr(), webIP)
			}
			if err := web.SendTo(id, netip.AddrPort{}, icmpEcho(fam.request, 0, 1)); err != nil {
				t.Fatalf("echo request to %s: %v", dbIP, err)
			}
			b, from, _, err := web.RecvFrom(id, 2*time.Second)
			if err != nil || from.Addr() != dbIP || len(b) < 1 || b[0] != fam.reply {
				t.Fatalf("echo reply: got %x from %s, err %v; want a type %d reply from %s", b, from, err, fam.reply, dbIP)
			}
		})

		t.Run(fam.name+"/foreign-bind-cannot-send", func(t *testing.T) {
			id := ping()
			defer web.Close(id)
			if err := web.Bind(id, dbAt); err != nil {
				// What a namespace would do; the kernel runs no bind
				// hook for ping sockets today, so this is the exception.
				t.Logf("bind a ping socket to db's %s: %v", dbIP, err)
				return
			}
			dropped(t, "echo request from db's "+fam.db, func() error { return web.SendTo(id, dbAt, icmpEcho(fam.request, 0, 1)) })
		})

		t.Run(fam.name+"/unbound-gets-no-foreign-source", func(t *testing.T) {
			id := ping()
			defer web.Close(id)
			dropped(t, "unbound echo request to db's "+fam.db+" (source: that address)", func() error { return web.SendTo(id, dbAt, icmpEcho(fam.request, 0, 1)) })
			// To its own address the source is its own: allowed.
			if err := web.SendTo(id, webAt, icmpEcho(fam.request, 0, 2)); err != nil {
				t.Fatalf("unbound echo request to its own %s: %v", webIP, err)
			}
			if _, _, _, err := web.RecvFrom(id, 2*time.Second); err != nil {
				t.Fatalf("echo reply from its own %s: %v", webIP, err)
			}
		})

		t.Run(fam.name+"/reply-to-another-container-is-dropped", func(t *testing.T) {
			id := ping()
			defer web.Close(id)
			// An unbound ping socket's ident is its port; bind to the
			// wildcard to get one without sending.
			if err := web.Bind(id, netip.AddrPortFrom(fam.any, 0)); err != nil {
				t.Fatal(err)
			}
			local, err := web.SockName(id)
			if err != nil || local.Port() == 0 {
				t.Fatalf("ping socket's ident: %s, %v", local, err)
			}
			// The host forges echo replies with that ident: to db's
			// address, then to web's own.
			raw := host.Socket(fam.af, unix.SOCK_RAW, fam.raw)
			defer host.Close(raw)
			if err := host.SendTo(raw, dbAt, icmpEcho(fam.reply, local.Port(), 7)); err != nil {
				t.Fatal(err)
			}
			if b, from, _, err := web.RecvFrom(id, 300*time.Millisecond); err == nil {
				t.Fatalf("web's ping socket received %x from %s, sent to db's %s", b, from, dbIP)
			}
			if err := host.SendTo(raw, webAt, icmpEcho(fam.reply, local.Port(), 8)); err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := web.RecvFrom(id, 2*time.Second); err != nil {
				t.Fatalf("an echo reply to web's own %s with its ident: %v", webIP, err)
			}
		})
	}

	after := e.counters()["web"]
	for _, k := range []string{"egress_dropped_spoof", "ingress_dropped_foreign"} {
		// Per family: one foreign-bind send (if bound) and one unbound
		// send; one forged reply.
		if after[k] <= before[k] {
			t.Errorf("%s did not count: %d before, %d after", k, before[k], after[k])
		}
	}
}

// icmpEcho is an ICMP or ICMPv6 echo message of type typ with identifier
// id. The IPv4 checksum is filled in; for ICMPv6 the kernel computes it
// (over the pseudo-header) on raw and ping sockets alike, and a ping socket
// replaces the identifier with its own.
func icmpEcho(typ byte, id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = typ
	be.BigEndian.PutUint16(b[4:], id)
	be.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "l3iso-ic")
	if typ == 8 || typ == 0 {
		var sum uint32
		for i := 0; i < len(b); i += 2 {
			sum += uint32(be.BigEndian.Uint16(b[i:]))
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		be.BigEndian.PutUint16(b[2:], ^uint16(sum))
	}
	return b
}
