package e2e

// The operator commands: bad input, container add/list/stats/del, apply.
// exec is rule 8 (rule8_contain_test.go); killed commands are rule 9
// (rule9_crash_test.go).

import (
	"encoding/json"
	"github.com/l3iso/l3iso/pkg/maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.9:5432/tcp")
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
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
		{"exec-no-dash", []string{"exec", "web", "id", "-u"}, []string{"-u", "after --", "NAME -- COMMAND"}},
		{"exec-no-dash-no-flags", []string{"exec", "web", "true"}, []string{"web -- COMMAND"}},
		{"exec-no-command", []string{"exec", "web", "--"}, []string{"-- COMMAND"}},
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
	t.Parallel()
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
	t.Parallel()
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
