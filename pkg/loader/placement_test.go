package loader_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
)

// upTemp runs Up in a network namespace, cgroup subtree and bpffs of the
// test's own and returns them with the state.
func upTemp(t *testing.T) (st *loader.State, netns, root, dir string) {
	t.Helper()
	sockprobe.RequirePrivileged(t)
	netns = sockprobe.NewNetns(t)
	root = sockprobe.NewCgroup(t, "")
	dir = filepath.Join(sockprobe.NewBPFFS(t), "l3iso")
	st, _, err := upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	if err != nil {
		t.Fatal(err)
	}
	return st, netns, root, dir
}

// TestEgressBackstopPlacement: l3_egress, which checks only containers'
// packets, runs for a container's sockets and not for those of a host
// process under the cgroup root, which would pay for it on every packet it
// sends and gain nothing (issue 17); the ingress backstop and the socket
// hooks run for both. Check finds the installation whole, and `l3iso
// status` shows where the egress link is. An installation made before,
// with l3_egress linked at the root, gets it moved by the next Up: once,
// not twice.
func TestEgressBackstopPlacement(t *testing.T) {
	st, netns, root, dir := upTemp(t)
	t.Cleanup(func() {
		if err := loader.ForceTeardown(dir); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	host := filepath.Join(root, "host")
	web := filepath.Join(root, loader.ContainersDir, "web")
	for _, cg := range []string{host, web} {
		if err := cgroup.Create(cg); err != nil {
			t.Fatal(err)
		}
	}
	placed := func(st *loader.State, when string) {
		t.Helper()
		for _, c := range []struct {
			at         ebpf.AttachType
			prog       string
			host, cont int
		}{
			{ebpf.AttachCGroupInetEgress, "l3_egress", 0, 1},
			{ebpf.AttachCGroupInetIngress, "l3_ingress", 1, 1},
			{ebpf.AttachCGroupUDP4Sendmsg, "l3_sendmsg4", 1, 1},
			{ebpf.AttachCGroupUDP6Sendmsg, "l3_sendmsg6", 1, 1},
			{ebpf.AttachCGroupInet4Bind, "l3_bind4", 1, 1},
		} {
			if got := effective(t, host, c.at, c.prog); got != c.host {
				t.Errorf("%s: %s runs %d times for a host process under the root (%s), want %d", when, c.prog, got, host, c.host)
			}
			if got := effective(t, web, c.at, c.prog); got != c.cont {
				t.Errorf("%s: %s runs %d times for a container (%s), want %d", when, c.prog, got, web, c.cont)
			}
		}
		var problems []loader.Problem
		if err := inNetns(netns, func() (err error) { problems, err = st.Check(); return err }); err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: Check: %s", when, p)
		}
		links, err := st.Links()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, l := range links {
			if l.Name == "l3_egress" {
				found = true
				if l.Target != filepath.Join(root, loader.ContainersDir) {
					t.Errorf("%s: link l3_egress shows target %q, want %s", when, l.Target, filepath.Join(root, loader.ContainersDir))
				}
			}
		}
		if !found {
			t.Errorf("%s: no link l3_egress among %d links", when, len(links))
		}
	}
	placed(st, "after up")
	st.Close() // its shared lock would keep the next Up waiting

	// The layout of an l3iso from before: the same program linked at the
	// root, under the same pin.
	pin := filepath.Join(dir, "links", "l3_egress")
	old, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := old.Info()
	old.Close()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	if err := os.Remove(pin); err != nil { // its last reference: detached
		t.Fatal(err)
	}
	atRoot, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: ebpf.AttachCGroupInetEgress, Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	if err := atRoot.Pin(pin); err != nil {
		t.Fatal(err)
	}
	atRoot.Close()
	if got := effective(t, host, ebpf.AttachCGroupInetEgress, "l3_egress"); got != 1 {
		t.Fatalf("the old layout was not made: l3_egress runs %d times for the host", got)
	}
	st2, _, err := upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	placed(st2, "after up over the old layout")
}

// effective is how many times program name (its kernel name) is among
// the programs of attach type at that run for sockets of cgroup cg.
func effective(t *testing.T, cg string, at ebpf.AttachType, name string) int {
	t.Helper()
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, got := range sockprobe.ProgramNames(t, link.QueryOptions{Target: int(f.Fd()), Attach: at, QueryFlags: unix.BPF_F_QUERY_EFFECTIVE}) {
		if got == name {
			n++
		}
	}
	return n
}
