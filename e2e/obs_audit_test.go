package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l3iso/l3iso/pkg/audit"
)

// history reads `l3iso history -o json`.
func (e *env) history() []audit.Record {
	e.t.Helper()
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(e.mustRun("history", "-o", "json")), "\n") {
		if line == "" {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			e.t.Fatalf("history -o json: %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestAuditTrail: every change of a session is recorded, in order, once,
// in the audit log and in syslog; a command that fails and changes
// nothing, a dry run, and an up or apply with nothing to do record
// nothing; a command that cannot write the log changes nothing.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	e := newBareEnv(t)
	sock := filepath.Join(t.TempDir(), "log")
	syslog, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer syslog.Close()
	e.extra = []string{"L3ISO_SYSLOG=" + sock}
	start := time.Now()

	e.up()
	e.mustRun("up") // nothing to change
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.9:5432/tcp")

	logFile := audit.Path(e.state)
	before, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	policy := filepath.Join(dir, "policy.yaml")
	for f, body := range map[string]string{
		bad:    "containers:\n  web:\n    adresses: [10.77.0.1]\n",
		policy: "containers:\n  web:\n    addresses: [10.77.0.1/24, 10.77.0.2]\n  api:\n    addresses: [fd77::5]\n",
	} {
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"container", "add", "x", "--addr", "10.77.0.1"}, // owned by web
		{"container", "add", "web", "--addr", "10.77.0.7"},
		{"container", "del", "nope"},
		{"apply", "-f", bad},
		{"up", "--delivery", "teleport"},
	} {
		if r := e.run(args...); r.code == 0 {
			t.Fatalf("l3iso %v succeeded", args)
		}
	}
	e.mustRun("apply", "-f", policy, "--dry-run")
	// The state directory cannot hold the log: the command fails before
	// changing anything.
	func() {
		state := e.state
		e.state = bad
		defer func() { e.state = state }() // also when mustFail fails: the cleanup's down needs it
		e.mustFail([]string{"audit log", "--state-dir"}, "container", "add", "zed", "--addr", "10.77.0.20")
	}()
	if slices.ContainsFunc(e.listJSON(), func(c containerJSON) bool { return c.Name == "zed" }) {
		t.Fatal("container add changed something although it could not write the audit log")
	}
	after, _ := os.ReadFile(logFile)
	if string(after) != string(before) {
		t.Fatalf("failed commands and a dry run wrote to the audit log:\n%s", after[len(before):])
	}

	e.mustRun("apply", "-f", policy, "--prune") // db goes, api comes, web gains an address
	e.mustRun("apply", "-f", policy)            // in force already
	e.mustRun("container", "del", "api")
	if out := e.mustRun("metrics", "--once"); !strings.Contains(out, "l3iso_changes_total 5\n") || !strings.Contains(out, "l3iso_apply_generation 1\n") {
		t.Errorf("metrics --once does not count 5 changes and 1 apply:\n%s", grepLines(out, "l3iso_changes_total")+"\n"+grepLines(out, "l3iso_apply_generation"))
	}
	e.mustRun("down")
	if out := e.mustRun("metrics", "--once"); !strings.Contains(out, "l3iso_installed 0\n") || !strings.Contains(out, "l3iso_isolation_intact 0\n") {
		t.Errorf("metrics after down:\n%s", out)
	}

	recs := e.history()
	type want struct {
		command string
		change  uint64
		lines   []string // fragments, one per change line, in order
	}
	wants := []want{
		{"up", 1, []string{"installed: programs attached at " + e.cgroot}},
		{"container add", 2, []string{`+ container "web" (shared): 10.77.0.1/24 [id `}},
		{"container add", 3, []string{`+ container "db" (shared): 10.77.0.9:5432/tcp [id `}},
		{"apply", 4, []string{`+ container "api" (shared): fd77::5`, `- container "db"`, `~ container "web": +addr 10.77.0.2`}},
		{"container del", 5, []string{`- container "api": no processes were running`}},
		{"down", 0, []string{`- container "web"`, "removed 1 containers"}},
	}
	if len(recs) != len(wants) {
		t.Fatalf("history has %d records, want %d: %+v", len(recs), len(wants), recs)
	}
	bpffs, _ := filepath.Abs(e.bpffs)
	for i, w := range wants {
		r := recs[i]
		if r.Command != w.command || r.Change != w.change || r.UID != os.Getuid() || r.BPFFS != bpffs ||
			r.Time.Before(start.Add(-time.Second)) || r.Time.After(time.Now()) || len(r.Changes) != len(w.lines) {
			t.Errorf("record %d: %+v, want command %q, change %d, %d change lines", i+1, r, w.command, w.change, len(w.lines))
			continue
		}
		for j, l := range w.lines {
			if !strings.Contains(r.Changes[j], l) {
				t.Errorf("record %d (%s): change %q does not say %q", i+1, r.Command, r.Changes[j], l)
			}
		}
		if r.Command != "up" && r.Command != "down" && !slices.Contains(r.Args, strings.Fields(r.Command)[0]) {
			t.Errorf("record %d: args %q lack the command", i+1, r.Args)
		}
	}
	text := e.mustRun("history", "-n", "2")
	if !strings.Contains(text, "l3iso --bpffs "+e.bpffs+" container del api") || !strings.Contains(text, "    - container \"web\"") || strings.Contains(text, "apply") {
		t.Errorf("history -n 2:\n%s", text)
	}

	// syslog got the same records, in the same order.
	syslog.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	for i := range wants {
		n, err := syslog.Read(buf)
		if err != nil {
			t.Fatalf("syslog: message %d: %v", i+1, err)
		}
		msg := string(buf[:n])
		var r audit.Record
		if k := strings.Index(msg, "]: "); k < 0 || json.Unmarshal([]byte(msg[k+3:]), &r) != nil || r.Command != recs[i].Command || !r.Time.Equal(recs[i].Time) {
			t.Errorf("syslog message %d: %q, want record %+v", i+1, msg, recs[i])
		}
	}
	syslog.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := syslog.Read(buf); err == nil {
		t.Errorf("syslog got more than %d messages: %q", len(wants), buf[:n])
	}
}
