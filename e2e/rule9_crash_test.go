package e2e

// Rule 9 and crash consistency: l3iso killed at many instants of apply,
// container add and del, and up leaves the old state or the new one,
// never a mix, and the next command finishes the job. (The dirty-bit
// rollback of a killed del is rule9_killed_test.go; pushes under live
// traffic rule9_churn_test.go.)

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/veth"
)

// killAt runs l3iso with args and SIGKILLs it after d.
func (e *env) killAt(d time.Duration, args ...string) {
	e.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.netns, binary, "--bpffs", e.bpffs}, args...)...)
	cmd.Env = append(os.Environ(), e.environ()...) // its audit log is the env's
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// TestApplyCrash kills l3iso at many instants of a large apply: afterwards
// the installed policy is the old or the new one, never a mix, and the next
// command finishes the job.
func TestApplyCrash(t *testing.T) {
	// Not parallel: it kills l3iso at instants taken from a timed run,
	// which only mean something if nothing else loads the machine
	// between the timing and the kills.
	e := newEnv(t)
	gen := func(n, base int) string {
		var b strings.Builder
		b.WriteString("containers:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "  c%04d:\n    addresses: [10.%d.%d.%d]\n", i, 90+base, i/250, i%250+1)
		}
		return b.String()
	}
	old, neu := gen(2000, 0), gen(2000, 1)
	e.apply(old)
	dir := t.TempDir()
	pf := filepath.Join(dir, "new.yaml")
	if err := os.WriteFile(pf, []byte(neu), 0o644); err != nil {
		t.Fatal(err)
	}
	// Time one whole apply, then kill at fractions of it.
	start := time.Now()
	e.mustRun("apply", "-f", pf)
	full := time.Since(start)
	e.apply(old)
	seen := map[string]int{}
	for i := 1; i <= 12; i++ {
		delay := full * time.Duration(i+6) / 16 // 44% .. 112% of a whole apply
		e.killAt(delay, "apply", "-f", pf)
		list := e.listJSON() // reads only: no repair before the check
		if len(list) != 2000 {
			t.Fatalf("round %d (kill after %v): %d containers listed, want the 2000 of one policy", i, delay, len(list))
		}
		first := list[0].Addresses[0]
		for _, c := range list {
			if len(c.Addresses) != 1 || strings.HasPrefix(c.Addresses[0], "10.90.") != strings.HasPrefix(first, "10.90.") {
				t.Fatalf("round %d (kill after %v): a mix of old and new policy: %s and %s: %v", i, delay, c.Name, first, c.Addresses)
			}
		}
		state := "old"
		if !strings.HasPrefix(first, "10.90.") {
			state = "new"
		}
		seen[state]++
		t.Logf("round %d: killed after %v of %v: %s policy in force (%d containers)", i, delay, full, state, len(list))
		// The next mutating command repairs and completes.
		e.mustRun("apply", "-f", pf)
		e.apply(old)
	}
	t.Logf("outcomes: %v", seen)
	addrs := e.hostAddrs()
	if strings.Contains(addrs, "10.91.") {
		t.Errorf("old policy active but new addresses configured:\n%s", addrs)
	}
	if n := strings.Count(addrs, "local 10.90."); n != 2000 {
		t.Errorf("%d of 2000 addresses configured after repeated crashes", n)
	}
}

// TestAddCrash kills `container add` at many instants: afterwards the
// container exists completely (after the next command's repair) or not at
// all — no cgroup, no address, no ownership left behind.
func TestAddCrash(t *testing.T) {
	// Not parallel: it kills l3iso at instants taken from a timed run,
	// which only mean something if nothing else loads the machine
	// between the timing and the kills.
	e := newEnv(t)
	e.mustRun("container", "add", "base", "--addr", "10.77.0.1")
	start := time.Now()
	e.mustRun("container", "add", "x", "--addr", "10.77.7.1/24", "--addr", "fd77::7")
	full := time.Since(start)
	e.mustRun("container", "del", "x")
	host := e.agent("")
	seen := map[bool]int{}
	for i := 0; i < 10; i++ {
		e.killAt(full*time.Duration(i+3)/10, "container", "add", "x", "--addr", "10.77.7.1/24", "--addr", "fd77::7")
		// The next changing command repairs whatever the kill left.
		e.mustRun("container", "add", "probe", "--addr", "10.77.8.1")
		e.mustRun("container", "del", "probe")
		exists := false
		for _, c := range e.listJSON() {
			exists = exists || c.Name == "x"
		}
		seen[exists]++
		addrs := e.hostAddrs()
		_, cgErr := os.Stat(e.cgroupOf("x"))
		if exists {
			if !strings.Contains(addrs, "local 10.77.7.1 ") || !strings.Contains(addrs, "fd77::7/128") || cgErr != nil {
				t.Fatalf("round %d: x exists but is incomplete (cgroup: %v):\n%s", i, cgErr, addrs)
			}
			e.mustRun("container", "del", "x")
		} else if strings.Contains(addrs, "10.77.7.1") || strings.Contains(addrs, "fd77::7") || cgErr == nil {
			t.Fatalf("round %d: x does not exist but left something (cgroup: %v):\n%s", i, cgErr, addrs)
		}
		// Nothing of x is owned any more: the host may use the IP again
		// once someone configures it (no ghost owner).
		if !exists {
			out, err := exec.Command("nsenter", "--net="+e.netns, "ip", "route", "add", "local", "10.77.7.1", "dev", "lo", "table", "local").CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			id := host.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err := host.Bind(id, ap("10.77.7.1:0")); err != nil {
				t.Errorf("round %d: host cannot bind 10.77.7.1 after the add died: %v (a ghost owns it)", i, err)
			}
			host.Close(id)
			exec.Command("nsenter", "--net="+e.netns, "ip", "route", "del", "local", "10.77.7.1", "dev", "lo", "table", "local").Run()
		}
	}
	t.Logf("outcomes (exists → rounds): %v", seen)
}

// TestUpCrash kills `up` at many instants; the next `up` finishes the job
// and `down` removes everything.
func TestUpCrash(t *testing.T) {
	// Not parallel: it kills l3iso at instants taken from a timed run,
	// which only mean something if nothing else loads the machine
	// between the timing and the kills.
	e := newBareEnv(t)
	t.Cleanup(func() { e.run("down") }) // whatever round failed; down of nothing is harmless
	start := time.Now()
	e.mustRun("up", "--cgroup-root", e.cgroot)
	full := time.Since(start)
	e.mustRun("down")
	for i := 0; i < 8; i++ {
		e.killAt(full*time.Duration(i+1)/8, "up", "--cgroup-root", e.cgroot)
		e.mustRun("up", "--cgroup-root", e.cgroot)
		st := e.status()
		// 19 cgroup hooks, l3_sk_lookup on the netns and l3_tc_group on lo.
		if len(st.Links) != 21 {
			t.Fatalf("round %d: %d links after the repeated up, want 21", i, len(st.Links))
		}
		e.mustRun("container", "add", "web", "--addr", "10.77.0.1")
		e.mustRun("down")
		if entries, _ := os.ReadDir(filepath.Dir(e.bpffs)); len(entries) > 2 {
			t.Fatalf("round %d: down left pins behind: %v", i, entries)
		}
	}
}

// TestNetnsCrash kills `container add --mode netns` and `container del` at
// many instants: after the next changing command the container exists
// completely (namespace, veth, TC link, reachable) or not at all (no
// namespace, veth or TC link left).
func TestNetnsCrash(t *testing.T) {
	// Not parallel: it kills l3iso at instants taken from a timed run,
	// which only mean something if nothing else loads the machine
	// between the timing and the kills.
	n := newNetEnv(t, "direct")
	x := n.name("x")
	n.names = append(n.names, x)
	add := []string{"container", "add", x, "--mode", "netns", "--addr", "10.78.0.7/24", "--addr", "fd78::7"}
	start := time.Now()
	n.mustRun(add...)
	full := time.Since(start)
	start = time.Now()
	n.mustRun("container", "del", x)
	fullDel := time.Since(start)
	t.Logf("add took %v, del %v", full, fullDel)
	out := n.out()
	seen := map[string]int{}
	hostNS := filepath.Base(n.netns)
	for i := 0; i < 12; i++ {
		what := "add"
		if i%2 == 1 {
			what = "del"
			if !n.exists(x) {
				n.mustRun(add...)
			}
			n.killAt(fullDel*time.Duration(i+2)/12, "container", "del", x)
		} else {
			if n.exists(x) {
				n.mustRun("container", "del", x)
			}
			n.killAt(full*time.Duration(i+2)/12, add...)
		}
		probe := n.name("probe")
		n.mustRun("container", "add", probe, "--addr", "10.79.9.9") // repairs
		n.mustRun("container", "del", probe)
		_, nsErr := os.Stat(veth.NetnsPath(n.key(x)))
		link, _ := exec.Command("ip", "-n", hostNS, "-br", "link", "show", veth.HostIfName(n.key(x))).CombinedOutput()
		_, pinErr := os.Stat(filepath.Join(n.bpffs, "links", "tc-"+veth.HostIfName(n.key(x))+"-ingress"))
		if n.exists(x) {
			seen[what+": exists"]++
			if nsErr != nil || pinErr != nil || !strings.Contains(string(link), "UP") {
				t.Fatalf("round %d (%s): %s exists but is incomplete: netns %v, TC pin %v, veth %s", i, what, x, nsErr, pinErr, link)
			}
			reach(t, unix.SOCK_DGRAM, out, n.in(x), netip.MustParseAddrPort("[fd78::7]:8100"), outside6)
		} else {
			seen[what+": absent"]++
			if nsErr == nil || pinErr == nil || !strings.Contains(string(link), "does not exist") {
				t.Fatalf("round %d (%s): %s is gone but left: netns %v, TC pin %v, veth %q", i, what, x, nsErr, pinErr, link)
			}
		}
	}
	t.Logf("outcomes: %v", seen)
}

// exists reports whether container c is in `container list`.
func (e *env) exists(c string) bool {
	e.t.Helper()
	for _, k := range e.listJSON() {
		if k.Name == c {
			return true
		}
	}
	return false
}
