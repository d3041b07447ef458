package loader_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
)

// TestEgressBackstopPlacement: l3_egress, which checks only containers'
// packets, runs for a container's sockets and not for those of a host
// process under the cgroup root, which would pay for it on every packet it
// sends and gain nothing (issue 17); the ingress backstop and the socket
// hooks run for both. Check finds the installation whole, and `l3iso
// status` shows where the egress link is.
func TestEgressBackstopPlacement(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	netns := sockprobe.NewNetns(t)
	root := sockprobe.NewCgroup(t, "")
	dir := filepath.Join(sockprobe.NewBPFFS(t), "l3iso")
	st, _, err := upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
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
	for _, c := range []struct {
		at         ebpf.AttachType
		prog       string
		host, cont bool
	}{
		{ebpf.AttachCGroupInetEgress, "l3_egress", false, true},
		{ebpf.AttachCGroupInetIngress, "l3_ingress", true, true},
		{ebpf.AttachCGroupUDP4Sendmsg, "l3_sendmsg4", true, true},
		{ebpf.AttachCGroupInet4Bind, "l3_bind4", true, true},
	} {
		if got := effective(t, host, c.at, c.prog); got != c.host {
			t.Errorf("%s runs for a host process under the root (%s): %v, want %v", c.prog, host, got, c.host)
		}
		if got := effective(t, web, c.at, c.prog); got != c.cont {
			t.Errorf("%s runs for a container (%s): %v, want %v", c.prog, web, got, c.cont)
		}
	}
	var problems []loader.Problem
	if err := inNetns(netns, func() (err error) { problems, err = st.Check(); return err }); err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("Check: %s", p)
	}
	links, err := st.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Name == "l3_egress" && l.Target != filepath.Join(root, loader.ContainersDir) {
			t.Errorf("link l3_egress shows target %q, want %s", l.Target, filepath.Join(root, loader.ContainersDir))
		}
	}
}

// effective reports whether program name (its kernel name) is among the
// programs of attach type at that run for sockets of cgroup cg.
func effective(t *testing.T, cg string, at ebpf.AttachType, name string) bool {
	t.Helper()
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return slices.Contains(sockprobe.ProgramNames(t, link.QueryOptions{Target: int(f.Fd()), Attach: at, QueryFlags: unix.BPF_F_QUERY_EFFECTIVE}), name)
}
