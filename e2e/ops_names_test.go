package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/veth"
)

// secondEnv is another l3iso installation in e's network namespace: its
// own cgroup subtree, bpffs mount and state directory. Cleanup takes it
// down and checks that it left no network namespace.
func (e *env) secondEnv(upArgs ...string) *env {
	t := e.t
	t.Helper()
	o := &env{t: t, netns: e.netns, cgroot: sockprobe.NewCgroup(t, ""), state: t.TempDir()}
	o.hostCg = filepath.Join(o.cgroot, "host")
	if err := os.Mkdir(o.hostCg, 0o755); err != nil {
		t.Fatal(err)
	}
	o.bpffs = filepath.Join(sockprobe.NewBPFFS(t), "l3iso")
	o.mustRun(append([]string{"up", "--cgroup-root", o.cgroot}, upArgs...)...)
	t.Cleanup(func() {
		o.run("down")
		o.checkNetnsGone()
	})
	return o
}

// TestTwoInstallations: two installations with different --bpffs on one
// host, each with a netns container of the same name, name their
// namespaces and veths apart (a tag from each --bpffs); neither's repair
// takes the other's for its own leftovers, and each removes only its own.
func TestTwoInstallations(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	o := n.secondEnv("--delivery", "routed")
	name := n.name("same")
	n.names = append(n.names, name)
	n.mustRun("container", "add", name, "--mode", "netns", "--addr", "10.78.0.1/24")
	o.mustRun("container", "add", name, "--mode", "netns", "--addr", "10.78.1.1/24")
	defer o.run("container", "del", name)

	ka, kb := veth.Key(loader.NameTag(n.bpffs), name), veth.Key(loader.NameTag(o.bpffs), name)
	if ka == kb || ka == name || kb == name {
		t.Fatalf("keys %q and %q: want two tagged keys", ka, kb)
	}
	// Each says where its container lives, and those are the kernel's.
	for _, c := range []struct {
		e   *env
		key string
	}{{n.env, ka}, {o, kb}} {
		list := c.e.listJSON()
		if len(list) != 1 || list[0].Netns != veth.NetnsName(c.key) || list[0].HostVeth != veth.HostIfName(c.key) {
			t.Fatalf("container list of %s: %+v; want netns %s, veth %s", c.e.bpffs, list, veth.NetnsName(c.key), veth.HostIfName(c.key))
		}
		if !strings.HasPrefix(list[0].Netns, veth.NetnsPrefix) || !strings.HasPrefix(list[0].HostVeth, veth.HostIfPrefix) {
			t.Errorf("names %s, %s leave the l3iso-* and l3i-* patterns (.ci/run cleans them up by those)", list[0].Netns, list[0].HostVeth)
		}
		if _, err := os.Stat(veth.NetnsPath(c.key)); err != nil {
			t.Errorf("namespace of %s: %v", c.key, err)
		}
		if out := c.e.mustRun("status"); !strings.Contains(out, list[0].Netns+"/"+list[0].HostVeth) {
			t.Errorf("status of %s does not show %s/%s:\n%s", c.e.bpffs, list[0].Netns, list[0].HostVeth, out)
		}
	}
	// Each repairs (up, and a dirty state's reconcile) without touching
	// the other's namespace.
	n.mustRun("up")
	o.mustRun("up")
	for _, key := range []string{ka, kb} {
		if _, err := os.Stat(veth.NetnsPath(key)); err != nil {
			t.Errorf("after both ups, namespace of %s: %v", key, err)
		}
	}
	// Both containers work: each binds its own address in its namespace.
	for _, c := range []struct {
		key, cg, addr string
	}{{ka, n.cgroupOf(name), "10.78.0.1:7990"}, {kb, o.cgroupOf(name), "10.78.1.1:7990"}} {
		a := sockprobe.Start(t, sockprobe.Options{CgroupDir: c.cg, NetnsPath: veth.NetnsPath(c.key)})
		id := a.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err := a.Bind(id, netip.MustParseAddrPort(c.addr)); err != nil {
			t.Errorf("bind %s in %s: %v", c.addr, c.key, err)
		}
	}
	reach(t, unix.SOCK_DGRAM, n.out(), n.in(name), netip.MustParseAddrPort("10.78.0.1:7991"), outside4)
	// One's delete leaves the other's container whole.
	o.mustRun("container", "del", name)
	if _, err := os.Stat(veth.NetnsPath(kb)); err == nil {
		t.Errorf("del left %s", veth.NetnsPath(kb))
	}
	if _, err := os.Stat(veth.NetnsPath(ka)); err != nil {
		t.Errorf("the other installation's del removed %s", veth.NetnsPath(ka))
	}
	reach(t, unix.SOCK_DGRAM, n.out(), n.in(name), netip.MustParseAddrPort("10.78.0.1:7992"), outside4)
	if r := n.run("status"); r.code != 0 {
		t.Errorf("status after the other's del: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestNamesKept: an installation made before name tags keeps its netns
// containers' untagged names through up (a newer binary's too) and
// repairs; once it has no netns container, up gives it its tag.
func TestNamesKept(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	n.editConfig(func(cfg *maps.Config) { cfg.NameTag = "" }) // as an l3iso before tags made it
	old := n.name("old")
	n.names = append(n.names, old)
	n.mustRun("container", "add", old, "--mode", "netns", "--addr", "10.78.0.1/24")
	if _, err := os.Stat(veth.NetnsPath(old)); err != nil {
		t.Fatalf("untagged namespace of %s: %v", old, err)
	}
	in := sockprobe.Start(t, sockprobe.Options{CgroupDir: n.cgroupOf(old), NetnsPath: veth.NetnsPath(old)})
	out := n.out()
	cid, sid := tcpConn(t, out, in, tcp4, "10.78.0.1:7995")
	n.mustRun("up")
	n.markDirty()
	n.mustRun("up") // a repair
	list := n.listJSON()
	if len(list) != 1 || list[0].Netns != veth.NetnsName(old) || list[0].HostVeth != veth.HostIfName(old) {
		t.Fatalf("after up: %+v; want the untagged names %s, %s kept", list, veth.NetnsName(old), veth.HostIfName(old))
	}
	if err := out.Write(cid, []byte("still")); err != nil {
		t.Fatal(err)
	}
	if got, err := in.Read(sid, 3*time.Second); err != nil || string(got) != "still" {
		t.Fatalf("the connection into %s after up: %q, %v", old, got, err)
	}
	if r := n.run("status"); r.code != 0 {
		t.Errorf("status: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Without netns containers, up gives the installation its tag.
	n.mustRun("container", "del", old)
	n.mustRun("up")
	fresh := n.add("new", "10.78.0.2/24")
	if list := n.listJSON(); len(list) != 1 || list[0].Netns != veth.NetnsName(n.key(fresh)) || n.key(fresh) == fresh {
		t.Errorf("a new container after the tag: %+v; want namespace %s", list, veth.NetnsName(n.key(fresh)))
	}
}
