package e2e

// End-to-end tests: they build the real l3iso binary and drive it in a
// private network namespace, cgroup subtree and bpffs, then check the rules
// with real sockets from agents living in container cgroups.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l3iso/l3iso/internal/netstat"
	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/veth"
	"golang.org/x/sys/unix"
)

var (
	binary string // the l3iso binary under test
	e2eDir string // where it is, with the agent copy (agentBinary)
)

func TestMain(m *testing.M) {
	sockprobe.MaybeServe()
	dir, err := os.MkdirTemp("", "l3iso-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e2eDir = dir
	binary = filepath.Join(dir, "l3iso")
	// Every l3iso a test runs keeps its audit log in the test's own
	// directories (an env overrides this with its own) and tells no
	// syslog.
	os.Setenv("L3ISO_STATE_DIR", filepath.Join(dir, "state"))
	os.Setenv("L3ISO_SYSLOG", "off")
	if err := goBuild(binary, "github.com/l3iso/l3iso/cmd/l3iso"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goBuild builds package pkg into the file out as `make build` does
// (without cgo), within 5 minutes. Programs the tests build go into e2eDir,
// which TestMain removes.
func goBuild(out, pkg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v: %s", pkg, err, b)
	}
	return nil
}

// env is one private l3iso installation.
type env struct {
	t      *testing.T
	netns  string // path of the netns l3iso and the agents live in
	cgroot string // --cgroup-root
	bpffs  string // --bpffs
	hostCg string // a cgroup below cgroot that is no container: "the host"
	state  string // the audit log's directory (--state-dir)
	extra  []string
}

// newEnv brings l3iso up in a fresh netns, cgroup subtree and bpffs.
// Cleanup takes it down and checks that nothing is left behind.
func newEnv(t *testing.T, upArgs ...string) *env {
	t.Helper()
	e := newBareEnv(t)
	e.up(upArgs...)
	return e
}

// up runs `l3iso up` with the env's cgroup root and upArgs; Cleanup takes
// l3iso down and checks that nothing is left behind.
func (e *env) up(upArgs ...string) {
	t := e.t
	t.Helper()
	e.mustRun(append([]string{"up", "--cgroup-root", e.cgroot}, upArgs...)...)
	t.Cleanup(func() {
		e.run("down")
		e.checkNetnsGone()
		// down restores the host sysctls l3iso changed.
		if out, err := exec.Command("nsenter", "--net="+e.netns, "cat", "/proc/sys/net/ipv4/conf/lo/accept_local").Output(); err == nil && strings.TrimSpace(string(out)) != "0" {
			t.Errorf("down left net.ipv4.conf.lo.accept_local = %s", strings.TrimSpace(string(out)))
		}
		if _, err := os.Stat(filepath.Join(e.cgroot, "l3iso")); err == nil {
			t.Errorf("down left the containers' cgroup %s/l3iso behind", e.cgroot)
		}
		if entries, _ := os.ReadDir(filepath.Dir(e.bpffs)); len(entries) > 0 {
			for _, en := range entries {
				if en.Name() != "maps.debug" && en.Name() != "progs.debug" {
					t.Errorf("down left %s in bpffs", en.Name())
				}
			}
		}
	})
}

// checkNetnsGone fails the test if named network namespaces of this
// installation's containers (/run/netns/l3iso-TAG_*, TAG from its bpffs)
// are left after `down`, and removes them.
func (e *env) checkNetnsGone() {
	e.t.Helper()
	if loader.NameTag(e.bpffs) == "" {
		e.t.Fatalf("bpffs %s has no name tag: its namespaces cannot be told from others'", e.bpffs)
	}
	left, err := filepath.Glob(veth.NetnsPath(e.key("*")))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range left {
		e.t.Errorf("down left network namespace %s (removed now)", p)
		unix.Unmount(p, unix.MNT_DETACH)
		os.Remove(p)
	}
}

// newBareEnv makes the netns, cgroups and bpffs but does not run `up`.
func newBareEnv(t *testing.T) *env {
	t.Helper()
	sockprobe.RequirePrivileged(t)
	e := &env{t: t}
	e.netns = sockprobe.NewNetns(t)
	e.cgroot = sockprobe.NewCgroup(t, "")
	e.hostCg = filepath.Join(e.cgroot, "host")
	if err := os.Mkdir(e.hostCg, 0o755); err != nil {
		t.Fatal(err)
	}
	e.bpffs = filepath.Join(sockprobe.NewBPFFS(t), "l3iso")
	e.state = t.TempDir()
	return e
}

// editConfig changes the installation's pinned l3_config behind l3iso's
// back, as something that died half way or an older l3iso leaves it.
func (e *env) editConfig(change func(*maps.Config)) {
	e.t.Helper()
	s, err := maps.OpenPinned(filepath.Join(e.bpffs, "maps"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer s.Close()
	cfg, err := s.Config()
	if err != nil {
		e.t.Fatal(err)
	}
	change(&cfg)
	if err := s.SetConfig(cfg); err != nil {
		e.t.Fatal(err)
	}
}

// ipRun runs ip(8) with each argument list, failing t on an error.
func ipRun(t *testing.T, cmds ...[]string) {
	t.Helper()
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs l3iso with args inside the env's netns.
func (e *env) run(args ...string) result {
	e.t.Helper()
	return e.runStdin(nil, args...)
}

func (e *env) runStdin(stdin []byte, args ...string) result {
	e.t.Helper()
	full := append([]string{"--net=" + e.netns, binary, "--bpffs", e.bpffs}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Env = append(os.Environ(), e.environ()...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run l3iso %v: %v", args, err)
	}
	return r
}

// environ is what the env adds to the environment of the l3iso it runs:
// its own state directory, and what a test added (e.extra).
func (e *env) environ() []string {
	return append([]string{"L3ISO_STATE_DIR=" + e.state}, e.extra...)
}

// mustRun runs l3iso and fails the test on a non-zero exit.
func (e *env) mustRun(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("l3iso %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// mustFail runs l3iso, expects a non-zero exit and a one-line error that
// contains every fragment.
func (e *env) mustFail(fragments []string, args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code == 0 {
		e.t.Fatalf("l3iso %s: succeeded, want failure\nstdout: %s", strings.Join(args, " "), r.stdout)
	}
	msg := strings.TrimSpace(r.stderr)
	for _, f := range fragments {
		if !strings.Contains(msg, f) {
			e.t.Errorf("l3iso %s: error %q does not mention %q", strings.Join(args, " "), msg, f)
		}
	}
	return msg
}

// apply writes a policy to a file and applies it.
func (e *env) apply(yaml string, extra ...string) string {
	e.t.Helper()
	f := filepath.Join(e.t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return e.mustRun(append([]string{"apply", "-f", f}, extra...)...)
}

// key is container name's key in pkg/veth for this env's installation
// (its --bpffs gives it a name tag): its namespace is
// veth.NetnsPath(e.key(name)), its host-side veth veth.HostIfName(e.key(name)).
func (e *env) key(name string) string { return veth.Key(loader.NameTag(e.bpffs), name) }

func (e *env) cgroupOf(container string) string {
	return filepath.Join(e.cgroot, "l3iso", container)
}

// agent starts a socket agent inside container name ("" = the host cgroup).
func (e *env) agent(name string) *sockprobe.Agent {
	e.t.Helper()
	cg := e.hostCg
	if name != "" {
		cg = e.cgroupOf(name)
	}
	return sockprobe.Start(e.t, sockprobe.Options{CgroupDir: cg, NetnsPath: e.netns})
}

// execAgent starts a socket agent as the command of `l3iso exec name
// flags... --`: confined the way exec confines commands.
func (e *env) execAgent(name string, flags ...string) *sockprobe.Agent {
	e.t.Helper()
	wrap := append([]string{binary, "--bpffs", e.bpffs, "exec", name, "--env", sockprobe.AgentEnv}, flags...)
	return sockprobe.Start(e.t, sockprobe.Options{NetnsPath: e.netns, Wrap: append(wrap, "--"), Binary: agentBinary(e.t)})
}

// agentBinary is a copy of this test binary that any user may execute:
// go test's own copy lies in a directory only root may enter, and exec
// runs its commands as unprivileged host uids.
func agentBinary(t *testing.T) string {
	t.Helper()
	p, err := copyAgent()
	if err != nil {
		t.Fatalf("copy the test binary for exec'd agents: %v", err)
	}
	return p
}

var copyAgent = sync.OnceValues(func() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(e2eDir, "agent")
	if err := copyFile(exe, p, 0o755); err != nil {
		return "", err
	}
	return p, os.Chmod(e2eDir, 0o755)
})

// netCounters reads the protocol counters of network namespace netns
// (/proc/net/snmp, snmp6 and netstat), keyed as netstat.Parse keys them:
// "Ip:ForwDatagrams", "Icmp6InEchos", "MPTcpExt:MPJoinSynTx".
func netCounters(t *testing.T, netns string) map[string]uint64 {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+netns, "cat", "/proc/net/snmp", "/proc/net/snmp6", "/proc/net/netstat").Output()
	if err != nil {
		t.Fatalf("read the protocol counters of %s: %v", netns, err)
	}
	return netstat.Parse(out)
}

// netCounter is one counter of netCounters; a missing one fails t.
func netCounter(t *testing.T, netns, key string) uint64 {
	t.Helper()
	v, ok := netCounters(t, netns)[key]
	if !ok {
		t.Fatalf("no counter %s in /proc/net/{snmp,snmp6,netstat} of %s", key, netns)
	}
	return v
}

// counters reads `l3iso stats -o json`.
func (e *env) counters() map[string]map[string]uint64 {
	e.t.Helper()
	var out map[string]map[string]uint64
	if err := json.Unmarshal([]byte(e.mustRun("stats", "-o", "json")), &out); err != nil {
		e.t.Fatalf("stats -o json: %v", err)
	}
	return out
}

// listJSON reads `l3iso container list -o json`.
func (e *env) listJSON() []containerJSON {
	e.t.Helper()
	var out []containerJSON
	if err := decodeStrict(e.mustRun("container", "list", "-o", "json"), &out); err != nil {
		e.t.Fatalf("container list -o json: %v", err)
	}
	return out
}

// idOf is the id of container name (`container list -o json`).
func (e *env) idOf(name string) uint32 {
	e.t.Helper()
	for _, c := range e.listJSON() {
		if c.Name == name {
			return c.ID
		}
	}
	e.t.Fatalf("no container %q in container list", name)
	return 0
}

// hostAddrs lists what is local in the env's netns: interface addresses
// and l3iso's local-table routes (IPv4 container addresses are AnyIP routes,
// "local 10.77.0.1 dev lo ...").
func (e *env) hostAddrs() string {
	e.t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-br", "addr"}, {"route", "show", "table", "local", "proto", "76"}} {
		out, err := exec.Command("nsenter", append([]string{"--net=" + e.netns, "ip"}, args...)...).CombinedOutput()
		if err != nil {
			e.t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		b.Write(out)
	}
	return b.String()
}

// copyFile copies file src to dst with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, perm)
}

// requireTool fails (CI / L3ISO_REQUIRE_PRIVILEGED) or skips the test when
// a program it drives (a server, a runtime, prometheus) is missing.
func requireTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if sockprobe.Required() {
				t.Fatalf("%s is not installed (apt-get install it; .ci/run does): %v", n, err)
			}
			t.Skipf("%s is not installed: %v", n, err)
		}
	}
}
