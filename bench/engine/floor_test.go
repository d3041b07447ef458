package engine

import (
	"golang.org/x/sys/unix"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/loader"
)

// TestAttachDoNothing checks that hook_floor's cgroup has one do-nothing
// program at every attach point of l3iso's socket programs, its namespace
// one at sk_lookup and lo's TCX ingress, and none once closed; that
// AttachDoNothingCgroup leaves out the namespace's, and
// AttachDoNothingSockets the skb ones too.
func TestAttachDoNothing(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	cg := sockprobe.NewCgroup(t, "")
	// l3_sk_lookup's stand-in attaches to this thread's network
	// namespace: a fresh one, gone with the thread.
	runtime.LockOSThread() // never unlocked: the thread exits with the test
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	spec, err := loader.SocketSpec()
	if err != nil {
		t.Fatal(err)
	}
	count := func(at ebpf.AttachType) (n int, names []string) {
		t.Helper()
		target := cg
		if at == ebpf.AttachSkLookup {
			target = "/proc/thread-self/ns/net"
		}
		q := link.QueryOptions{Attach: at}
		if at == ebpf.AttachTCXIngress {
			q.Target = loIfindex // lo, in this thread's namespace
		} else {
			f, err := os.Open(target)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			q.Target = int(f.Fd())
		}
		names = sockprobe.ProgramNames(t, q)
		return len(names), names
	}

	d, err := AttachDoNothing(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(spec.Programs) < 10 {
		t.Fatalf("l3iso has %d socket programs, expected more than 10", len(spec.Programs))
	}
	// Every socket program's attach point, and l3_tc_group's on lo.
	points := map[string]ebpf.AttachType{"l3_tc_group": ebpf.AttachTCXIngress}
	for name, ps := range spec.Programs {
		points[name] = ps.AttachType
	}
	check := func(what string, skb, netnsWide bool) {
		t.Helper()
		for name, at := range points {
			want := 1
			switch at {
			case ebpf.AttachCGroupInetIngress, ebpf.AttachCGroupInetEgress:
				if !skb {
					want = 0
				}
			case ebpf.AttachSkLookup, ebpf.AttachTCXIngress:
				if !netnsWide {
					want = 0
				}
			}
			if n, names := count(at); n != want || (n == 1 && names[0] != "l3b_nothing") {
				t.Errorf("%s: %v (in place of %s): attached %v, want %d l3b_nothing", what, at, name, names, want)
			}
		}
	}
	closed := func(d *DoNothing) {
		t.Helper()
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		for name, at := range points {
			if n, names := count(at); n != 0 {
				t.Errorf("%v (in place of %s): %v still attached after Close", at, name, names)
			}
		}
	}
	check("AttachDoNothing", true, true)
	closed(d)

	// The cgroup's attach points only (a workload in an installation's
	// namespace).
	d, err = AttachDoNothingCgroup(cg)
	if err != nil {
		t.Fatal(err)
	}
	check("AttachDoNothingCgroup", true, false)
	closed(d)

	// The socket hooks only: everything but the two skb attach points.
	d, err = AttachDoNothingSockets(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	check("AttachDoNothingSockets", false, false)
}
