package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/bench/engine"
	"github.com/l3iso/l3iso/internal/sockprobe"
)

// commandTimeout bounds every l3iso invocation and every child.
const commandTimeout = 5 * time.Minute

// freeAddr is configured on lo of every benchmark netns and owned by no
// container: the address host and unmanaged processes use.
var freeAddr = netip.MustParseAddr("10.99.0.1")

func TestMain(m *testing.M) {
	engine.MaybeWorker(workerRoles) // the benchmarks' children (child_test.go)
	// Every l3iso a benchmark runs keeps its audit log in the run's own
	// directory and tells no syslog: the benchmarks change nothing of the
	// machine's.
	stateDir, err := os.MkdirTemp("", "l3iso-bench-state-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("L3ISO_STATE_DIR", stateDir)
	os.Setenv("L3ISO_SYSLOG", "off")
	code := m.Run()
	os.RemoveAll(stateDir)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var (
	buildDir string
	l3isoBin = sync.OnceValues(buildL3iso)
)

// buildL3iso builds cmd/l3iso once per test binary run. `go test` puts
// its own GOROOT/bin first in the test's PATH.
func buildL3iso() (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build cmd/l3iso: %w", err)
	}
	buildDir, err = os.MkdirTemp("", "l3iso-bench-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(buildDir, "l3iso")
	build := exec.Command(goTool, "build", "-o", bin, "github.com/l3iso/l3iso/cmd/l3iso")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as `make build` does
	out, err := build.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build cmd/l3iso: %w\n%s", err, out)
	}
	return bin, nil
}

// world is one benchmark's private environment: a cgroup subtree, a bpffs
// mount, and the netns and installations made in them. Everything is
// removed by t.Cleanup, and a last cleanup checks that nothing is left.
type world struct {
	tb    testing.TB
	bin   string // the l3iso binary
	top   string // the benchmark's cgroup subtree
	bpffs string // the private bpffs mount point

	mu     sync.Mutex
	netnss []string // for the leftover check
}

func newWorld(tb testing.TB) *world {
	tb.Helper()
	sockprobe.RequirePrivileged(tb)
	if _, err := exec.LookPath("nsenter"); err != nil {
		tb.Fatalf("nsenter (util-linux) is needed to run l3iso in a test netns: %v", err)
	}
	bin, err := l3isoBin()
	if err != nil {
		tb.Fatal(err)
	}
	w := &world{tb: tb, bin: bin}
	// Registered first, so it runs last: after every other cleanup.
	tb.Cleanup(w.checkLeftovers)

	w.bpffs = sockprobe.NewBPFFS(tb)
	w.top = sockprobe.NewCgroup(tb, "")
	return w
}

// checkLeftovers fails the benchmark if a netns, cgroup or mount survived.
func (w *world) checkLeftovers() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.netnss {
		if _, err := os.Stat(p); err == nil {
			w.tb.Errorf("leftover network namespace %s (ip netns list)", p)
		}
	}
	if w.top != "" {
		if _, err := os.Stat(w.top); err == nil {
			w.tb.Errorf("leftover cgroup %s", w.top)
		}
	}
	if w.bpffs != "" {
		mi, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			w.tb.Errorf("read mountinfo: %v", err)
		} else if bytes.Contains(mi, []byte(" "+w.bpffs+" ")) {
			w.tb.Errorf("leftover bpffs mount at %s", w.bpffs)
		}
	}
}

// newNetns makes a fresh netns with lo up and freeAddr on lo.
func (w *world) newNetns() string {
	w.tb.Helper()
	path := sockprobe.NewNetns(w.tb)
	w.mu.Lock()
	w.netnss = append(w.netnss, path)
	w.mu.Unlock()
	if err := addLoAddr(path, freeAddr); err != nil {
		w.tb.Fatal(err)
	}
	return path
}

// addLoAddr configures addr/32 on lo of the netns at path, through a
// netlink handle bound to that namespace (no thread changes namespace).
func addLoAddr(path string, addr netip.Addr) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo in netns %s: %w", path, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}}
	if err := h.AddrAdd(lo, a); err != nil {
		return fmt.Errorf("add %s to lo in netns %s: %w", addr, path, err)
	}
	return nil
}

// install is one l3iso installation: `l3iso up` run inside its own netns,
// attached at its own cgroup root, pinned in its own directory of the
// private bpffs.
type install struct {
	w      *world
	netns  string
	cgroot string
	bpffs  string
	empty  string        // a policy file without containers, for teardown
	up     time.Duration // how long `l3iso up` took
}

// newInstall brings l3iso up in a fresh netns, attached at a fresh cgroup
// below the world's subtree. t.Cleanup removes every container (one apply
// of an empty policy: `down` deletes containers one by one) and runs
// `l3iso down`.
func (w *world) newInstall(name string) *install {
	w.tb.Helper()
	in := &install{
		w:      w,
		netns:  w.newNetns(),
		cgroot: sockprobe.NewCgroup(w.tb, w.top),
		bpffs:  filepath.Join(w.bpffs, name),
	}
	in.empty = in.policyFile(0)
	w.tb.Cleanup(in.teardown)
	var err error
	if _, in.up, err = in.l3iso("up", "--cgroup-root", in.cgroot); err != nil {
		w.tb.Fatal(err)
	}
	return in
}

func (in *install) teardown() {
	if _, err := os.Stat(in.bpffs); errors.Is(err, os.ErrNotExist) {
		return // never came up
	}
	if _, _, err := in.l3iso("apply", "-f", in.empty, "--allow-empty", "--prune"); err != nil {
		in.w.tb.Errorf("remove containers before down: %v", err)
	}
	if _, _, err := in.l3iso("down"); err != nil {
		in.w.tb.Errorf("%v", err)
	}
}

// l3iso runs the l3iso binary with this installation's --bpffs inside its
// netns, and returns its output and how long the invocation took (process
// start included).
func (in *install) l3iso(args ...string) (string, time.Duration, error) {
	return in.l3isoEnv(nil, args...)
}

// l3isoEnv is l3iso with more environment variables (e.g. L3ISO_TRACE=1:
// the output then has the trace lines too).
func (in *install) l3isoEnv(env []string, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	argv := append([]string{"--net=" + in.netns, "--", in.w.bin, "--bpffs", in.bpffs}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return out.String(), d, fmt.Errorf("l3iso %s (netns %s): %w\n%s", strings.Join(args, " "), in.netns, err, out.String())
	}
	return out.String(), d, nil
}

// containerCgroup is the cgroup of container name.
func (in *install) containerCgroup(name string) string {
	return filepath.Join(in.cgroot, "l3iso", name)
}

// policyFile writes a policy of n containers c00001..cNNNNN (see
// containerAddr) and returns its path.
func (in *install) policyFile(n int) string {
	in.w.tb.Helper()
	var b bytes.Buffer
	b.WriteString("# generated by bench: one whole IPv4 address per shared-mode container\ncontainers:\n")
	if n == 0 {
		b.WriteString("  {}\n")
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  %s:\n    addresses: [%s]\n", containerName(i), containerAddr(i))
	}
	p := filepath.Join(in.w.tb.TempDir(), fmt.Sprintf("policy-%d.yaml", n))
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		in.w.tb.Fatal(err)
	}
	return p
}

// apply runs `l3iso apply -f` of the n-container policy and returns how
// long the invocation took.
func (in *install) apply(n int) time.Duration {
	in.w.tb.Helper()
	args := []string{"apply", "-f", in.policyFile(n)}
	if n == 0 {
		args = append(args, "--allow-empty") // refused without
	}
	_, d, err := in.l3iso(args...)
	if err != nil {
		in.w.tb.Fatal(err)
	}
	return d
}

// attempt is one l3iso invocation: how long it took and how it ended.
type attempt struct {
	d   time.Duration
	err error
}

// maxAttempts bounds the tries of one apply.
const maxAttempts = 3

// applyMany brings the installation to the n-container policy: one
// `l3iso apply -f`, tried up to maxAttempts times. The attempts are
// returned, failures included: they are a finding, not noise. If every
// attempt fails, it gets there in steps of 1,000 containers (each step
// tried up to maxAttempts times), so the dataplane can still be measured,
// and fails the benchmark only if that fails too.
//
// Why: while l3_counters was a per-CPU hash without preallocation, `l3iso
// apply` of thousands of containers failed now and then with "create
// counters of container N: update: cannot allocate memory" (README.md). A
// regression must show up as a figure, not as a run without figures.
func (in *install) applyMany(n int) []attempt {
	in.w.tb.Helper()
	p := in.policyFile(n)
	var tries []attempt
	for len(tries) < maxAttempts {
		_, d, err := in.l3iso("apply", "-f", p)
		tries = append(tries, attempt{d, err})
		if err == nil {
			return tries
		}
	}
	for step := 1000; ; step += 1000 {
		step = min(step, n)
		var err error
		for i := 0; i < maxAttempts; i++ {
			if _, _, err = in.l3iso("apply", "-f", in.policyFile(step)); err == nil {
				break
			}
		}
		if err != nil {
			in.w.tb.Fatalf("register %d containers in steps of 1,000: %v", n, err)
		}
		if step == n {
			return tries
		}
	}
}

// report logs the attempts of applyMany and returns the time of the
// successful one (0 if none).
func report(tb testing.TB, what string, tries []attempt) time.Duration {
	tb.Helper()
	var ok time.Duration
	failed := 0
	for i, a := range tries {
		if a.err != nil {
			failed++
			say("L3ISO FAILURE: %s, attempt %d of %d, failed after %d ms: %v\n", what, i+1, len(tries), a.d.Milliseconds(), firstLine(a.err))
		} else {
			ok = a.d
		}
	}
	if failed == len(tries) {
		say("L3ISO FAILURE: %s failed %d times; registered the containers in steps of 1,000 instead\n", what, failed)
	}
	return ok
}

// firstLine is the l3iso error line of an invocation error.
func firstLine(err error) string {
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(l, "l3iso: ") {
			return l
		}
	}
	return err.Error()
}

func containerName(i int) string { return fmt.Sprintf("c%05d", i) }

// containerAddr is container i's address: 10.80.0.0 + i (10.80.0.1,
// 10.80.0.2, ...; past 10.80.255.255 it continues in 10.81.0.0/16).
func containerAddr(i int) netip.Addr { return nthAddr(netip.MustParseAddr("10.80.0.0"), i) }

func nthAddr(base netip.Addr, i int) netip.Addr {
	b := base.As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(i)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// child runs the test binary as a worker with role in cgroup cg and
// netns ns, sends it one command line and decodes its answer into out.
func child(tb testing.TB, role, cg, ns, cmd string, out any) error {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	w, err := engine.StartWorker(ctx, exe, role+" child", role, engine.Place{Cgroup: cg, Netns: ns, CPU: -1})
	if err != nil {
		return err
	}
	err = w.Call(ctx, cmd, commandTimeout, out)
	return errors.Join(err, w.Stop())
}

// say prints part of the report. Benchmark logs are cut after ten lines,
// so the tables go to stdout, which `go test` passes through.
func say(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format, args...)
}

// agent is a socket workload child that stays alive between batches: an
// engine client worker that runs one of its system-call loops.
type agent struct {
	tb   testing.TB
	loop string
	w    *engine.Worker
}

// startAgent starts a client worker in cgroup cg and netns ns whose loops
// work on addr. t.Cleanup closes its stdin, which ends it, and reaps it.
func startAgent(tb testing.TB, what, loop, cg, ns string, addr netip.Addr) *agent {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	w, err := engine.StartWorker(ctx, exe, what, "client", engine.Place{Cgroup: cg, Netns: ns, Addr: addr, CPU: -1})
	if err != nil {
		cancel()
		tb.Fatalf("start %s: %v", what, err)
	}
	tb.Cleanup(func() {
		if err := w.Stop(); err != nil && !tb.Failed() {
			tb.Error(err)
		}
		cancel()
	})
	return &agent{tb: tb, loop: loop, w: w}
}

// run has the agent run its loop for d and returns ns per iteration and
// the iterations.
func (a *agent) run(d time.Duration) (float64, uint64) {
	a.tb.Helper()
	res, err := a.w.Run(context.Background(), a.loop, d)
	if err != nil {
		a.tb.Fatal(err)
	}
	return res.NsPerOp(), res.Ops
}

// machine describes the machine for the report.
func machine() string {
	var u unix.Utsname
	unix.Uname(&u)
	return fmt.Sprintf("nproc %d, Linux %s, %s", runtime.NumCPU(), unix.ByteSliceToString(u.Release[:]), runtime.Version())
}
