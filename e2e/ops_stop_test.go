package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Scripts for processes started in containers with `l3iso exec`; each
// prints "ready" once its SIGTERM handling is in place.
const (
	// obeysTerm says "TERM" on SIGTERM and exits; a child (sleep) runs
	// beside it: two processes.
	obeysTerm = `trap 'echo TERM; exit 0' TERM; sleep 600 & echo ready; wait`
	// ignoresTerm ignores SIGTERM (SIG_IGN survives the exec of sleep):
	// one process, which only SIGKILL ends.
	ignoresTerm = `trap '' TERM; echo ready; exec sleep 600`
)

// contained is a process started in a container.
type contained struct {
	t     *testing.T
	name  string
	lines chan string // its stdout, closed at EOF
	done  chan struct{}
}

// startExec runs `sh -c script` in container name with `l3iso exec` and
// waits for its "ready".
func (e *env) startExec(name, script string) *contained {
	e.t.Helper()
	cmd := exec.Command("nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "exec", name, "--", "sh", "-c", script)
	return e.startCmd(cmd, name, e.cgroupOf(name))
}

// startCmd starts cmd (whose processes live in cgroup cg) and waits for
// its "ready".
func (e *env) startCmd(cmd *exec.Cmd, name, cg string) *contained {
	e.t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start %s in %s: %v", cmd.Args, name, err)
	}
	p := &contained{t: e.t, name: name, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
		cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		// Whatever a failed test left: killed at once, so that the
		// cleanup's `down` has no grace period to wait out.
		os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
		cmd.Process.Kill()
	})
	if l := p.next(10 * time.Second); l != "ready" {
		e.t.Fatalf("process in %s said %q, want ready", name, l)
	}
	return p
}

// next returns its next line ("" at EOF or after timeout).
func (p *contained) next(timeout time.Duration) string {
	select {
	case l := <-p.lines:
		return l
	case <-time.After(timeout):
		return ""
	}
}

// ended waits for it to have exited (and its children) and returns what it
// printed since "ready".
func (p *contained) ended(timeout time.Duration) []string {
	p.t.Helper()
	var out []string
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				select {
				case <-p.done:
				case <-deadline:
					p.t.Fatalf("process in %s did not exit", p.name)
				}
				return out
			}
			out = append(out, l)
		case <-deadline:
			p.t.Fatalf("process in %s still runs (printed %q)", p.name, out)
		}
	}
}

// endedBy waits for it to have exited; term says it handles SIGTERM and
// must have been sent one (it then printed "TERM").
func (p *contained) endedBy(term bool) {
	p.t.Helper()
	if got := p.ended(5 * time.Second); term && strings.Join(got, ",") != "TERM" {
		p.t.Errorf("the process in %s that handles SIGTERM printed %q, want TERM: it was not sent SIGTERM", p.name, got)
	}
}

// alive fails unless it still runs.
func (p *contained) alive(what string) {
	p.t.Helper()
	select {
	case <-p.done:
		p.t.Fatalf("%s: the process in %s is gone", what, p.name)
	default:
	}
}

// timed runs l3iso and returns its stdout and how long it took; a failure
// fails the test.
func (e *env) timed(args ...string) (string, time.Duration) {
	e.t.Helper()
	start := time.Now()
	out := e.mustRun(args...)
	return out, time.Since(start)
}

// TestGracefulStop: del, down and an apply that removes containers send
// SIGTERM to every process of the container (its whole cgroup subtree),
// wait --grace, kill what ignored it, and say so. The grace period is
// waited out only while a process still runs, and once for an apply or a
// down that removes several containers.
func TestGracefulStop(t *testing.T) {
	// Not parallel: it bounds how long del, apply and down take (the grace
	// period and little more), which other tests' load would stretch.
	e := newEnv(t)
	// Three seconds: waiting it out twice (one container after the
	// other) takes 6 s, which the checks below tell from 3 s even on a
	// busy machine.
	const grace = 3 * time.Second

	t.Run("del", func(t *testing.T) {
		e.mustRun("container", "add", "x", "--addr", "10.77.1.1", "--addr", "fd77::1:1")
		// A process in a cgroup below the container's is its process too.
		inner := filepath.Join(e.cgroupOf("x"), "inner")
		if err := os.Mkdir(inner, 0o755); err != nil {
			t.Fatal(err)
		}
		obeys := e.startExec("x", obeysTerm)
		ignores := e.startExec("x", ignoresTerm)
		below := e.startCmd(exec.Command("nsenter", "--net="+e.netns, "sh", "-c", `echo $$ > "$1/cgroup.procs" && `+obeysTerm, "sh", inner), "x/inner", inner)
		out, took := e.timed("container", "del", "x", "--grace", grace.String())
		if want := `container "x" deleted: stopped 5 processes, killed 1 after 3s`; strings.TrimSpace(out) != want {
			t.Errorf("del said %q, want %q", strings.TrimSpace(out), want)
		}
		if took < grace {
			t.Errorf("del took %v: it did not wait the grace period (%v) for the process that ignores SIGTERM", took, grace)
		}
		obeys.endedBy(true)
		below.endedBy(true)
		ignores.endedBy(false)
		if _, err := os.Stat(e.cgroupOf("x")); err == nil {
			t.Error("del left x's cgroup")
		}
	})

	t.Run("del-quick", func(t *testing.T) {
		// Processes that exit on SIGTERM end the wait at once.
		e.mustRun("container", "add", "x", "--addr", "10.77.1.1")
		obeys := e.startExec("x", obeysTerm)
		out, took := e.timed("container", "del", "x", "--grace", "60s")
		if want := `container "x" deleted: stopped 2 processes`; strings.TrimSpace(out) != want {
			t.Errorf("del said %q, want %q", strings.TrimSpace(out), want)
		}
		if took > 10*time.Second {
			t.Errorf("del took %v, though its processes exited on SIGTERM", took)
		}
		obeys.ended(5 * time.Second)
		out = e.mustRun("container", "add", "y", "--addr", "10.77.1.2")
		if out = e.mustRun("container", "del", "y"); strings.TrimSpace(out) != `container "y" deleted: no processes were running` {
			t.Errorf("del of an idle container said %q", out)
		}
	})

	t.Run("del-grace-0", func(t *testing.T) {
		e.mustRun("container", "add", "x", "--addr", "10.77.1.1")
		obeys := e.startExec("x", obeysTerm)
		ignores := e.startExec("x", ignoresTerm)
		out := e.mustRun("container", "del", "x", "--grace", "0")
		if want := `container "x" deleted: stopped 3 processes, killed 3 at once (--grace 0)`; strings.TrimSpace(out) != want {
			t.Errorf("del said %q, want %q", strings.TrimSpace(out), want)
		}
		if got := obeys.ended(5 * time.Second); len(got) != 0 {
			t.Errorf("with --grace 0 the process got SIGTERM first (printed %q)", got)
		}
		ignores.ended(5 * time.Second)
		e.mustFail([]string{"--grace", "-1s", "negative"}, "container", "del", "nope", "--grace", "-1s")
	})

	t.Run("apply", func(t *testing.T) {
		e.apply("containers:\n  a:\n    addresses: [10.77.2.1]\n  b:\n    addresses: [10.77.2.2]\n  keep:\n    addresses: [10.77.2.3]\n")
		var ps []*contained
		for _, c := range []string{"a", "b"} {
			ps = append(ps, e.startExec(c, obeysTerm), e.startExec(c, ignoresTerm))
		}
		kept := e.startExec("keep", ignoresTerm)
		out, took := e.timed("apply", "-f", policyFile(t, "containers:\n  keep:\n    addresses: [10.77.2.3]\n"), "--prune", "--grace", grace.String())
		for _, want := range []string{
			`- container "a" (stopped 3 processes, killed 1 after 3s)`,
			`- container "b" (stopped 3 processes, killed 1 after 3s)`,
			"applied 2 changes; stopped 6 processes, killed 2 after 3s",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("apply output lacks %q:\n%s", want, out)
			}
		}
		// In parallel: one grace period, not one per container.
		if took < grace || took > grace+2500*time.Millisecond {
			t.Errorf("apply took %v; with two containers to stop in parallel it should take the grace period (%v) and little more", took, grace)
		}
		for i, p := range ps {
			p.endedBy(i%2 == 0)
		}
		kept.alive("apply that keeps the container")
		// Cleanup for the next subtest: keep's process is stopped too.
		out = e.mustRun("apply", "-f", policyFile(t, "containers: {}\n"), "--allow-empty", "--prune", "--grace", "0")
		if !strings.Contains(out, `- container "keep" (stopped 1 process, killed 1 at once (--grace 0))`) {
			t.Errorf("apply output:\n%s", out)
		}
		kept.ended(5 * time.Second)
	})

	t.Run("down", func(t *testing.T) {
		var ps []*contained
		for _, c := range []string{"a", "b"} {
			e.mustRun("container", "add", c, "--addr", "10.77.3."+map[string]string{"a": "1", "b": "2"}[c])
			ps = append(ps, e.startExec(c, obeysTerm), e.startExec(c, ignoresTerm))
		}
		out, took := e.timed("down", "--grace", grace.String())
		if want := "removed 2 containers (stopped 6 processes, killed 2 after 3s)"; !strings.Contains(out, want) {
			t.Errorf("down said %q, want it to contain %q", out, want)
		}
		if took < grace || took > grace+2500*time.Millisecond {
			t.Errorf("down took %v; stopping two containers in parallel should take the grace period (%v) and little more", took, grace)
		}
		for i, p := range ps {
			p.endedBy(i%2 == 0)
		}
		e.mustRun("up", "--cgroup-root", e.cgroot) // for the env's cleanup
	})
}

// policyFile writes a policy to a file of its own.
func policyFile(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestApplyNoSurpriseDeletions: apply refuses to remove containers whose
// processes run (unless --prune) and an empty policy (unless
// --allow-empty), saying which containers and how many processes, and
// changes nothing; --dry-run names the processes each removal stops.
func TestApplyNoSurpriseDeletions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply("containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1]\n  db:\n    addresses: [10.77.0.2/24]\n  idle:\n    addresses: [10.77.0.3]\n")
	web := e.startExec("web", obeysTerm) // two processes
	db := e.startExec("db", ignoresTerm) // one
	onlyIdle := policyFile(t, "containers:\n  idle:\n    addresses: [10.77.0.3]\n")
	before := e.snapshot()

	msg := e.mustFail([]string{`"db" (1 process)`, `"web" (2 processes)`, "2 containers with running processes", "--prune", "stop them first"}, "apply", "-f", onlyIdle)
	if strings.Contains(msg, "idle") {
		t.Errorf("the refusal names idle, which stays: %q", msg)
	}
	e.unchanged(before, "apply refused for running processes")

	// A dry run shows the plan with the processes, and fails as apply would.
	r := e.run("apply", "-f", onlyIdle, "--dry-run")
	if r.code == 0 || !strings.Contains(r.stderr, "--prune") {
		t.Errorf("dry run of a refused apply: exit %d, stderr %q; want the same refusal", r.code, r.stderr)
	}
	for _, want := range []string{`- container "db" (stops 1 process)`, `- container "web" (stops 2 processes)`, "which apply would refuse"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, r.stdout)
		}
	}
	out := e.mustRun("apply", "-f", onlyIdle, "--dry-run", "--prune")
	for _, want := range []string{`- container "db" (stops 1 process)`, `- container "web" (stops 2 processes)`, "dry run: 2 changes not applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run --prune output lacks %q:\n%s", want, out)
		}
	}
	var j struct {
		Running map[string]int `json:"running"`
	}
	if err := json.Unmarshal([]byte(e.mustRun("apply", "-f", onlyIdle, "--dry-run", "--prune", "-o", "json")), &j); err != nil || j.Running["web"] != 2 || j.Running["db"] != 1 || len(j.Running) != 2 {
		t.Errorf("dry run -o json: running %v (%v), want web 2, db 1", j.Running, err)
	}
	e.unchanged(before, "apply --dry-run")

	// Empty policies, in every spelling: refused, with or without --prune.
	for name, body := range map[string]string{"empty-file": "", "empty-map": "containers: {}\n", "comments": "# nothing here yet\n\n# really\n"} {
		f := policyFile(t, body)
		msg := e.mustFail([]string{f, "no containers", "every installed container (3, with 3 running processes)", "--allow-empty", "--prune"}, "apply", "-f", f)
		if strings.Count(msg, "\n") > 0 {
			t.Errorf("%s: a multi-line error: %q", name, msg)
		}
		e.mustFail([]string{"--allow-empty"}, "apply", "-f", f, "--prune")
		e.mustFail([]string{"--allow-empty"}, "apply", "-f", f, "--dry-run", "--prune")
	}
	empty := policyFile(t, "containers: {}\n")
	e.mustFail([]string{`"db" (1 process)`, `"web" (2 processes)`, "--prune"}, "apply", "-f", empty, "--allow-empty")
	e.unchanged(before, "refused empty policies")
	web.alive("refused applies")
	db.alive("refused applies")

	// Told: web and db go, their processes with them.
	out = e.mustRun("apply", "-f", onlyIdle, "--prune", "--grace", "1s")
	for _, want := range []string{`- container "db" (stopped 1 process, killed 1 after 1s)`, `- container "web" (stopped 2 processes)`} {
		if !strings.Contains(out, want) {
			t.Errorf("apply --prune output lacks %q:\n%s", want, out)
		}
	}
	web.ended(5 * time.Second)
	db.ended(5 * time.Second)
	if list := e.listJSON(); len(list) != 1 || list[0].Name != "idle" {
		t.Errorf("after apply --prune: %+v", list)
	}
	// An idle container goes without --prune; the last one only with
	// --allow-empty.
	out = e.mustRun("apply", "-f", empty, "--allow-empty")
	if !strings.Contains(out, `- container "idle" (no processes were running)`) {
		t.Errorf("apply --allow-empty output:\n%s", out)
	}
	e.mustFail([]string{"no containers", "none is installed", "--allow-empty"}, "apply", "-f", empty)
}
