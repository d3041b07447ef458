package bench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// BenchmarkControlPlane times l3iso's control plane in one installation
// (its own netns, cgroup root and bpffs directory):
//
//   - `l3iso container add` in shared mode, as the operator runs it (one
//     process per add, through nsenter; process start included), and
//     control.Add in process, from a child running in the netns;
//   - `l3iso apply -f` of a 10,000-container policy, of the same policy
//     again (nothing changes), and of an empty one (removes all 10,000);
//   - add and delete next to 10,000 registered containers.
//
// Binary and in-process adds alternate in blocks of 10, so both see the
// same number of containers already registered.
func BenchmarkControlPlane(b *testing.B) {
	w := newWorld(b)
	in := w.newInstall("cp")
	adds := 100
	if testing.Short() {
		adds = 20
	}
	const block = 10

	// The operations change the installation (it ends up down), so they
	// run once per call, whatever b.N is: use -benchtime=1x.
	var (
		nsenter, execBase, addBin, addProc series
		openProc, addBin10k, addProc10k    series
		delBin10k, apply10k, applySame     series
		applyGone, down                    series
	)
	// What starting a process costs: nsenter + /bin/true, and
	// nsenter + l3iso --help (Go runtime and l3iso's init).
	for range 10 {
		start := time.Now()
		if out, err := exec.Command("nsenter", "--net="+in.netns, "--", "true").CombinedOutput(); err != nil {
			b.Fatalf("nsenter true: %v\n%s", err, out)
		}
		nsenter = append(nsenter, ms(time.Since(start))...)
		_, d, err := in.l3iso("--help")
		if err != nil {
			b.Fatal(err)
		}
		execBase = append(execBase, ms(d)...)
	}

	// Adds next to 0..2×adds containers.
	base := map[string]netip.Addr{"b": netip.MustParseAddr("10.82.0.0"), "p": netip.MustParseAddr("10.83.0.0")}
	for k := 0; k < adds; k += block {
		for j := k + 1; j <= k+block; j++ {
			name, addr := fmt.Sprintf("b%03d", j), nthAddr(base["b"], j)
			_, d, err := in.l3iso("container", "add", name, "--addr", addr.String())
			if err != nil {
				b.Fatal(err)
			}
			addBin = append(addBin, ms(d)...)
		}
		res := addInProcess(b, in, "p", base["p"], k+1, k+block)
		openProc = append(openProc, nsToMs([]int64{res.OpenNs})...)
		addProc = append(addProc, nsToMs(res.AddNs)...)
	}

	// Start from nothing, then the 10,000-container policy.
	in.apply(0)
	tries := in.applyMany(10_000)
	if d := report(b, "apply of 10,000 containers", tries); d > 0 {
		apply10k = ms(d)
	}
	_, d, err := in.l3iso("apply", "-f", in.policyFile(10_000))
	if err != nil {
		b.Fatal(err)
	}
	applySame = ms(d)

	// Add and delete next to 10,000 containers.
	x := netip.MustParseAddr("10.84.0.0")
	for j := 1; j <= 5; j++ {
		name := fmt.Sprintf("x%d", j)
		_, d, err := in.l3iso("container", "add", name, "--addr", nthAddr(x, j).String())
		if err != nil {
			b.Fatal(err)
		}
		addBin10k = append(addBin10k, ms(d)...)
	}
	res := addInProcess(b, in, "y", x, 101, 105)
	addProc10k = nsToMs(res.AddNs)
	for j := 1; j <= 5; j++ {
		_, d, err := in.l3iso("container", "del", fmt.Sprintf("x%d", j))
		if err != nil {
			b.Fatal(err)
		}
		delBin10k = append(delBin10k, ms(d)...)
	}

	// Remove all 10,000 with one apply, then take l3iso down.
	applyGone = ms(in.apply(0))
	_, d, err = in.l3iso("down")
	if err != nil {
		b.Fatal(err)
	}
	down = ms(d)

	type row struct {
		key, label string
		s          series
		target     string
	}
	rows := []row{
		{"up", "l3iso up", ms(in.up), ""},
		{"exec_nsenter", "nsenter + true (process start)", nsenter, ""},
		{"exec_baseline", "nsenter + l3iso --help (process start)", execBase, ""},
		{"add_binary", fmt.Sprintf("container add, binary (%d adds, 0→%d registered)", adds, 2*adds), addBin, "≤ 1 ms"},
		{"add_inprocess", fmt.Sprintf("control.Add in process (%d adds)", adds), addProc, "≤ 1 ms"},
		{"open_inprocess", "control.Open (exclusive) in process", openProc, ""},
		{"apply_10000", "apply 10,000 containers (from 0)", apply10k, "≤ 100 ms"},
		{"apply_10000_unchanged", "apply the same 10,000 again (no change)", applySame, ""},
		{"add_binary_at_10000", "container add, binary, next to 10,000", addBin10k, "≤ 1 ms"},
		{"add_inprocess_at_10000", "control.Add in process, next to 10,000", addProc10k, "≤ 1 ms"},
		{"del_binary_at_10000", "container del, binary, next to 10,000", delBin10k, ""},
		{"apply_remove_10000", "apply an empty policy (removes 10,000)", applyGone, ""},
		{"down", "l3iso down (no containers left)", down, ""},
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ControlPlane: %s\n", machine())
	fmt.Fprintln(tw, "operation\tms median (min–max)\tn\ttarget")
	for _, r := range rows {
		t := r.target
		if t == "" {
			t = "-"
		}
		fig := "failed"
		if len(r.s) > 0 {
			fig = r.s.fmtRange("%.2f")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", r.label, fig, len(r.s), t)
	}
	fmt.Fprintln(tw)
	tw.Flush()
	say("%s", sb.String())

	b.ReportMetric(0, "ns/op")
	for _, r := range rows {
		if len(r.s) > 0 {
			b.ReportMetric(r.s.median(), "ms/"+r.key)
		}
	}
	failed := 0
	for _, t := range tries {
		if t.err != nil {
			failed++
		}
	}
	b.ReportMetric(float64(failed), "apply_10000_failed_attempts")
}

// addInProcess adds containers NAME%03d for i in [from, to] with addresses
// base+i by calling control.Add from a child in the installation's netns.
func addInProcess(b *testing.B, in *install, prefix string, base netip.Addr, from, to int) addResult {
	b.Helper()
	var specs []addSpec
	for i := from; i <= to; i++ {
		specs = append(specs, addSpec{Name: fmt.Sprintf("%s%03d", prefix, i), Addr: nthAddr(base, i).String()})
	}
	names, err := json.Marshal(specs)
	if err != nil {
		b.Fatal(err)
	}
	var res addResult
	if err := child(b, "", in.netns, &res, envChild+"=add", envBPFFS+"="+in.bpffs, envNames+"="+string(names)); err != nil {
		b.Fatal(err)
	}
	return res
}
