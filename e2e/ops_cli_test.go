package e2e

import (
	be "encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/l3iso/l3iso/pkg/maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// snapshot is everything a failed command must leave unchanged.
type snapshot struct {
	list   string
	addrs  string
	status string
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(e.mustRun("status", "-o", "json")), &st); err != nil {
		e.t.Fatal(err)
	}
	delete(st, "host_counters") // failed commands may count denials
	for _, c := range st["containers"].([]any) {
		delete(c.(map[string]any), "counters")
	}
	b, _ := json.Marshal(st)
	return snapshot{list: e.mustRun("container", "list", "-o", "json"), addrs: e.hostAddrs(), status: string(b)}
}

func (e *env) unchanged(before snapshot, what string) {
	e.t.Helper()
	after := e.snapshot()
	if after != before {
		e.t.Errorf("%s changed state:\nbefore: %+v\nafter:  %+v", what, before, after)
	}
}

// TestBadInput: every bad input gets an error that says what is wrong and
// what to do, exits non-zero, and changes nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.9:5432/tcp")
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	unknownField := file("unknown.yaml", "containers:\n  web:\n    addresses: [10.77.0.1]\n    adresses: [10.77.0.2]\n")
	badAddr := file("badaddr.yaml", "containers:\n  web:\n    addresses: [10.77.0.300]\n")
	overlap := file("overlap.yaml", "containers:\n  a:\n    addresses: [10.77.5.1]\n  b:\n    addresses: [\"10.77.5.1:80/tcp\"]\n")
	syntax := file("syntax.yaml", "containers:\n  web:\n    addresses: [10.77.0.1\n")
	modeChange := file("mode.yaml", "containers:\n  web:\n    mode: netns\n    addresses: [10.77.0.1/24, fd77::1]\n  db:\n    addresses: [\"10.77.0.9:5432/tcp\"]\n")
	netnsPorts := file("netns.yaml", "containers:\n  a:\n    mode: netns\n    addresses: [\"10.77.5.1:80/tcp\"]\n")

	before := e.snapshot()
	cases := []struct {
		name      string
		args      []string
		fragments []string
	}{
		{"unknown-field", []string{"apply", "-f", unknownField}, []string{unknownField + ":4", "adresses"}},
		{"bad-address", []string{"apply", "-f", badAddr}, []string{badAddr + ":3", "10.77.0.300"}},
		{"overlap", []string{"apply", "-f", overlap}, []string{overlap + ":", `"a"`, `"b"`}},
		{"syntax", []string{"apply", "-f", syntax}, []string{syntax + ":"}},
		{"missing-file", []string{"apply", "-f", filepath.Join(dir, "nope.yaml")}, []string{"nope.yaml"}},
		{"no-file", []string{"apply"}, []string{"-f"}},
		{"netns-ports", []string{"apply", "-f", netnsPorts}, []string{netnsPorts + ":4", "netns", "whole IPs"}},
		{"netns-loopback-host", []string{"container", "add", "x", "--mode", "netns", "--addr", "10.77.0.7", "--loopback", "host"}, []string{"netns", "loopback"}},
		{"mode-change", []string{"apply", "-f", modeChange}, []string{`"web"`, "shared to netns", "delete it first"}},
		{"add-owned-twice", []string{"container", "add", "x", "--addr", "10.77.0.1"}, []string{`"web"`, "10.77.0.1"}},
		{"add-port-overlap", []string{"container", "add", "x", "--addr", "10.77.0.9:5000-6000/tcp"}, []string{`"db"`, "5432"}},
		{"add-existing", []string{"container", "add", "web", "--addr", "10.77.0.7"}, []string{`"web"`, "already exists"}},
		{"add-bad-name", []string{"container", "add", "Web!", "--addr", "10.77.0.7"}, []string{"Web!"}},
		{"add-no-addr", []string{"container", "add", "x"}, []string{"--addr"}},
		{"add-bad-addr", []string{"container", "add", "x", "--addr", "10.77.0.7:99999/tcp"}, []string{"99999"}},
		{"add-mapped", []string{"container", "add", "x", "--addr", "::ffff:10.77.0.7"}, []string{"10.77.0.7"}},
		{"add-bad-mode", []string{"container", "add", "x", "--addr", "10.77.0.7", "--mode", "bogus"}, []string{"bogus"}},
		{"add-bad-loopback", []string{"container", "add", "x", "--addr", "10.77.0.7", "--loopback", "bogus"}, []string{"bogus"}},
		{"add-host-address", []string{"container", "add", "x", "--addr", "127.0.0.1"}, []string{"127.0.0.1"}},
		{"del-unknown", []string{"container", "del", "nope"}, []string{`"nope"`, "container list"}},
		{"exec-unknown", []string{"exec", "nope", "--", "true"}, []string{`"nope"`}},
		{"exec-no-such-command", []string{"exec", "web", "--", "/nonexistent/cmd"}, []string{"/nonexistent/cmd"}},
		{"stats-unknown", []string{"stats", "nope"}, []string{`"nope"`}},
		{"bad-output", []string{"container", "list", "-o", "yaml"}, []string{"yaml", "json"}},
		{"up-other-root", []string{"up", "--cgroup-root", e.hostCg}, []string{"already up", "down"}},
		{"up-no-such-uplink", []string{"up", "--uplink", "nosuch0"}, []string{"nosuch0", "ip link"}},
		{"up-bad-delivery", []string{"up", "--cgroup-root", e.cgroot, "--delivery", "teleport"}, []string{"teleport", "direct"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := e.mustFail(c.fragments, c.args...)
			if strings.Count(msg, "\n") > 0 && !strings.HasPrefix(c.name, "overlap") {
				t.Logf("multi-line error: %q", msg)
			}
			if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine") {
				t.Fatalf("crashed: %s", msg)
			}
		})
	}
	e.unchanged(before, "bad input")

	t.Run("container-add-conflicts-with-host-address", func(t *testing.T) {
		// Someone configured 10.77.9.9 on the host: l3iso must not take it.
		out, err := exec.Command("nsenter", "--net="+e.netns, "ip", "addr", "add", "10.77.9.9/32", "dev", "lo").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		before := e.snapshot()
		e.mustFail([]string{"10.77.9.9", "already in use", "lo"}, "container", "add", "x", "--addr", "10.77.9.9")
		e.unchanged(before, "add of a host address")
	})

	t.Run("not-up", func(t *testing.T) {
		bare := newBareEnv(t)
		bare.mustFail([]string{"not up", "l3iso up"}, "container", "list")
		bare.mustFail([]string{"not up", "l3iso up"}, "down")
	})
	t.Run("bad-bpffs", func(t *testing.T) {
		r := e.runStdin(nil, "--bpffs", "/tmp/not-a-bpffs/x", "up", "--cgroup-root", e.cgroot)
		if r.code == 0 || !strings.Contains(r.stderr, "bpf filesystem") {
			t.Fatalf("up with a non-bpffs dir: code %d, %q", r.code, r.stderr)
		}
	})
	t.Run("bad-cgroup-root", func(t *testing.T) {
		bare := newBareEnv(t)
		bare.mustFail([]string{"/tmp", "cgroup v2"}, "up", "--cgroup-root", "/tmp")
	})
}

// TestContainerLifecycle: add configures ownership then addresses, list and
// stats show it, del removes exactly what add made.
func TestContainerLifecycle(t *testing.T) {
	e := newEnv(t)
	if out := e.mustRun("up", "--cgroup-root", e.cgroot); !strings.Contains(out, "already up") {
		t.Errorf("second up: %q, want it to say nothing changed", out)
	}
	linksBefore := e.mustRun("status", "-o", "json")
	e.mustRun("up", "--cgroup-root", e.cgroot)
	if e.mustRun("status", "-o", "json") != linksBefore {
		t.Error("a second up changed links or programs")
	}

	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1", "--mcast", "239.1.1.0/24")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.9:5432/tcp", "--loopback", "host")
	e.mustRun("container", "add", "db2", "--addr", "10.77.0.9:6000-6099/tcp")
	addrs := e.hostAddrs()
	for _, want := range []string{"local 10.77.0.1 dev lo", "broadcast 10.77.0.255 dev lo", "fd77::1/128", "local 10.77.0.9 dev lo"} {
		if !strings.Contains(addrs, want) {
			t.Errorf("host lacks %s after add:\n%s", want, addrs)
		}
	}
	list := e.listJSON()
	if len(list) != 3 || list[2].Name != "web" || strings.Join(list[2].Addresses, ",") != "10.77.0.1/24,fd77::1" ||
		list[2].Multicast[0] != "239.1.1.0/24" || list[0].Loopback != "host" {
		t.Errorf("container list: %+v", list)
	}
	for _, c := range list {
		if _, err := os.Stat(c.Cgroup); err != nil {
			t.Errorf("cgroup of %s: %v", c.Name, err)
		}
	}
	text := e.mustRun("status")
	for _, want := range []string{"l3_bind4", "l3_connect6", "l3_ingress", "CGroupInet4Bind", "CGroupInetIngress", "web"} {
		if !strings.Contains(strings.ToLower(text), strings.ToLower(want)) {
			t.Errorf("status does not mention %s:\n%s", want, text)
		}
	}
	// lo carries l3_tc_group (shared containers' broadcast and multicast).
	var st statusJSON
	if err := json.Unmarshal([]byte(e.mustRun("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	var onLo []string
	for _, i := range st.Interfaces {
		if i.Name == "lo" && i.Role == "loopback" {
			for _, p := range i.Programs {
				onLo = append(onLo, p.Direction+":"+p.Name)
			}
		}
	}
	if !slices.Contains(onLo, "ingress:l3_tc_group") {
		t.Errorf("status -o json: lo's TCX programs %v, want ingress:l3_tc_group among them", onLo)
	}

	// An IP shared by two containers stays configured until the last goes.
	e.mustRun("container", "del", "db")
	if !strings.Contains(e.hostAddrs(), "local 10.77.0.9 ") {
		t.Error("10.77.0.9 was unconfigured while db2 still owns ports of it")
	}
	host := e.agent("")
	id := host.Socket(2, 1, 0)
	if err := host.Bind(id, ap("10.77.0.9:5432")); err == nil {
		t.Error("host could bind 10.77.0.9:5432 while db2 still owns ports of 10.77.0.9")
	}
	e.mustRun("container", "del", "db2")
	e.mustRun("container", "del", "web")
	// (The host's own address toward containers, maps.HostAddr6, stays
	// while l3iso is up.)
	if addrs := strings.ReplaceAll(e.hostAddrs(), maps.HostAddr6.String(), ""); strings.Contains(addrs, "10.77.") || strings.Contains(addrs, "fd77") || strings.Contains(addrs, "fd6c") {
		t.Errorf("del left addresses behind:\n%s", addrs)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.cgroot, "l3iso")); len(entries) > 0 {
		for _, en := range entries {
			if en.IsDir() {
				t.Errorf("del left cgroup %s", en.Name())
			}
		}
	}
	// The host has 10.77.0.1 back.
	if err := host.Bind(host.Socket(2, 1, 0), ap("10.77.0.9:0")); err == nil {
		t.Error("host bound 10.77.0.9 after every owner went: it is not configured anywhere, bind should fail with EADDRNOTAVAIL from the kernel")
	}
}

// TestApply: dry-run changes nothing; apply adds, modifies and deletes;
// surviving containers keep their cgroup (and processes) across a push.
func TestApply(t *testing.T) {
	e := newEnv(t)
	p1 := "containers:\n  web:\n    addresses: [10.77.0.1/24]\n  db:\n    addresses: [10.77.0.2/24]\n"
	before := e.snapshot()
	out := e.apply(p1, "--dry-run")
	if !strings.Contains(out, `+ container "web"`) || !strings.Contains(out, "dry run") {
		t.Errorf("dry-run output: %q", out)
	}
	e.unchanged(before, "apply --dry-run")
	e.apply(p1)
	if out := e.apply(p1); !strings.Contains(out, "nothing to change") {
		t.Errorf("re-apply: %q", out)
	}
	web := e.agent("web") // a process that must survive the push
	cgBefore := e.listJSON()[1].CgroupID

	p2 := "containers:\n  web:\n    addresses: [10.77.0.2/24]\n  cache:\n    addresses: [10.77.0.3]\n"
	out = e.apply(p2)
	for _, want := range []string{`- container "db"`, `+ container "cache"`, `~ container "web"`} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s", want, out)
		}
	}
	list := e.listJSON()
	if len(list) != 2 || list[1].Name != "web" || list[1].CgroupID != cgBefore {
		t.Fatalf("after apply: %+v (web's cgroup id was %d)", list, cgBefore)
	}
	// web now owns 10.77.0.2 (db's before), not 10.77.0.1; its process lives on.
	id := web.Socket(2, 1, 0)
	if err := web.Bind(id, ap("10.77.0.2:0")); err != nil {
		t.Errorf("web bind 10.77.0.2 after apply: %v", err)
	}
	id = web.Socket(2, 1, 0)
	if err := web.Bind(id, ap("10.77.0.1:0")); err == nil {
		t.Error("web could still bind 10.77.0.1 after apply took it away")
	}
	if addrs := e.hostAddrs(); strings.Contains(addrs, "local 10.77.0.1 ") || !strings.Contains(addrs, "local 10.77.0.3 ") {
		t.Errorf("host addresses after apply:\n%s", addrs)
	}
	// web's agent still runs: removing every container takes both flags.
	e.apply("containers: {}\n", "--allow-empty", "--prune")
	if len(e.listJSON()) != 0 {
		t.Error("empty policy left containers")
	}
}

// TestApplyCrash kills l3iso at many instants of a large apply: afterwards
// the installed policy is the old or the new one, never a mix, and the next
// command finishes the job.
func TestApplyCrash(t *testing.T) {
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
	os.WriteFile(pf, []byte(neu), 0o644)
	// Time one whole apply, then kill at fractions of it.
	start := time.Now()
	e.mustRun("apply", "-f", pf)
	full := time.Since(start)
	e.apply(old)
	seen := map[string]int{}
	for i := 1; i <= 12; i++ {
		delay := full * time.Duration(i+6) / 16 // 44% .. 112% of a whole apply
		cmd := exec.Command("nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "apply", "-f", pf)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		list := e.listJSON() // also reconciles? no: list only reads
		first := list[0].Addresses[0]
		for _, c := range list {
			if strings.HasPrefix(c.Addresses[0], "10.90.") != strings.HasPrefix(first, "10.90.") {
				t.Fatalf("round %d (kill after %v): a mix of old and new policy: %s and %s", i, delay, first, c.Addresses[0])
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

// TestExec: the command runs in the container's cgroup without the
// capabilities that would undo isolation, and its exit status is returned.
// (rule8_contain_test.go tries harder to get out.)
func TestExec(t *testing.T) {
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1")
	r := e.run("exec", "web", "--", "sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status; cat /proc/self/cgroup; exit 7")
	if r.code != 7 {
		t.Fatalf("exit status %d, want 7 (stderr %q)", r.code, r.stderr)
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || !strings.HasPrefix(f[0], "Cap") {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 16, 64)
		for name, bit := range map[string]uint{"NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21, "BPF": 39} {
			if v&(1<<bit) != 0 {
				t.Errorf("%s has %s", f[0], name)
			}
		}
	}
	// In its own cgroup namespace: it sees "/" and cannot climb out.
	if !strings.Contains(r.stdout, "0::/\n") {
		t.Errorf("/proc/self/cgroup inside exec: %q", r.stdout)
	}
	cg := filepath.Join(e.hostCg, "cgroup.procs")
	for _, target := range []string{e.cgroot, e.hostCg, filepath.Dir(e.cgroot)} {
		r = e.run("exec", "web", "--", "sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs && echo escaped; cat /proc/self/cgroup", target))
		if strings.Contains(r.stdout, "escaped") {
			t.Errorf("a process in the container moved itself to %s: %s", target, r.stdout)
		}
	}
	// The host's view of cgroups is unchanged (our read-only remount did
	// not propagate back).
	var st unix.Statfs_t
	if err := unix.Statfs(cg, &st); err != nil || st.Flags&unix.ST_RDONLY != 0 {
		t.Errorf("the host's cgroup mount became read-only (flags %#x, err %v)", st.Flags, err)
	}
	// It is subject to the rules: binding another address fails.
	out, err := sockprobe.Python(t, sockprobe.Options{CgroupDir: e.cgroupOf("web"), NetnsPath: e.netns},
		"import socket\ntry:\n socket.socket().bind(('10.77.0.2',0)); print('bound')\nexcept OSError as x: print(x.errno)")
	if err != nil || trim(out) != "99" {
		t.Errorf("python bind of a foreign address in web: %q %v", out, err)
	}
	r = e.run("exec", "web", "--", "python3", "-c", "import socket; s=socket.socket(); s.bind(('0.0.0.0',0)); print(s.getsockname()[0])")
	if trim(r.stdout) != "10.77.0.1" {
		t.Errorf("exec'd python wildcard bind: %q %q", r.stdout, r.stderr)
	}

	// A program with file capabilities the container may not have (as
	// iputils' ping has cap_net_raw=ep) does not start; the error says why.
	// (In a directory the container's users may enter: container root is
	// no host root.)
	capped := filepath.Join(publicDir(t), "capped-true")
	if err := copyFile("/bin/true", capped, 0o755); err != nil {
		t.Fatal(err)
	}
	// struct vfs_cap_data, revision 2, effective: permitted = CAP_NET_RAW.
	capData := make([]byte, 20)
	be.LittleEndian.PutUint32(capData[0:], 0x02000001)
	be.LittleEndian.PutUint32(capData[4:], 1<<unix.CAP_NET_RAW)
	if err := unix.Setxattr(capped, "security.capability", capData, 0); err != nil {
		t.Fatalf("give %s cap_net_raw: %v", capped, err)
	}
	if r := e.run("exec", "web", "--", capped); r.code == 0 || !strings.Contains(r.stderr, "file capabilities (cap_net_raw)") || !strings.Contains(r.stderr, "outside the container") {
		t.Errorf("exec of a program with cap_net_raw=ep: exit %d, stderr %q; want a failure that names the capability", r.code, r.stderr)
	}
	if r := e.run("exec", "web", "--", "/bin/true"); r.code != 0 {
		t.Errorf("exec of /bin/true: exit %d, stderr %q", r.code, r.stderr)
	}
}

// copyFile copies file src to dst with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, perm)
}

// killAt runs l3iso with args and SIGKILLs it after d.
func (e *env) killAt(d time.Duration, args ...string) {
	e.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.netns, binary, "--bpffs", e.bpffs}, args...)...)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// TestAddCrash kills `container add` at many instants: afterwards the
// container exists completely (after the next command's repair) or not at
// all — no cgroup, no address, no ownership left behind.
func TestAddCrash(t *testing.T) {
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
	e := newBareEnv(t)
	start := time.Now()
	e.mustRun("up", "--cgroup-root", e.cgroot)
	full := time.Since(start)
	e.mustRun("down")
	for i := 0; i < 8; i++ {
		e.killAt(full*time.Duration(i+1)/8, "up", "--cgroup-root", e.cgroot)
		e.mustRun("up", "--cgroup-root", e.cgroot)
		var st struct {
			Links []struct{ Name string } `json:"links"`
		}
		if err := json.Unmarshal([]byte(e.mustRun("status", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
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
