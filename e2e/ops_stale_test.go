package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// staleJSON is one entry of "stale_sockets" (apply -o json, status -o
// json).
type staleJSON struct {
	Container    string `json:"container"`
	Gone         bool   `json:"gone"`
	Addr         string `json:"addr"`
	OwnedBy      string `json:"owned_by"`
	Sockets      int    `json:"sockets"`
	TCPListening int    `json:"tcp_listening"`
	TCPConnected int    `json:"tcp_connected"`
	UDP          int    `json:"udp"`
}

// TestStaleSockets (issue 13): an apply removes an address from a
// container whose server keeps sockets on it — a TCP listener (a shadow
// socket, in l3_binds only), a UDP socket bound to it and an accepted
// connection (both in the kernel's tables) — for IPv4 and IPv6. apply,
// --dry-run and -o json count them per container and address, status
// lists them, and once the server closes them status lists none. A
// socket made in a sub-cgroup of the container (a runtime's container
// inside it) is the container's too.
func TestStaleSockets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	both := "containers:\n  web:\n    addresses: [10.77.0.1/24, 10.77.0.5/24, fd77::1, fd77::5]\n  db:\n    addresses: [10.77.0.2/24]\n"
	less := "containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1]\n  db:\n    addresses: [10.77.0.2/24]\n"
	e.apply(both)
	web, host := e.agent("web"), e.agent("")
	var open []func()
	for _, a := range []netip.Addr{netip.MustParseAddr("10.77.0.5"), netip.MustParseAddr("fd77::5")} {
		fam := unix.AF_INET
		if a.Is6() {
			fam = unix.AF_INET6
		}
		ln := web.Socket(fam, unix.SOCK_STREAM, 0)
		if err := web.Bind(ln, netip.AddrPortFrom(a, 7000)); err != nil {
			t.Fatalf("web bind %s:7000: %v", a, err)
		}
		if err := web.Listen(ln); err != nil {
			t.Fatal(err)
		}
		udp := web.Socket(fam, unix.SOCK_DGRAM, 0)
		if err := web.Bind(udp, netip.AddrPortFrom(a, 7001)); err != nil {
			t.Fatalf("web bind udp %s:7001: %v", a, err)
		}
		cli := host.Socket(fam, unix.SOCK_STREAM, 0)
		if err := host.Connect(cli, netip.AddrPortFrom(a, 7000)); err != nil {
			t.Fatalf("host connect %s:7000: %v", a, err)
		}
		conn, _, err := web.Accept(ln, 3*time.Second)
		if err != nil {
			t.Fatalf("web accept on %s:7000: %v", a, err)
		}
		open = append(open, func() {
			for _, id := range []int{conn, ln, udp} {
				if err := web.Close(id); err != nil {
					t.Fatal(err)
				}
			}
			host.Close(cli)
		})
	}
	// A process in a sub-cgroup of web: its UDP socket on 10.77.0.5.
	sub := filepath.Join(e.cgroupOf("web"), "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	websub := sockprobe.Start(t, sockprobe.Options{CgroupDir: sub, NetnsPath: e.netns})
	subUDP := websub.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := websub.Bind(subUDP, ap("10.77.0.5:7002")); err != nil {
		t.Fatalf("web/sub bind udp 10.77.0.5:7002: %v", err)
	}
	open = append(open, func() { websub.Close(subUDP) })
	// Owned: nothing is stale.
	if got := e.staleStatus(); len(got) != 0 {
		t.Fatalf("status lists stale sockets while web owns their addresses: %+v", got)
	}

	want := []staleJSON{
		{Container: "web", Addr: "10.77.0.5", Sockets: 4, TCPListening: 1, TCPConnected: 1, UDP: 2},
		{Container: "web", Addr: "fd77::5", Sockets: 3, TCPListening: 1, TCPConnected: 1, UDP: 1},
	}
	lines := func(verb string) []string {
		return []string{
			"web: 4 sockets (1 TCP listener, 1 TCP connection, 2 UDP sockets) " + verb + " 10.77.0.5, which it ",
			"web: 3 sockets (1 TCP listener, 1 TCP connection, 1 UDP socket) " + verb + " fd77::5, which it ",
		}
	}
	checkText := func(what, out string, want []string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s does not say %q:\n%s", what, w, out)
			}
		}
	}
	checkJSON := func(what, out string) {
		t.Helper()
		var j struct {
			Stale []staleJSON `json:"stale_sockets"`
		}
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		if !slices.Equal(j.Stale, want) {
			t.Errorf("%s: stale_sockets %+v, want %+v", what, j.Stale, want)
		}
	}

	out := e.apply(less, "--dry-run")
	checkText("apply --dry-run", out, lines("hold"))
	checkText("apply --dry-run", out, []string{"which it would no longer own"})
	checkJSON("apply --dry-run -o json", e.apply(less, "--dry-run", "-o", "json"))
	if got := e.staleStatus(); len(got) != 0 {
		t.Fatalf("status lists stale sockets after a dry run: %+v", got)
	}

	out = e.apply(less)
	checkText("apply", out, lines("still hold"))
	checkText("apply", out, []string{"which it no longer owns: they receive nothing; restart what holds them"})
	if strings.Contains(out, "db:") {
		t.Errorf("apply reports db, which lost nothing:\n%s", out)
	}
	checkJSON("status -o json", e.mustRun("status", "-o", "json"))
	checkText("status", e.mustRun("status"), lines("still hold"))

	// Given back and taken again: -o json of a real apply.
	e.apply(both)
	if got := e.staleStatus(); len(got) != 0 {
		t.Fatalf("status lists stale sockets once web owns their addresses again: %+v", got)
	}
	checkJSON("apply -o json", e.apply(less, "-o", "json"))

	// db takes 10.77.0.5: web's sockets there are another's address now.
	e.apply("containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1]\n  db:\n    addresses: [10.77.0.2/24, 10.77.0.5/24]\n")
	got := e.staleStatus()
	if len(got) != 2 || got[0].Addr != "10.77.0.5" || got[0].OwnedBy != "db" || got[1].OwnedBy != "" {
		t.Errorf("status after db took 10.77.0.5: %+v, want web's sockets there owned by db", got)
	}

	for _, close := range open {
		close()
	}
	if got := e.staleStatus(); len(got) != 0 {
		t.Errorf("status lists stale sockets after they were closed: %+v", got)
	}
	if out := e.mustRun("status"); strings.Contains(out, "stale sockets") {
		t.Errorf("status text lists stale sockets after they were closed:\n%s", out)
	}
}

// TestDelOutlived: a container's process leaves its cgroup with a TCP
// listener (shadow) and a UDP socket on the container's address; `container
// del` stops nothing and says that those two sockets outlived it.
func TestDelOutlived(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply("containers:\n  db:\n    addresses: [10.77.0.2/24, fd77::2]\n")
	db := e.agent("db")
	ln := db.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err := db.Bind(ln, ap("[fd77::2]:7100")); err != nil {
		t.Fatal(err)
	}
	if err := db.Listen(ln); err != nil {
		t.Fatal(err)
	}
	udp := db.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := db.Bind(udp, ap("10.77.0.2:7101")); err != nil {
		t.Fatal(err)
	}
	// The agent leaves: its sockets stay db's (a socket keeps the cgroup
	// it was made in), as one passed to a process elsewhere would.
	if err := db.WriteFile(filepath.Join(e.hostCg, "cgroup.procs"), []byte(strconv.Itoa(db.Pid()))); err != nil {
		t.Fatal(err)
	}
	out := e.mustRun("container", "del", "db")
	for _, w := range []string{
		`container "db" deleted: no processes were running`,
		"db: 1 socket (1 UDP socket) outlived the container (a process elsewhere holds it) and still holds 10.77.0.2",
		"db: 1 socket (1 TCP listener) outlived the container (a process elsewhere holds it) and still holds fd77::2",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("container del does not say %q:\n%s", w, out)
		}
	}
}

// staleStatus reads "stale_sockets" of `l3iso status -o json`.
func (e *env) staleStatus() []staleJSON {
	e.t.Helper()
	var j struct {
		Stale []staleJSON `json:"stale_sockets"`
	}
	out := e.mustRun("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		e.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if j.Stale == nil {
		e.t.Fatalf("status -o json has no stale_sockets list:\n%s", out)
	}
	return j.Stale
}

// TestStaleSocketsNetns: a netns container's sockets on an address an
// apply removes are in its own namespace, which apply and status read.
func TestStaleSocketsNetns(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	api := n.name("api")
	n.names = append(n.names, api)
	policy := func(addrs string) string {
		return "containers:\n  " + api + ":\n    mode: netns\n    addresses: [" + addrs + "]\n"
	}
	n.apply(policy("10.78.0.1/24, 10.78.0.5/24, fd78::1, fd78::5"))
	in := n.in(api)
	ln := in.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err := in.Bind(ln, ap("10.78.0.5:7000")); err != nil {
		t.Fatal(err)
	}
	if err := in.Listen(ln); err != nil {
		t.Fatal(err)
	}
	udp := in.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	if err := in.Bind(udp, ap("[fd78::5]:7001")); err != nil {
		t.Fatal(err)
	}
	if got := n.staleStatus(); len(got) != 0 {
		t.Fatalf("status lists stale sockets while %s owns their addresses: %+v", api, got)
	}
	out := n.apply(policy("10.78.0.1/24, fd78::1"))
	for _, w := range []string{
		api + ": 1 socket (1 TCP listener) still holds 10.78.0.5, which it no longer owns",
		api + ": 1 socket (1 UDP socket) still holds fd78::5, which it no longer owns",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("apply does not say %q:\n%s", w, out)
		}
	}
	want := []staleJSON{
		{Container: api, Addr: "10.78.0.5", Sockets: 1, TCPListening: 1},
		{Container: api, Addr: "fd78::5", Sockets: 1, UDP: 1},
	}
	if got := n.staleStatus(); !slices.Equal(got, want) {
		t.Errorf("status: stale_sockets %+v, want %+v", got, want)
	}
	in.Close(ln)
	in.Close(udp)
	if got := n.staleStatus(); len(got) != 0 {
		t.Errorf("status lists stale sockets after they were closed: %+v", got)
	}
}
