package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
)

// The socket-level escapes of issue 12 (causes 1, 2 and 8, and posing as
// the host), each tried the way an attacker would: arbitrary code run with
// `l3iso exec`, here a Python script.

const escapePolicy = `
containers:
  a:
    addresses: [10.77.0.1/24, fd77::1/64]
  b:
    addresses: [10.77.0.2/24, fd77::2/64]
  v4:
    addresses: [10.77.1.1]
  lh:
    addresses: [10.77.2.1]
    loopback: host
`

// pyIn runs a Python script with `l3iso exec` in container name and returns
// its stdout; the script prints one "name result" line per attempt.
func (e *env) pyIn(name, script string) map[string]string {
	e.t.Helper()
	r := e.run("exec", name, "--", "python3", "-c", pyPrelude+script)
	if r.code != 0 {
		e.t.Fatalf("python in %s: exit %d: %s %s", name, r.code, r.stdout, r.stderr)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			out[k] = v
		}
	}
	return out
}

// pyPrelude: try(name, f) prints "name ok" or "name ERRNO".
const pyPrelude = `
import errno, socket, struct
def try_(name, f):
    try:
        r = f()
        print(name, "ok" if r is None else r, flush=True)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)), flush=True)
def tcp(fam, dst, bind=None):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
    if bind: s.bind(bind)
    s.connect(dst); s.close()
def udp(fam, dst, bind=None):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if bind: s.bind(bind)
    s.sendto(b"x", dst); s.close()
`

func TestEscapeUnspecifiedIsOwnLoopback(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(escapePolicy)
	host := e.agent("")
	// The host's loopback services.
	l4 := listen(t, host, tcp4, "127.0.0.1:7600")
	l6 := listen(t, host, tcp6, "[::1]:7600")
	u4 := listen(t, host, udp4, "127.0.0.1:7601")
	u6 := listen(t, host, udp6, "[::1]:7601")
	for _, c := range []string{"a", "v4"} {
		// 0.0.0.0 and :: as destinations, over TCP and UDP, and :: from a
		// socket bound to an IPv4-mapped address (the kernel's
		// ::ffff:127.0.0.1): the container's own loopback, where nothing
		// listens — never the host's.
		script := `
try_("tcp4-any", lambda: tcp(socket.AF_INET, ("0.0.0.0", 7600)))
try_("tcp6-any", lambda: tcp(socket.AF_INET6, ("::", 7600)))
try_("udp4-any", lambda: udp(socket.AF_INET, ("0.0.0.0", 7601)))
try_("udp6-any", lambda: udp(socket.AF_INET6, ("::", 7601)))
`
		names := []string{"tcp4-any", "tcp6-any", "udp4-any", "udp6-any"}
		if c == "a" {
			script += `
try_("tcp6-any-mapped", lambda: tcp(socket.AF_INET6, ("::", 7600), ("::ffff:10.77.0.1", 0)))
try_("udp6-any-mapped", lambda: udp(socket.AF_INET6, ("::", 7601), ("::ffff:10.77.0.1", 0)))
`
			names = append(names, "tcp6-any-mapped", "udp6-any-mapped")
		}
		got := e.pyIn(c, script)
		for _, k := range names {
			// TCP is refused; UDP is sent (so that the host's
			// listeners receiving nothing, below, says where it went).
			want := "ECONNREFUSED"
			if strings.HasPrefix(k, "udp") {
				want = "ok"
			}
			if v := got[k]; v != want {
				t.Errorf("%s in %s: %q, want %s (its own loopback, where nothing listens)", k, c, v, want)
			}
		}
	}
	for _, id := range []int{l4, l6} {
		if _, _, err := host.Accept(id, 300*time.Millisecond); err == nil {
			t.Error("a container reached a host loopback listener through an unspecified destination")
		}
	}
	for _, id := range []int{u4, u6} {
		if b, from, _, err := host.RecvFrom(id, 300*time.Millisecond); err == nil {
			t.Errorf("a host loopback UDP socket received %q from %s through an unspecified destination", b, from)
		}
	}
	// The same destinations reach the container's own loopback listener.
	got := e.pyIn("a", `
L = socket.socket(socket.AF_INET6); L.bind(("::1", 7610)); L.listen(1)
try_("own6", lambda: tcp(socket.AF_INET6, ("::", 7610)))
L4 = socket.socket(); L4.bind(("127.0.0.1", 7611)); L4.listen(1)
try_("own4", lambda: tcp(socket.AF_INET, ("0.0.0.0", 7611)))
`)
	if got["own6"] != "ok" || got["own4"] != "ok" {
		t.Errorf("unspecified destinations to the container's own loopback listeners: %v", got)
	}
}

func TestEscapePrivateLoopback(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.hostAddresses()
	e.apply(escapePolicy)
	b := e.agent("b")
	tb4 := listen(t, b, tcp4, "10.77.0.2:7700")
	tb6 := listen(t, b, tcp6, "[fd77::2]:7700")
	ub4 := listen(t, b, udp4, "10.77.0.2:7701")
	ub6 := listen(t, b, udp6, "[fd77::2]:7701")
	host := e.agent("")
	th := listen(t, host, tcp4, hostIP4+":7702")
	was := e.counters()["a"]
	before := was["loopback_denied"]

	var bid, aid uint32
	for _, c := range e.listJSON() {
		switch c.Name {
		case "a":
			aid = c.ID
		case "b":
			bid = c.ID
		}
	}
	bLo6 := maps.Loopback6(bid).String()
	aLo4, aLo6 := maps.Loopback4(aid).String(), maps.Loopback6(aid).String()

	got := e.pyIn("a", fmt.Sprintf(`
# Bound to its loopback, to elsewhere: refused, as a namespace refuses a
# loopback source off lo.
try_("tcp4-lo-to-b", lambda: tcp(socket.AF_INET, ("10.77.0.2", 7700), ("127.0.0.1", 0)))
try_("tcp6-lo-to-b", lambda: tcp(socket.AF_INET6, ("fd77::2", 7700), ("::1", 0)))
try_("udp4-lo-to-b", lambda: udp(socket.AF_INET, ("10.77.0.2", 7701), ("127.0.0.1", 0)))
try_("udp6-lo-to-b", lambda: udp(socket.AF_INET6, ("fd77::2", 7701), ("::1", 0)))
try_("tcp4-lo-to-host", lambda: tcp(socket.AF_INET, (%[1]q, 7702), ("127.0.0.1", 0)))
# Its private loopback named as the source of one datagram (IP_PKTINFO).
def pktinfo4(src, bound=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bound:
        s.bind((bound, 0))
    s.sendmsg([b"x"], [(socket.IPPROTO_IP, 8, struct.pack("I4s4s", 0, socket.inet_aton(src), socket.inet_aton("0.0.0.0")))], 0, ("10.77.0.2", 7701))
try_("pktinfo-own-private", lambda: pktinfo4(%[2]q))
try_("pktinfo-bound-own-private", lambda: pktinfo4(%[2]q, "10.77.0.1"))
def pktinfo6(src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendmsg([b"x"], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, src) + struct.pack("I", 0))], 0, ("fd77::2", 7701))
try_("pktinfo6-own-private", lambda: pktinfo6(%[3]q))
# Another container's private loopback, directly.
try_("tcp6-to-b-private", lambda: tcp(socket.AF_INET6, (%[4]q, 7700)))
try_("udp6-to-b-private", lambda: udp(socket.AF_INET6, (%[4]q, 7701)))
`, hostIP4, aLo4, aLo6, bLo6))
	want := map[string]string{
		"tcp4-lo-to-b": "EINVAL", "tcp6-lo-to-b": "EINVAL", "udp4-lo-to-b": "EINVAL", "udp6-lo-to-b": "EINVAL",
		"tcp4-lo-to-host": "EINVAL", "pktinfo-own-private": "EINVAL", "pktinfo6-own-private": "EINVAL",
		"pktinfo-bound-own-private": "EINVAL", "tcp6-to-b-private": "ENETUNREACH", "udp6-to-b-private": "ENETUNREACH",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s from a: %q, want %s", k, got[k], w)
		}
	}
	for _, id := range []int{tb4, tb6} {
		if _, _, err := b.Accept(id, 200*time.Millisecond); err == nil {
			t.Error("b accepted a connection from a's loopback")
		}
	}
	if _, _, err := host.Accept(th, 200*time.Millisecond); err == nil {
		t.Error("the host accepted a connection from a's loopback")
	}
	for _, id := range []int{ub4, ub6} {
		if p, from, _, err := b.RecvFrom(id, 200*time.Millisecond); err == nil {
			t.Errorf("b received %q from %s, sent from a's loopback", p, from)
		}
	}
	now := e.counters()["a"]
	if after := now["loopback_denied"]; after < before+uint64(len(want)) {
		t.Errorf("loopback_denied of a went from %d to %d, want %d more", before, after, len(want))
	}
	// Every call above was refused: none was allowed, none given a source.
	for _, k := range []string{"connect_allowed", "source_rewritten"} {
		if now[k] != was[k] {
			t.Errorf("%s of a went from %d to %d over refused calls, want no change", k, was[k], now[k])
		}
	}

	// A ping socket runs no bind hook: bound to a's private loopback, its
	// echo to b leaves only if the egress backstop lets it (it must not).
	if out, err := exec.Command("nsenter", "--net="+e.netns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647").CombinedOutput(); err != nil {
		t.Fatalf("ping_group_range: %v: %s", err, out)
	}
	egress := e.counters()["a"]["loopback_denied"]
	got = e.pyIn("a", fmt.Sprintf(`
def ping():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.bind((%[1]q, 0))
    s.sendto(b"\x08\x00\x00\x00\x00\x01\x00\x01", ("10.77.0.2", 0))
try_("ping-from-private", ping)
`, aLo4))
	if got["ping-from-private"] != "EPERM" || e.counters()["a"]["loopback_denied"] != egress+1 {
		t.Errorf("a ping from a's private loopback to b: %q, loopback_denied %d -> %d; want EPERM, one more",
			got["ping-from-private"], egress, e.counters()["a"]["loopback_denied"])
	}

	// The host cannot reach a container's private loopback either.
	hs := host.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	defer host.Close(hs)
	if err := host.Connect(hs, ap("["+aLo6+"]:7700")); err != unix.ENETUNREACH {
		t.Errorf("host connect to a's private loopback %s: %v, want ENETUNREACH", aLo6, err)
	}
	hs4 := host.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer host.Close(hs4)
	if err := host.Connect(hs4, ap(aLo4+":7700")); err != unix.ENETUNREACH {
		t.Errorf("host connect to a's private loopback %s: %v, want ENETUNREACH", aLo4, err)
	}
}

func TestEscapePoseAsHost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(escapePolicy)
	// loopback: host shares the host's 127.0.0.1, but not the host's own
	// address toward containers: with it, it could pose as the host.
	got := e.pyIn("lh", fmt.Sprintf(`
try_("bind4", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((%[1]q, 0)))
try_("bind6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind((%[2]q, 0)))
def pktinfo4(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendmsg([b"x"], [(socket.IPPROTO_IP, 8, struct.pack("I4s4s", 0, socket.inet_aton(src), socket.inet_aton("0.0.0.0")))], 0, ("10.77.0.1", 7800))
try_("send4", lambda: pktinfo4(%[1]q))
try_("bind-lo", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", 0)))
`, maps.HostAddr4, maps.HostAddr6))
	want := map[string]string{"bind4": "EADDRNOTAVAIL", "bind6": "EADDRNOTAVAIL", "send4": "EPERM", "bind-lo": "ok"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s in a loopback: host container: %q, want %s", k, got[k], w)
		}
	}
	// An isolated container cannot either.
	got = e.pyIn("a", fmt.Sprintf(`try_("bind4", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((%q, 0)))`, maps.HostAddr4))
	if got["bind4"] != "EADDRNOTAVAIL" {
		t.Errorf("bind %s in a: %q, want EADDRNOTAVAIL", maps.HostAddr4, got["bind4"])
	}
}

func TestEscapeRegistryQuota(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(escapePolicy)
	// a binds UDP wildcard sockets on port after port (each one holds two
	// registrations: its l3_binds entry and its broadcast listener entry)
	// until the quota stops it with ENOBUFS.
	script := fmt.Sprintf(`
import resource
lim = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (lim[1], lim[1]))
socks, err = [], "none"
for port in range(20000, 20000 + %d):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", port))
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno)); s.close(); break
    socks.append(s)
print("bound", len(socks))
print("error", err)
for s in socks:
    s.close()
# Freed with its sockets: as many again.
again = []
for port in range(20000, 20000 + len(socks)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); again.append(s)
print("again", len(again))
`, maps.SocketQuota)
	got := e.pyIn("a", script)
	if got["error"] != "ENOBUFS" {
		t.Fatalf("a bound %s UDP wildcard sockets, then %s; want ENOBUFS at its quota", got["bound"], got["error"])
	}
	if want := fmt.Sprint(maps.SocketQuota / 2); got["bound"] != want || got["again"] != want {
		t.Errorf("a bound %s sockets, %s again after closing them; want %s both times", got["bound"], got["again"], want)
	}
	if e.counters()["a"]["socket_quota_exceeded"] == 0 {
		t.Error("socket_quota_exceeded of a did not count")
	}
	// Its sockets are gone with the script: nothing of a is left in the
	// registry, and b's listener registers as ever.
	bb := e.agent("b")
	id := listen(t, bb, udp4, "0.0.0.0:20001")
	defer bb.Close(id)
	var aLeft, bHas int
	for _, l := range e.status().Listeners {
		switch l.Container {
		case "a":
			aLeft++
		case "b":
			bHas++
		}
	}
	if aLeft != 0 || bHas == 0 {
		t.Errorf("registry after a's sockets closed: %d entries of a (want 0), %d of b (want its listener)", aLeft, bHas)
	}
}
