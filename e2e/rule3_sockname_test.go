package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestShadowNameOwnOnly: getsockname shows a shadow socket (a container's
// wildcard listener, bound by l3iso to a port of the kernel's choosing) as
// the application bound it — and only that socket. A host socket that
// holds the shadow's port number too (IPv6-only, beside the container's
// IPv4 shadow), TCP and UDP, sees its own address and port: l3_sports is
// keyed by the port number alone.
func TestShadowNameOwnOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	web, host := e.agent("web"), e.agent("")
	for _, c := range []struct {
		p4, p6 proto
		ss     string // ss's flag for the protocol's listening sockets
	}{
		{tcp4, tcp6, "-t"},
		{udp4, udp6, "-u"},
	} {
		t.Run(c.p4.name, func(t *testing.T) {
			const port = 7310
			id := web.Socket(c.p4.family, c.p4.typ, 0)
			defer web.Close(id)
			if err := web.Bind(id, ap(fmt.Sprintf("0.0.0.0:%d", port))); err != nil {
				t.Fatal(err)
			}
			if c.p4.typ == unix.SOCK_STREAM {
				if err := web.Listen(id); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := web.SockName(id); err != nil || got != ap(fmt.Sprintf("0.0.0.0:%d", port)) {
				t.Fatalf("web's wildcard socket: getsockname = %v, %v; want 0.0.0.0:%d", got, err, port)
			}
			shadow := e.shadowPort(t, c.ss, port)

			hid := host.Socket(c.p6.family, c.p6.typ, 0)
			defer host.Close(hid)
			if err := host.SetV6Only(hid, true); err != nil {
				t.Fatal(err)
			}
			want := netip.AddrPortFrom(netip.IPv6Unspecified(), shadow)
			if err := host.Bind(hid, want); err != nil {
				t.Fatalf("host: bind %v (IPv6 only, beside web's IPv4 shadow on the port): %v", want, err)
			}
			if got, err := host.SockName(hid); err != nil || got != want {
				t.Fatalf("host's IPv6-only socket on the shadow's port: getsockname = %v, %v; want %v (its own, not web's view)", got, err, want)
			}
		})
	}
}

// shadowPort is the port the kernel has for the one IPv4 wildcard socket
// of the env's namespace that is not on port app, of the protocol ss's
// flag names (-t listening TCP, -u UDP): the shadow l3iso bound for it.
func (e *env) shadowPort(t *testing.T, flag string, app uint16) uint16 {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+e.netns, "ss", "-Hn", "-l", flag, "-4").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	var found []uint16
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		a, err := netip.ParseAddrPort(f[3])
		if err != nil || !a.Addr().IsUnspecified() || a.Port() == app {
			continue
		}
		found = append(found, a.Port())
	}
	if len(found) != 1 {
		t.Fatalf("want one IPv4 wildcard socket (the shadow) in the namespace, ss shows:\n%s", out)
	}
	return found[0]
}
