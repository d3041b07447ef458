package loader_test

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

func TestMain(m *testing.M) {
	sockprobe.MaybeServe()
	m.Run()
}

// upIn runs loader.Up from inside the network namespace at path: Up
// attaches TCX programs to lo (and the uplink) and sets lo's sysctls in the
// namespace it runs in, which must never be the machine's.
func upIn(t *testing.T, path string, o loader.Options) (*loader.State, bool, error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // this thread must not go back to the pool in the wrong namespace
		}
	}()
	return loader.Up(o)
}

// TestUpgradeInPlace installs an "older binary" (the same programs with
// other instructions, and without the post_bind programs, which came
// later), then runs Up with the current one: every pinned link must keep
// its id and run the new program, the new programs must be attached, and a
// container's wildcard binds must stay rewritten before, during and after
// the swap.
func TestUpgradeInPlace(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	netns := sockprobe.NewNetns(t)
	root := sockprobe.NewCgroup(t, "")
	dir := filepath.Join(sockprobe.NewBPFFS(t), "l3iso")

	restore := loader.SetSocketSpec(func() (*ebpf.CollectionSpec, error) {
		spec, err := loader.VariantSpec()
		if err == nil {
			delete(spec.Programs, "l3_post_bind4")
			delete(spec.Programs, "l3_post_bind6")
		}
		return spec, err
	})
	st, changed, err := upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	restore()
	if err != nil || !changed {
		t.Fatalf("first up: changed=%v err=%v", changed, err)
	}
	t.Cleanup(func() {
		// Teardown restores lo's sysctls: those of the test's netns.
		err := inNetns(netns, func() error {
			if st, err := loader.Open(dir, true); err == nil {
				st.Teardown()
				st.Close()
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	before, err := st.Links()
	if err != nil {
		t.Fatal(err)
	}

	// A container owning 10.77.0.1, local in the test's netns.
	cg := filepath.Join(root, loader.ContainersDir, "web")
	if err := cgroup.Create(cg); err != nil {
		t.Fatal(err)
	}
	id, _ := cgroup.ID(cg)
	a, _ := policy.ParseAddress("10.77.0.1")
	web := maps.Container{ID: 1, CgroupID: id, Spec: policy.Container{Name: "web", Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated, Addresses: []policy.Address{a}}}
	g, err := st.Maps.Active()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Insert(web); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if out, err := exec.Command("nsenter", "--net="+netns, "ip", "route", "add", "local", "10.77.0.1", "dev", "lo", "table", "local").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	agent := sockprobe.Start(t, sockprobe.Options{CgroupDir: cg, NetnsPath: netns})
	want := netip.MustParseAddr("10.77.0.1")
	checkBind := func(when string) {
		t.Helper()
		id := agent.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer agent.Close(id)
		if err := agent.Bind(id, netip.MustParseAddrPort("0.0.0.0:0")); err != nil {
			t.Fatalf("%s: bind 0.0.0.0: %v", when, err)
		}
		if got, _ := agent.SockName(id); got.Addr() != want {
			t.Fatalf("%s: wildcard bind ended on %s, want %s: the programs were not enforcing", when, got, want)
		}
	}
	checkBind("before the upgrade")

	// Binds keep being checked while the new programs go in.
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			id := agent.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			err := agent.Bind(id, netip.MustParseAddrPort("0.0.0.0:0"))
			got, _ := agent.SockName(id)
			agent.Close(id)
			if err != nil || got.Addr() != want {
				t.Errorf("during the upgrade: wildcard bind → %s, %v", got, err)
			}
			n++
		}
	}()
	time.Sleep(20 * time.Millisecond)
	st, changed, err = upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	time.Sleep(20 * time.Millisecond)
	close(stop)
	n := <-done
	if err != nil || !changed {
		t.Fatalf("upgrade: changed=%v err=%v", changed, err)
	}
	after, err := st.Links()
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+2 {
		t.Fatalf("%d links before, %d after, want the 2 post_bind programs more", len(before), len(after))
	}
	now := map[string]loader.LinkInfo{}
	for _, l := range after {
		now[l.Name] = l
	}
	for _, b := range before {
		a, ok := now[b.Name]
		if !ok {
			t.Errorf("%s: gone after the upgrade", b.Name)
			continue
		}
		delete(now, b.Name)
		if strings.HasPrefix(b.Name, "tc-") {
			continue // TC programs: not part of the socket programs' variant build
		}
		if b.ID != a.ID {
			t.Errorf("%s: link %d replaced by %d, want the same link updated", b.Name, b.ID, a.ID)
		}
		if b.Tag == a.Tag || b.ProgramID == a.ProgramID {
			t.Errorf("%s: program not upgraded (tag %s, id %d)", b.Name, a.Tag, a.ProgramID)
		}
	}
	if _, ok := now["l3_post_bind4"]; !ok || len(now) != 2 {
		t.Errorf("new links after the upgrade: %v, want l3_post_bind4 and l3_post_bind6", now)
	}
	t.Logf("%d binds checked during the upgrade", n)
	checkBind("after the upgrade")

	// The new post_bind program registers a UDP wildcard listener on the
	// port the kernel chose.
	u := agent.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := agent.Bind(u, netip.MustParseAddrPort("0.0.0.0:0")); err != nil {
		t.Fatal(err)
	}
	got, _ := agent.SockName(u)
	st, err = loader.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := st.Maps.Listeners()
	st.Close()
	agent.Close(u)
	if err != nil || !slices.ContainsFunc(ls, func(l maps.Listener) bool { return l.ID == 1 && l.Port == got.Port() }) {
		t.Errorf("after the upgrade, a UDP bind to port 0 (got %v) is not a listener: %+v, %v", got, ls, err)
	}

	// A second up with the same binary changes nothing.
	st, changed, err = upIn(t, netns, loader.Options{CgroupRoot: root, BPFFS: dir})
	if err != nil || changed {
		t.Fatalf("repeated up: changed=%v err=%v", changed, err)
	}
	st.Close()
}
