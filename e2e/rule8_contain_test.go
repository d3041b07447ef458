package e2e

// Containment (docs/DESIGN.md rule 8): what a process started by `l3iso exec`
// tries, as root and as another uid, to weaken its own, another
// container's or the host's isolation. Each probe is first made from a
// plain host-root agent, to show that it works where nothing stops it.

import (
	"bufio"
	"bytes"
	"context"
	be "encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// sysctlsToWrite are files a root process without capabilities could
// write on the host (net sysctls check euid 0, not CAP_NET_ADMIN). The
// probes write back what they hold, so a failed containment changes
// nothing.
var sysctlsToWrite = []string{
	"/proc/sys/net/ipv6/conf/lo/disable_ipv6",
	"/proc/sys/kernel/core_pattern",
	"/sys/module/printk/parameters/time",
}

// TestExecContainment: from inside exec, as root and as --user 1000, a
// process cannot clone a child into another cgroup (cause 3), reach a
// bpffs pin (4), write a sysctl or sysfs (5), signal, trace or pidfd_open
// a process outside (6), write a host file it does not own (7), or join a
// group through a 32-bit (compat) setsockopt, which skips the policy.
func TestExecContainment(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.2/24")
	other := e.execPid("db", "sleep", "1000") // another container's process
	self := os.Getpid()                       // the test process: host root
	pin := firstPin(t, e.bpffs)
	hostFile := rootOwnedFile(t)
	// (The hierarchy's root is not among them: the host agent may not
	// clone into it while it has child cgroups with controllers. The
	// agents get each cgroup as a descriptor the test opens: inside exec
	// the host's cgroup paths do not exist.)
	cgroups := []string{e.hostCg, e.cgroupOf("db"), e.cgroot}
	group := []byte{239, 9, 9, 9, 0, 0, 0, 0} // struct ip_mreq: 239.9.9.9 on any interface

	// Every probe works from a host-root process outside the container.
	h := e.agent("")
	for _, cg := range cgroups {
		if err := h.Clone3IntoCgroup(cg); err != nil {
			t.Fatalf("host agent: clone3 into %s: %v", cg, err)
		}
	}
	if err := h.BPFObjGet(pin); err != nil {
		t.Fatalf("host agent: BPF_OBJ_GET %s: %v", pin, err)
	}
	for _, f := range sysctlsToWrite {
		if err := h.WriteFile(f, nil); err != nil {
			t.Fatalf("host agent: write %s: %v", f, err)
		}
	}
	for _, pid := range []int{self, other} {
		if err := h.Kill(pid, 0); err != nil {
			t.Fatalf("host agent: kill(%d, 0): %v", pid, err)
		}
		if err := h.PidfdOpen(pid); err != nil {
			t.Fatalf("host agent: pidfd_open(%d): %v", pid, err)
		}
	}
	if err := h.Ptrace(other); err != nil {
		t.Fatalf("host agent: ptrace %d: %v", other, err)
	}
	if err := h.WriteFile(hostFile, nil); err != nil {
		t.Fatalf("host agent: write %s: %v", hostFile, err)
	}
	// The 32-bit entries: int $0x80 where the kernel runs 32-bit code
	// (it kills a process that tries elsewhere), x32 everywhere (where
	// the kernel lacks x32, it answers ENOSYS).
	ia32 := sockprobe.IA32(t)
	if !ia32 {
		t.Log("this kernel runs no 32-bit code (no int $0x80 entry): only the x32 entry is probed")
	}
	hs := h.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := h.SetsockoptX32(hs, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, group); err != nil && !errors.Is(err, unix.ENOSYS) {
		t.Fatalf("host agent: x32 IP_ADD_MEMBERSHIP: %v", err)
	}
	if ia32 {
		if err := h.Setsockopt32(hs, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, group); err != nil {
			t.Fatalf("host agent: int $0x80 IP_ADD_MEMBERSHIP: %v", err)
		}
	}

	for _, who := range []struct {
		name  string
		flags []string
	}{{"root", nil}, {"user", []string{"--user", "1000"}}} {
		t.Run(who.name, func(t *testing.T) {
			a := e.execAgent("web", who.flags...)
			for _, cg := range cgroups {
				if err := a.Clone3IntoCgroup(cg); !deniedCgroupMove(err) {
					t.Errorf("clone3(CLONE_INTO_CGROUP) into %s from inside exec: %v, want a permission error", cg, err)
				}
			}
			// The caller's session keyring (host root's keys) stays
			// the caller's.
			if caller, inside := e.sessionKeyrings(append([]string{"web"}, who.flags...)...); caller == inside {
				t.Errorf("exec'd command has the caller's session keyring %s", caller)
			}
			if st := e.run(append(append([]string{"exec", "web"}, who.flags...), "--", "grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status")...); !strings.Contains(st.stdout, "NoNewPrivs:\t1") || !strings.Contains(st.stdout, "Seccomp:\t2") {
				t.Errorf("no_new_privs and a seccomp filter inside exec: %q (%s)", st.stdout, st.stderr)
			}
			if mi := e.run(append(append([]string{"exec", "web"}, who.flags...), "--", "cat", "/proc/self/mountinfo")...); mi.code != 0 || strings.Contains(mi.stdout, " - bpf ") {
				t.Errorf("bpf file systems inside exec (exit %d, %s):\n%s", mi.code, mi.stderr, grepLines(mi.stdout, " - bpf "))
			}
			if err := a.BPFObjGet(pin); err == nil {
				t.Errorf("BPF_OBJ_GET %s from inside exec worked", pin)
			}
			for _, f := range sysctlsToWrite {
				if err := a.WriteFile(f, nil); err == nil {
					t.Errorf("wrote %s from inside exec", f)
				}
			}
			for _, pid := range []int{self, other} {
				if err := a.Kill(pid, 0); err == nil {
					t.Errorf("kill(%d, 0) from inside exec worked", pid)
				}
				if err := a.PidfdOpen(pid); err == nil {
					t.Errorf("pidfd_open(%d) from inside exec worked", pid)
				}
				if err := a.Ptrace(pid); err == nil {
					t.Errorf("ptrace(PTRACE_SEIZE, %d) from inside exec worked", pid)
				}
			}
			if err := a.WriteFile(hostFile, []byte("owned\n")); !errors.Is(err, unix.EACCES) {
				t.Errorf("write the root-owned %s from inside exec: %v, want EACCES", hostFile, err)
			}
			s := a.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err := a.JoinGroup(s, netip.MustParseAddr("239.9.9.9"), 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("64-bit join of 239.9.9.9, outside web's policy: %v, want EPERM", err)
			}
			if err := a.SetsockoptX32(s, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, group); !errors.Is(err, unix.EPERM) {
				t.Errorf("x32 join of 239.9.9.9 from inside exec: %v, want EPERM (the seccomp filter's)", err)
			}
			if ia32 {
				if err := a.Setsockopt32(s, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, group); !errors.Is(err, unix.EPERM) {
					t.Errorf("int $0x80 join of 239.9.9.9 from inside exec: %v, want EPERM (the seccomp filter's)", err)
				}
			}
		})
	}
	if b, err := os.ReadFile(hostFile); err != nil || string(b) != "host\n" {
		t.Errorf("%s now holds %q (%v)", hostFile, b, err)
	}
}

// TestExecHostRoot: --host-root warns, runs as the host's root without
// user or PID namespace — and still without bpffs, writable /proc/sys or
// /sys, and 32-bit system calls.
func TestExecHostRoot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	r := e.run("exec", "web", "--host-root", "--", "sh", "-c", "cat /proc/self/uid_map; echo $$")
	if r.code != 0 || !strings.Contains(r.stderr, "warning: --host-root") || !strings.Contains(r.stderr, "host files") {
		t.Fatalf("exec --host-root: exit %d, stderr %q; want a warning", r.code, r.stderr)
	}
	if f := strings.Fields(r.stdout); len(f) != 4 || f[1] != "0" || f[3] == "1" {
		t.Errorf("exec --host-root: uid map and pid %q: want the host's (0 0 4294967295, pid not 1)", r.stdout)
	}
	if r := e.run("exec", "web", "--host-root", "--user", "1000", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "--host-root") {
		t.Errorf("exec --host-root --user: exit %d, stderr %q", r.code, r.stderr)
	}
	a := e.execAgent("web", "--host-root")
	if err := a.BPFObjGet(firstPin(t, e.bpffs)); err == nil {
		t.Error("BPF_OBJ_GET of a pin from inside exec --host-root worked")
	}
	for _, f := range sysctlsToWrite {
		if err := a.WriteFile(f, nil); err == nil {
			t.Errorf("wrote %s from inside exec --host-root", f)
		}
	}
	if caller, inside := e.sessionKeyrings("web", "--host-root"); caller == inside {
		t.Errorf("exec --host-root'd command has the caller's session keyring %s", caller)
	}
	s := a.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := a.SetsockoptX32(s, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, []byte{239, 9, 9, 9, 0, 0, 0, 0}); !errors.Is(err, unix.EPERM) {
		t.Errorf("x32 join from inside exec --host-root: %v, want EPERM (the seccomp filter's)", err)
	}
	// What it gives up: host files are its own.
	f := rootOwnedFile(t)
	if err := a.WriteFile(f, nil); err != nil {
		t.Errorf("exec --host-root could not write a root-owned host file: %v", err)
	}
}

// TestExecProcess: the command runs under an init in its own PID
// namespace; exec's exit status is the command's (128+N for signal N),
// signals sent to exec reach it, and its orphans end with it.
func TestExecProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	for _, c := range []struct {
		script string
		want   int
	}{{"exit 7", 7}, {"kill -TERM $$", 128 + 15}, {"kill -KILL $$", 128 + 9}, {"exit 0", 0}} {
		if r := e.run("exec", "web", "--", "sh", "-c", c.script); r.code != c.want {
			t.Errorf("exec -- sh -c %q: exit %d, want %d (stderr %q)", c.script, r.code, c.want, r.stderr)
		}
	}
	r := e.run("exec", "web", "--", "sh", "-c", "tr '\\0' ' ' </proc/1/cmdline")
	if !strings.HasPrefix(r.stdout, "l3iso-init web") {
		t.Errorf("pid 1 inside exec: %q, want l3iso-init", r.stdout)
	}

	// SIGTERM to `l3iso exec` reaches the command, whose exit status
	// (42) becomes exec's.
	cmd := exec.Command("nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "exec", "web", "--",
		"sh", "-c", `trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done`)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(stdout)
	if line, err := rd.ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("exec'd trap script said %q (%v)", line, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(rd)
	err = cmd.Wait()
	if cmd.ProcessState.ExitCode() != 42 || string(rest) != "got TERM\n" {
		t.Errorf("SIGTERM to exec: %v, output %q; want the command's trap to run and exit 42", err, rest)
	}

	// The container's cgroup holds the command only: exec and its init
	// go back to the caller's, so that `container del` counts and stops
	// the command's processes.
	e.execPid("web", "sleep", "1000")
	if b, _ := os.ReadFile(filepath.Join(e.cgroupOf("web"), "cgroup.procs")); len(strings.Fields(string(b))) != 1 {
		t.Errorf("processes in web's cgroup while exec runs sleep: %q, want sleep's alone", b)
	}
	e.mustRun("container", "del", "web", "--grace", "0")
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")

	// A background child the command leaves behind dies with it.
	r = e.run("exec", "web", "--", "sh", "-c", "sleep 1000 & echo $!")
	if r.code != 0 {
		t.Fatalf("exec with a background child: %d %s", r.code, r.stderr)
	}
	waitFor(t, 5*time.Second, "the orphan to die with the command", func() bool {
		b, _ := os.ReadFile(filepath.Join(e.cgroupOf("web"), "cgroup.procs"))
		return len(bytes.TrimSpace(b)) == 0
	})
}

// TestExecOptions: --user, --env, --env-file, --workdir and the clean
// environment; bad values are one-line errors.
func TestExecOptions(t *testing.T) {
	// Not parallel: t.Setenv changes the whole test process's environment.
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	envFile := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(envFile, []byte("# comment\nA=from-file\nB=two words\n\nC\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("C", "from-caller")
	t.Setenv("SECRET", "must-not-leak")
	t.Setenv("TERM", "vt100")
	t.Setenv("LANG", "C.UTF-8")
	r := e.run("exec", "web", "--user", "daemon", "--env-file", envFile, "--env", "A=from-flag", "-e", "D=4",
		"--workdir", "/tmp", "--", "sh", "-c", "id -u; id -g; pwd; cat /proc/self/uid_map; env -0")
	if r.code != 0 {
		t.Fatalf("exec with options: exit %d, %s", r.code, r.stderr)
	}
	lines := strings.SplitN(r.stdout, "\n", 5)
	if len(lines) != 5 || lines[0] != "1" || lines[1] != "1" || lines[2] != "/tmp" {
		t.Fatalf("exec --user daemon --workdir /tmp: %q", r.stdout)
	}
	if f := strings.Fields(lines[3]); len(f) != 3 || f[0] != "0" || f[1] != strconv.Itoa(1<<30) || f[2] != "65536" {
		t.Errorf("uid map of container id 1: %q, want 0 %d 65536", lines[3], 1<<30)
	}
	got := map[string]string{}
	for _, kv := range strings.Split(strings.TrimRight(lines[4], "\x00"), "\x00") {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	delete(got, "PWD") // sh's own
	want := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/usr/sbin",
		"TERM": "vt100", "LANG": "C.UTF-8", "A": "from-flag", "B": "two words", "C": "from-caller", "D": "4",
	}
	if len(got) != len(want) {
		t.Errorf("environment %v, want exactly %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("environment: %s=%q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	// Default: root, the caller's directory when it may enter it, else /.
	if r := e.run("exec", "web", "--user", "1000:100", "--", "sh", "-c", "id -u; id -G"); r.stdout != "1000\n100\n" {
		t.Errorf("exec --user 1000:100: %q %s", r.stdout, r.stderr)
	}
	private := t.TempDir() // 0700, root's
	cmd := exec.Command("nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "exec", "web", "--user", "1000", "--", "pwd")
	cmd.Dir = private
	if out, err := cmd.Output(); err != nil || string(out) != "/\n" {
		t.Errorf("exec --user 1000 from a directory only root may enter: %q %v, want /", out, err)
	}
	cmd = exec.Command("nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "exec", "web", "--", "sh", "-c", "id -u; pwd")
	cmd.Dir = "/usr"
	if out, err := cmd.Output(); err != nil || string(out) != "0\n/usr\n" {
		t.Errorf("exec from /usr: %q %v, want root in /usr", out, err)
	}
	if r := e.run("exec", "web", "--user", "1000", "--workdir", private, "--", "true"); r.code != 126 || !strings.Contains(r.stderr, private) {
		t.Errorf("exec --workdir the user may not enter: exit %d, %q; want 126 and the directory named", r.code, r.stderr)
	}
	for _, c := range []struct {
		args      []string
		fragments []string
	}{
		{[]string{"--user", "nosuchuser"}, []string{"nosuchuser", "/etc/passwd"}},
		{[]string{"--user", "70000"}, []string{"70000", "0..65535"}},
		{[]string{"--user", "1000:nosuchgroup"}, []string{"nosuchgroup"}},
		{[]string{"--env", "=x"}, []string{"--env", "=x"}},
		{[]string{"--env-file", "/nonexistent"}, []string{"--env-file", "/nonexistent"}},
		{[]string{"--workdir", "relative"}, []string{"relative", "absolute"}},
		{[]string{"--workdir", "/nonexistent"}, []string{"/nonexistent"}},
	} {
		args := append(append([]string{"exec", "web"}, c.args...), "--", "true")
		if msg := e.mustFail(c.fragments, args...); strings.Count(msg, "\n") > 0 {
			t.Errorf("l3iso %v: more than one line: %q", args, msg)
		}
	}
	if r := e.run("exec", "web", "--", "no-such-command-here"); r.code == 0 || !strings.Contains(r.stderr, "no-such-command-here") {
		t.Errorf("exec of a missing command: exit %d, %q", r.code, r.stderr)
	}
}

// execPid starts `l3iso exec name -- argv...` in the background and
// returns the command's host pid once it runs; Cleanup stops it.
func (e *env) execPid(name string, argv ...string) int {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + e.netns, binary, "--bpffs", e.bpffs, "exec", name, "--"}, argv...)...)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cancel(); cmd.Wait() })
	pid := 0
	waitFor(e.t, 10*time.Second, "`exec "+name+"` to start "+argv[0], func() bool {
		b, _ := os.ReadFile(filepath.Join(e.cgroupOf(name), "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + f + "/comm")
			if strings.TrimSpace(string(comm)) == filepath.Base(argv[0]) {
				pid, _ = strconv.Atoi(f)
				return true
			}
		}
		return false
	})
	return pid
}

// sessionKeyrings runs `l3iso exec args... --` from a process with a
// session keyring of its own (python3 joins a new one, then becomes
// l3iso), and returns that keyring's id and the one the command inside
// sees.
func (e *env) sessionKeyrings(args ...string) (caller, inside string) {
	e.t.Helper()
	const getID = "import ctypes; print(ctypes.CDLL(None).syscall(250, 0, -3, 0))" // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
	wrapper := "import ctypes, os, sys; print(ctypes.CDLL(None).syscall(250, 1, 0), flush=True); os.execvp(sys.argv[1], sys.argv[1:])"
	argv := append([]string{"python3", "-c", wrapper, "nsenter", "--net=" + e.netns, binary, "--bpffs", e.bpffs, "exec"}, args...)
	out, err := exec.Command(argv[0], append(argv[1:], "--", "python3", "-c", getID)...).Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) != 2 || f[0] == "-1" {
		e.t.Fatalf("session keyrings of `exec %v`: %q %v", args, out, err)
	}
	return f[0], f[1]
}

// waitFor polls ok until it holds, failing t after d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// firstPin returns a pinned object under bpffs directory dir.
func firstPin(t *testing.T, dir string) string {
	t.Helper()
	pin := ""
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && pin == "" && d.Type().IsRegular() {
			pin = p
		}
		return nil
	})
	if pin == "" {
		t.Fatalf("no pin under %s", dir)
	}
	return pin
}

// rootOwnedFile makes a file holding "host\n", owned by root, mode 0644,
// in a directory everyone may enter: only its owner protects it.
func rootOwnedFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(publicDir(t), "config")
	if err := os.WriteFile(f, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// publicDir makes a directory that everyone may enter (t.TempDir's
// parent is root's only); Cleanup removes it.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "l3iso-exec-test-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestExecRefuses: exec refuses, saying why, a host where the container's
// processes could leave its cgroup: a cgroup.procs above the container's
// that its host ids may write (others, or owned by its range).
func TestExecRefuses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	procs := filepath.Join(e.cgroot, "cgroup.procs")
	restore := func() {
		os.Chmod(procs, 0o644)
		os.Chown(procs, 0, 0)
	}
	t.Cleanup(restore)
	for _, c := range []struct {
		name string
		set  func() error
	}{
		{"world-writable", func() error { return os.Chmod(procs, 0o666) }},
		{"owned by the range", func() error { return os.Chown(procs, 1<<30, 0) }},
	} {
		if err := c.set(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		msg := e.mustFail([]string{procs, "refuses"}, "exec", "web", "--", "true")
		if strings.Count(msg, "\n") > 0 {
			t.Errorf("%s: more than one line: %q", c.name, msg)
		}
		restore()
	}
	if r := e.run("exec", "web", "--", "true"); r.code != 0 {
		t.Errorf("exec after the cgroup was made root's again: exit %d, %s", r.code, r.stderr)
	}
}

// TestExecPrivilegedPort: container root, and any --user, binds ports
// below 1024 on the container's own addresses although no capability of
// its user namespace counts in the host's network namespace (the bind
// hook waives CAP_NET_BIND_SERVICE there); another container's address
// stays out of reach.
func TestExecPrivilegedPort(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.2/24")
	for _, who := range [][]string{nil, {"--user", "1000"}} {
		a := e.execAgent("web", who...)
		for _, c := range []struct {
			family, typ int
			addr        string
		}{
			{unix.AF_INET, unix.SOCK_STREAM, "10.77.0.1:80"},
			{unix.AF_INET, unix.SOCK_DGRAM, "10.77.0.1:53"},
			{unix.AF_INET6, unix.SOCK_STREAM, "[fd77::1]:443"},
			{unix.AF_INET, unix.SOCK_STREAM, "0.0.0.0:81"}, // the wildcard: its own address
		} {
			s := a.Socket(c.family, c.typ, 0)
			if err := a.Bind(s, netip.MustParseAddrPort(c.addr)); err != nil {
				t.Errorf("exec %v: bind %s: %v", who, c.addr, err)
			}
			a.Close(s)
		}
		s := a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err := a.Bind(s, netip.MustParseAddrPort("10.77.0.2:80")); err == nil {
			t.Errorf("exec %v: bound db's 10.77.0.2:80", who)
		}
	}
}

// TestExec: the command runs in the container's cgroup without the
// capabilities that would undo isolation, and its exit status is returned.
// (rule8_contain_test.go tries harder to get out.)
func TestExec(t *testing.T) {
	t.Parallel()
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
	// Nor can it move itself by writing cgroup.procs of a cgroup outside.
	// Inside exec those paths do not exist, and exec closes inherited
	// descriptors, so the command gets each cgroup directory as a
	// descriptor over a unix socket and opens cgroup.procs below it: the
	// answer is the kernel's permission check, never ENOENT.
	cg := filepath.Join(e.hostCg, "cgroup.procs")
	const moveSelf = `import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
_, fds, _, _ = socket.recv_fds(s, 1, 1)
try:
    fd = os.open("cgroup.procs", os.O_WRONLY, dir_fd=fds[0])
    os.write(fd, str(os.getpid()).encode())
    print("escaped")
except OSError as x:
    print("errno", x.errno)
print(open("/proc/self/cgroup").read(), end="")`
	for _, target := range []string{e.cgroot, e.hostCg, filepath.Dir(e.cgroot)} {
		dir, err := os.Open(target)
		if err != nil {
			t.Fatal(err)
		}
		sock, wait := sockprobe.OfferFD(t, dir)
		r = e.run("exec", "web", "--", "python3", "-c", moveSelf, sock)
		if err := wait(); err != nil {
			t.Fatalf("hand %s to the exec'd command: %v (exit %d, %s)", target, err, r.code, r.stderr)
		}
		dir.Close()
		errno, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(r.stdout, "\n", 2)[0], "errno "))
		if r.code != 0 || !deniedCgroupMove(syscall.Errno(errno)) {
			t.Errorf("a process in the container writes its pid to %s/cgroup.procs: exit %d, %q (%s); want a permission error", target, r.code, r.stdout, r.stderr)
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

// deniedCgroupMove reports whether err is how the kernel refuses to move
// a process into a cgroup it may not use: no write permission on
// cgroup.procs of the common ancestor (EACCES; the kernel checks it
// before the cgroup namespace, whose ENOENT would also be the answer of a
// path that does not exist, so it does not count), or a read-only mount
// (EROFS). nil, and any other error, is not.
func deniedCgroupMove(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS)
}
