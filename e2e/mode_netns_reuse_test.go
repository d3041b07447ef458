package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/veth"
)

// TestApplyReuseAddress: one apply replaces netns container a by b, which
// takes a's address, while a TCP connection of a's cannot finish closing.
// a's server was sending to a client that reads nothing, so when the apply
// kills it, its socket lives on as an orphan in FIN_WAIT1, probing a zero
// window, and holds a's namespace alive — and with it a's veth and the
// host routes to its addresses — for a minute or more. b must still be
// made, with the addresses, and reachable on each.
func TestApplyReuseAddress(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	a, b := n.name("a"), n.name("b")
	n.names = append(n.names, a, b)
	dir := t.TempDir()
	policy := func(name string) string {
		f := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("containers:\n  %s:\n    mode: netns\n    addresses: [10.78.0.9/24, fd78::9]\n", name)
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	n.mustRun("apply", "-f", policy(a))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const server = `
import socket
s = socket.socket()
s.bind(("10.78.0.9", 7000))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
while True:
    c.send(b"x" * 65536)
`
	const client = `
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("10.78.0.9", 7000))
print("connected", flush=True)
time.sleep(300)
`
	srv := sockprobe.Command(ctx, t, sockprobe.Options{CgroupDir: n.cgroupOf(a), NetnsPath: veth.NetnsPath(n.key(a))}, "python3", "-c", server)
	cli := sockprobe.Command(ctx, t, sockprobe.Options{NetnsPath: n.outside}, "python3", "-c", client)
	for _, c := range []struct {
		cmd  *exec.Cmd
		want string
	}{{srv, "listening"}, {cli, "connected"}} {
		out, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
		line := make([]byte, 64)
		k, _ := out.Read(line)
		if !strings.Contains(string(line[:k]), c.want) {
			t.Fatalf("python3 said %q, want %q", line[:k], c.want)
		}
	}
	// Until the client's window is shut and the server's send queue full.
	hostIf := veth.HostIfName(n.key(a))
	queued := func() string {
		out, _ := exec.Command("nsenter", "--net="+veth.NetnsPath(n.key(a)), "ss", "-tnH", "state", "established").CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	deadline := time.Now().Add(5 * time.Second)
	for f := strings.Fields(queued()); len(f) < 3 || f[1] == "0"; f = strings.Fields(queued()) {
		if time.Now().After(deadline) {
			t.Fatalf("the server's send queue never filled: %q", queued())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// a's server still runs: the apply must be told to stop it.
	n.mustRun("apply", "-f", policy(b), "--prune")
	if out, _ := exec.Command("ip", "-n", filepath.Base(n.netns), "-br", "link", "show", hostIf).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("a's veth is still there after the apply: %s", out)
	}
	// Both of b's host routes, IPv4 and IPv6, were a's: b is reached on
	// each, over UDP and TCP.
	out, in := n.out(), n.in(b)
	reach(t, unix.SOCK_DGRAM, out, in, netip.MustParseAddrPort("10.78.0.9:8100"), outside4)
	reach(t, unix.SOCK_STREAM, out, in, netip.MustParseAddrPort("10.78.0.9:8101"), outside4)
	reach(t, unix.SOCK_DGRAM, out, in, netip.MustParseAddrPort("[fd78::9]:8100"), outside6)
	reach(t, unix.SOCK_STREAM, out, in, netip.MustParseAddrPort("[fd78::9]:8101"), outside6)
}

// TestStrayVeth: a host veth l3iso made for a container that is gone and
// whose namespace mount is gone too (an orphan socket kept the namespace)
// is deleted by the next repair and by down; a live container's is kept.
func TestStrayVeth(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	live := n.add("live", "10.78.0.3/24")
	hostNS := filepath.Base(n.netns)
	stray := func() string {
		name := veth.HostIfName(n.key(n.name("gone")))
		for _, args := range [][]string{
			{"-n", hostNS, "link", "add", name, "type", "veth", "peer", "name", "p-" + n.suffix},
			{"-n", hostNS, "link", "set", name, "alias", "l3iso:" + n.key(n.name("gone"))},
			{"-n", hostNS, "link", "set", name, "up"},
			{"-n", hostNS, "route", "add", "10.78.0.77/32", "dev", name},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		return name
	}
	gone := func(name string) bool {
		out, _ := exec.Command("ip", "-n", hostNS, "-br", "link", "show", name).CombinedOutput()
		return strings.Contains(string(out), "does not exist")
	}

	name := stray()
	n.markDirty()
	n.mustRun("container", "add", n.name("probe"), "--addr", "10.79.9.9") // repairs
	n.mustRun("container", "del", n.name("probe"))
	if !gone(name) {
		t.Errorf("the repair left the stray veth %s", name)
	}
	if gone(veth.HostIfName(n.key(live))) {
		t.Fatalf("the repair deleted the veth of live container %s", live)
	}
	reach(t, unix.SOCK_DGRAM, n.out(), n.in(live), netip.MustParseAddrPort("10.78.0.3:8100"), outside4)

	name = stray()
	n.mustRun("down")
	if !gone(name) {
		t.Errorf("down left the stray veth %s", name)
	}
	n.mustRun("up", "--cgroup-root", n.cgroot, "--uplink", "up0") // for the cleanup's down
}
