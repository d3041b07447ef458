package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
)

// The engine's workers are this test binary, started again.
func TestMain(m *testing.M) {
	MaybeWorker(nil)
	os.Exit(m.Run())
}

// leftovers lists what the run with id could have left behind: its
// network namespaces (l3b-bID-*, and the containers' l3iso-TAG_ID[:4]…) and
// its cgroup subtree. Only its own: other sessions may run this test at
// the same time on the same machine.
func leftovers(t *testing.T, id string) []string {
	t.Helper()
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "l3b-b"+id+"-") || strings.HasPrefix(e.Name(), "l3iso-") && strings.Contains(e.Name(), id[:4]) {
			out = append(out, "netns "+e.Name())
		}
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mount, "l3iso-bench-b"+id)); err == nil {
		out = append(out, "cgroup "+filepath.Join(mount, "l3iso-bench-b"+id))
	}
	return out
}

func runID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestSmoke runs the whole engine with tiny durations — every topology,
// the scaling runs (with 3 containers instead of 100 and 1,000),
// bcast_fanout (4 containers instead of 100), bpf_stats, the control
// plane (20 containers instead of 10,000) — and checks that every
// configuration carried traffic, that broadcasts reached the listeners and
// only them, that bpf_stats saw l3iso's programs run, and that nothing is
// left behind. It says nothing about performance.
func TestSmoke(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	bin := filepath.Join(t.TempDir(), "l3iso")
	if out, err := buildL3iso(bin); err != nil {
		t.Fatalf("go build cmd/l3iso: %v\n%s", err, out)
	}
	id := runID()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Options{
		Binary: bin, Rounds: 3, RunTime: 100 * time.Millisecond,
		Scale: []int{3}, Fanout: 4, ControlPlane: 20, SkipCrossCheck: true, Progress: &progress, RunID: id,
	})
	for _, l := range leftovers(t, id) {
		t.Errorf("left behind: %s", l)
	}
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	fanoutIn := map[string]bool{Bridge: true, Shared: true, Direct: true}
	for _, r := range rep.Results {
		if (r.Workload == BcastFanout || r.Workload == BcastCPUNs) && !fanoutIn[r.Config] {
			if r.Median != nil {
				t.Errorf("%s %s: measured, but the configuration delivers no broadcasts", r.Config, r.Workload)
			}
			continue
		}
		if r.Workload == SendtoNs && !sendtoConfigs[r.Config] {
			if r.Median != nil {
				t.Errorf("%s %s: measured, but sendto_ns runs only beside l3iso's socket hooks", r.Config, r.Workload)
			}
			continue
		}
		if r.Median == nil || *r.Median <= 0 {
			t.Errorf("%s %s: nothing measured", r.Config, r.Workload)
		}
	}
	if f := rep.Fanout; f == nil || f.Containers != 4 || len(f.Checks) != 3 {
		t.Errorf("bcast: %+v, want 4 containers and checks of bridge, shared and direct", rep.Fanout)
	} else {
		for _, c := range f.Checks {
			if strings.Contains(c, "unexpected") {
				t.Errorf("bcast check: %s", c)
			}
		}
	}
	for _, s := range rep.Scaling {
		if s.Median == nil {
			t.Errorf("%s %s with %d containers: nothing measured", s.Config, s.Workload, s.Containers)
		}
	}
	if len(rep.Scaling) != 8 {
		t.Errorf("%d scaling figures, want 8 (shared and direct × udp_pps and tcp_crr × 1 and 3 containers)", len(rep.Scaling))
	}
	if len(rep.ControlPlane) != 6 {
		t.Errorf("control plane: %+v, want 6 operations", rep.ControlPlane)
	}
	for _, u := range rep.Unavailable {
		if !strings.HasPrefix(u, BcastFanout) && !strings.HasPrefix(u, SendtoNs) {
			t.Errorf("not measured: %s", u)
		}
	}
	// bpf_stats saw l3iso's programs run: the skb programs on every
	// datagram in shared, the sendmsg4 program on every sendto of a host
	// process, TC programs in direct; and the do-nothing ones, its own
	// cost.
	if st := rep.BPFStats; st == nil || st.OwnNs <= 0 {
		t.Errorf("bpf_stats: %+v, want its own cost measured", st)
	} else {
		ran := map[string]bool{}
		for _, p := range st.Programs {
			if strings.HasPrefix(p.Program, "l3_") && p.RunsPerOp > 0 {
				ran[p.Config+" "+p.Workload] = true
			}
		}
		for _, want := range []string{"shared udp_pps", "direct udp_pps", "host sendto_ns", "shared sendto_ns"} {
			if !ran[want] {
				t.Errorf("bpf_stats: no l3iso program ran in %s: %+v", want, st.Programs)
			}
		}
	}
	for _, tg := range rep.Targets {
		if tg.Verdict == NotMeasured && !strings.Contains(tg.What, "1,000") {
			t.Errorf("target %q: not measured", tg.What)
		}
		// Issue 17's ratios ran in the target rounds too (3 + 4).
		if tg.Issue && tg.Verdict != NotMeasured && tg.Ratio.Rounds != 7 {
			t.Errorf("target %q: %d rounds, want 7 (3 rounds, 4 target rounds)", tg.What, tg.Ratio.Rounds)
		}
	}
	// Elsewhere the target rounds left a gap (NaN) in their workloads,
	// and nothing in the others: entries, measured.
	series := map[Key][2]int{}
	for _, f := range rep.Series {
		series[f.Key] = [2]int{len(f.PerRound), len(f.PerRound.valid())}
	}
	for k, want := range map[Key][2]int{{Shared, UDPPPS, 1}: {7, 7}, {Loopback, UDPPPS, 1}: {7, 3}, {Loopback, TCPRR, 1}: {3, 3}} {
		if series[k] != want {
			t.Errorf("%v: %d entries, %d measured; want %v", k, series[k][0], series[k][1], want)
		}
	}
	// A real run's report writes: no NaN reaches the JSON encoder.
	if err := rep.WriteFiles(t.TempDir()); err != nil {
		t.Errorf("write the report: %v", err)
	}
	if t.Failed() {
		var md bytes.Buffer
		rep.WriteMarkdown(&md)
		t.Logf("progress:\n%s\nreport:\n%s", progress.String(), md.String())
	}
}

// Cancelling the context (what Ctrl-C does in l3iso-bench) stops the
// run and still removes everything.
func TestCancel(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	bin := filepath.Join(t.TempDir(), "l3iso")
	if out, err := buildL3iso(bin); err != nil {
		t.Fatalf("go build cmd/l3iso: %v\n%s", err, out)
	}
	id := runID()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(3*time.Second, cancel) // in the middle of the setup or the rounds
	_, err := Run(ctx, Options{Binary: bin, Rounds: 50, RunTime: 100 * time.Millisecond, NoScale: true, SkipControlPlane: true, SkipCrossCheck: true, RunID: id})
	if err == nil {
		t.Error("Run after cancel: no error")
	}
	for _, l := range leftovers(t, id) {
		t.Errorf("left behind after cancel: %s", l)
	}
}

// buildL3iso builds cmd/l3iso into bin as `make build` does (static).
func buildL3iso(bin string) ([]byte, error) {
	build := exec.Command("go", "build", "-o", bin, "github.com/l3iso/l3iso/cmd/l3iso")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	return build.CombinedOutput()
}
