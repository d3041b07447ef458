package engine

import (
	"golang.org/x/sys/unix"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
)

// TestAttachDoNothing checks that hook_floor's cgroup has one do-nothing
// program at every attach point of l3iso's socket programs, and none once
// closed; and that AttachDoNothingSockets leaves out exactly the skb ones.
func TestAttachDoNothing(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	cg := sockprobe.NewCgroup(t, "")
	// l3_sk_lookup's stand-in attaches to this thread's network
	// namespace: a fresh one, gone with the thread.
	runtime.LockOSThread() // never unlocked: the thread exits with the test
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	spec, err := maps.SocketSpec()
	if err != nil {
		t.Fatal(err)
	}
	count := func(at ebpf.AttachType) (n int, names []string) {
		t.Helper()
		target := cg
		if at == ebpf.AttachSkLookup {
			target = "/proc/thread-self/ns/net"
		}
		f, err := os.Open(target)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %v at %s: %v", at, target, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, info.Name)
		}
		return len(res.Programs), names
	}

	d, err := AttachDoNothing(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(spec.Programs) < 10 {
		t.Fatalf("l3iso has %d socket programs, expected more than 10", len(spec.Programs))
	}
	check := func(what string, skb bool) {
		t.Helper()
		for name, ps := range spec.Programs {
			want := 1
			if !skb && (ps.AttachType == ebpf.AttachCGroupInetIngress || ps.AttachType == ebpf.AttachCGroupInetEgress) {
				want = 0
			}
			if n, names := count(ps.AttachType); n != want || (n == 1 && names[0] != "l3b_nothing") {
				t.Errorf("%s: %v (in place of %s): attached %v, want %d l3b_nothing", what, ps.AttachType, name, names, want)
			}
		}
	}
	check("AttachDoNothing", true)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ps := range spec.Programs {
		if n, names := count(ps.AttachType); n != 0 {
			t.Errorf("%v (in place of %s): %v still attached after Close", ps.AttachType, name, names)
		}
	}

	// The socket hooks only: everything but the two skb attach points.
	d, err = AttachDoNothingSockets(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	check("AttachDoNothingSockets", false)
}
