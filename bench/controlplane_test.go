package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// BenchmarkControlPlane times l3iso's control plane in one installation
// (its own netns, cgroup root and bpffs directory), against issue 2's
// targets — `container add` in shared mode ≤ 1 ms each, `apply` of a
// 10,000-container policy ≤ 100 ms — and against baselines measured in the
// same run:
//
//   - process start: `nsenter … true` and `nsenter … l3iso --help`;
//   - `l3iso container add` in shared mode, as the operator runs it (one
//     process per add, through nsenter), and control.Add in process, from a
//     child in the netns — next to 1 container, and next to 10,000; binary
//     and in-process adds alternate in blocks so both see the same number
//     of containers already there;
//   - `l3iso apply -f` of a 10,000-container policy from 0, of the same
//     policy again (nothing changes), and of policies that change a few
//     containers (some removed, some added, some modified: the common case),
//     with the steps of those applies (L3ISO_TRACE);
//   - `container del` next to 10,000, an apply that removes all 10,000, and
//     `down`;
//   - the kernel's own cost of what l3iso makes per container (an IPv6 /128
//     on lo, an IPv4 local route, a cgroup), next to 1,000 and 10,000 of
//     them (kernelfloor_test.go): the floor under `apply` from 0.
func BenchmarkControlPlane(b *testing.B) {
	w := newWorld(b)
	in := w.newInstall("cp")
	adds, bigAdds, fewRounds := 20, 10, 3
	if testing.Short() {
		adds, bigAdds, fewRounds = 10, 5, 2
	}
	const block = 5
	const changes = 5 // per kind, in each few-changes apply

	// The operations change the installation (it ends up down), so they
	// run once per call, whatever b.N is: use -benchtime=1x.
	var (
		nsenter, execBase        series
		addBin1, addProc1, open1 series
		apply10k, applySame      series
		applyFew                 series
		addBin10k, addProc10k    series
		addProcHost10k           series
		open10k, delBin10k       series
		applyGone, down          series
		fewPhases                = map[string]series{}
		fewPhaseOrder            []string
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

	// Adds next to 1 (to 1 + 2×adds) containers.
	in.apply(1)
	small := netip.MustParseAddr("10.82.0.0")
	for k := 0; k < adds; k += block {
		for j := k + 1; j <= k+block; j++ {
			_, d, err := in.l3iso("container", "add", fmt.Sprintf("b%03d", j), "--addr", nthAddr(small, 2*j).String())
			if err != nil {
				b.Fatal(err)
			}
			addBin1 = append(addBin1, ms(d)...)
		}
		res := addInProcess(b, in, "p", small, k+1, k+block)
		open1 = append(open1, nsToMs([]int64{res.OpenNs})...)
		addProc1 = append(addProc1, nsToMs(res.AddNs)...)
	}

	// From nothing to the 10,000-container policy, then again unchanged.
	in.apply(0)
	tries := in.applyMany(10_000)
	if d := report(b, "apply of 10,000 containers", tries); d > 0 {
		apply10k = ms(d)
	}
	full := in.policyFile(10_000)
	for range 3 {
		_, d, err := in.l3iso("apply", "-f", full)
		if err != nil {
			b.Fatal(err)
		}
		applySame = append(applySame, ms(d)...)
	}

	// A few changes, back and forth: the common case.
	few := in.fewChangesFile(10_000, changes)
	traceLine := regexp.MustCompile(`(?m)^l3iso trace: apply: (.+?)\s+([0-9.]+) ms$`)
	for range fewRounds {
		for _, f := range []string{few, full} {
			out, d, err := in.l3isoEnv([]string{"L3ISO_TRACE=1"}, "apply", "-f", f)
			if err != nil {
				b.Fatal(err)
			}
			applyFew = append(applyFew, ms(d)...)
			for _, m := range traceLine.FindAllStringSubmatch(out, -1) {
				v, _ := strconv.ParseFloat(m[2], 64)
				if _, ok := fewPhases[m[1]]; !ok {
					fewPhaseOrder = append(fewPhaseOrder, m[1])
				}
				fewPhases[m[1]] = append(fewPhases[m[1]], v)
			}
		}
	}

	// Add and delete next to 10,000 containers.
	x := netip.MustParseAddr("10.84.0.0")
	for k := 0; k < bigAdds; k += block {
		for j := k + 1; j <= k+block; j++ {
			_, d, err := in.l3iso("container", "add", fmt.Sprintf("x%03d", j), "--addr", nthAddr(x, 2*j).String())
			if err != nil {
				b.Fatal(err)
			}
			addBin10k = append(addBin10k, ms(d)...)
		}
		res := addInProcess(b, in, "y", x, k+1, k+block)
		open10k = append(open10k, nsToMs([]int64{res.OpenNs})...)
		addProc10k = append(addProc10k, nsToMs(res.AddNs)...)
		// The same without a private IPv6 loopback (loopback: host): what
		// the kernel's IPv6 address handling adds next to 10,000.
		res = addInProcess(b, in, "z", netip.MustParseAddr("10.85.0.0"), k+1, k+block, "host")
		addProcHost10k = append(addProcHost10k, nsToMs(res.AddNs)...)
	}
	for j := 1; j <= 5; j++ {
		_, d, err := in.l3iso("container", "del", fmt.Sprintf("x%03d", j))
		if err != nil {
			b.Fatal(err)
		}
		delBin10k = append(delBin10k, ms(d)...)
	}

	// Remove all 10,000 with one apply, then take l3iso down.
	applyGone = ms(in.apply(0))
	_, d, err := in.l3iso("down")
	if err != nil {
		b.Fatal(err)
	}
	down = ms(d)

	// The kernel's part, alone, after everything else.
	fl := measureFloor(b, w)

	type row struct {
		key, label string
		s          series
		target     string
	}
	rows := []row{
		{"up", "l3iso up", ms(in.up), ""},
		{"exec_nsenter", "nsenter + true (process start)", nsenter, ""},
		{"exec_baseline", "nsenter + l3iso --help (process start + l3iso's init)", execBase, ""},
		{"add_binary", fmt.Sprintf("container add, binary, next to 1–%d", 1+2*adds), addBin1, "≤ 1 ms"},
		{"add_inprocess", fmt.Sprintf("control.Add in process, next to 1–%d", 1+2*adds), addProc1, "≤ 1 ms"},
		{"open_inprocess", fmt.Sprintf("control.Open (exclusive) in process, next to 1–%d", 1+2*adds), open1, ""},
		{"apply_10000", "apply 10,000 containers, from 0", apply10k, "≤ 100 ms"},
		{"apply_10000_unchanged", "apply the same 10,000 again (no change)", applySame, "≤ 100 ms"},
		{"apply_10000_few", fmt.Sprintf("apply 10,000 with %d changes (%d added, %d removed, %d modified)", 3*changes, changes, changes, changes), applyFew, "≤ 100 ms"},
	}
	for _, p := range fewPhaseOrder {
		rows = append(rows, row{"apply_few_" + phaseKey(p), "    of which (L3ISO_TRACE): " + p, fewPhases[p], ""})
	}
	rows = append(rows,
		row{"add_binary_at_10000", "container add, binary, next to 10,000", addBin10k, "≤ 1 ms"},
		row{"add_inprocess_at_10000", "control.Add in process, next to 10,000", addProc10k, "≤ 1 ms"},
		row{"add_inprocess_host_at_10000", "control.Add in process, next to 10,000, loopback: host (no IPv6 /128)", addProcHost10k, "≤ 1 ms"},
		row{"open_inprocess_at_10000", "control.Open (exclusive) in process, next to 10,000", open10k, ""},
		row{"del_binary_at_10000", "container del, binary, next to 10,000", delBin10k, ""},
		row{"apply_remove_10000", "apply an empty policy (removes 10,000)", applyGone, ""},
		row{"down", "l3iso down (no containers left)", down, ""},
	)

	// Kernel baseline: what 10,000 containers' host state costs at least.
	const n = 10_000
	floorAdd := n * (fl.Mkdir + fl.V4AddAt1k/2 + fl.V4AddAt10k/2 + fl.V6AddAt1k/2 + fl.V6AddAt10k/2) / 1000
	floorDel := n * (fl.Rmdir + fl.V4DelAt10k + fl.V6DelAt1k/2 + fl.V6DelAt10k/2) / 1000
	type ratio struct {
		key, label string
		v          float64
		note       string
	}
	ratiosOut := []ratio{
		{"ratio_add_binary_10000_vs_1", "container add, binary: next to 10,000 / next to 1", addBin10k.median() / addBin1.median(), "1 = add costs O(1) in the containers there"},
		{"ratio_add_inprocess_10000_vs_1", "control.Add in process: next to 10,000 / next to 1", addProc10k.median() / addProc1.median(), "idem"},
		{"ratio_add_binary_vs_exec", "container add, binary / nsenter + l3iso --help", addBin1.median() / execBase.median(), "how much of an add is process start"},
		{"ratio_apply_few_vs_unchanged", "apply with a few changes / apply unchanged", applyFew.median() / applySame.median(), ""},
		{"ratio_apply_10000_vs_floor", fmt.Sprintf("apply 10,000 from 0 / kernel floor (%.0f ms)", floorAdd), apply10k.median() / floorAdd, "floor: 10,000 × (cgroup mkdir + IPv4 local route + IPv6 /128), per-item costs below"},
		{"ratio_apply_remove_vs_floor", fmt.Sprintf("apply removing 10,000 / kernel floor (%.0f ms)", floorDel), applyGone.median() / floorDel, "floor: 10,000 × (rmdir + route delete + IPv6 /128 delete)"},
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
	fmt.Fprintln(tw, "ratio (medians, same run)\tvalue\tnote")
	for _, r := range ratiosOut {
		fmt.Fprintf(tw, "%s\t%.2f\t%s\n", r.label, r.v, r.note)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "kernel alone, µs per item (batched rtnetlink, scratch netns)\tnext to ~1,000\tnext to ~10,000")
	fmt.Fprintf(tw, "IPv6 /128 on lo, nodad noprefixroute: add\t%.1f\t%.1f\n", fl.V6AddAt1k, fl.V6AddAt10k)
	fmt.Fprintf(tw, "IPv6 /128 on lo: delete\t%.1f\t%.1f\n", fl.V6DelAt1k, fl.V6DelAt10k)
	fmt.Fprintf(tw, "IPv4 local route in table local: add\t%.1f\t%.1f\n", fl.V4AddAt1k, fl.V4AddAt10k)
	fmt.Fprintf(tw, "IPv4 local route: delete\t-\t%.1f\n", fl.V4DelAt10k)
	fmt.Fprintf(tw, "cgroup mkdir / rmdir (1,000)\t%.1f / %.1f\t-\n", fl.Mkdir, fl.Rmdir)
	fmt.Fprintln(tw)
	tw.Flush()
	say("%s", sb.String())

	b.ReportMetric(0, "ns/op")
	for _, r := range rows {
		if len(r.s) > 0 {
			b.ReportMetric(r.s.median(), "ms/"+r.key)
		}
	}
	for _, r := range ratiosOut {
		b.ReportMetric(r.v, r.key)
	}
	b.ReportMetric(fl.V6AddAt1k, "us/kernel_v6_add_at_1000")
	b.ReportMetric(fl.V6AddAt10k, "us/kernel_v6_add_at_10000")
	b.ReportMetric(fl.V6DelAt10k, "us/kernel_v6_del_at_10000")
	failed := 0
	for _, t := range tries {
		if t.err != nil {
			failed++
		}
	}
	b.ReportMetric(float64(failed), "apply_10000_failed_attempts")
}

// phaseKey turns a trace step's name into a metric name.
func phaseKey(s string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(s), "_"), "_")
}

// fewChangesFile writes the n-container policy of policyFile with 3×k
// changes: c00001…k removed, k containers nNNNNN added, and k modified
// (c(k+1)…c(2k) own one more address).
func (in *install) fewChangesFile(n, k int) string {
	in.w.tb.Helper()
	var b bytes.Buffer
	b.WriteString("# generated by bench: the n-container policy with a few changes\ncontainers:\n")
	for i := 1; i <= n; i++ {
		switch {
		case i <= k:
		case i <= 2*k:
			fmt.Fprintf(&b, "  %s:\n    addresses: [%s, %s]\n", containerName(i), containerAddr(i), nthAddr(netip.MustParseAddr("10.87.0.0"), i))
		default:
			fmt.Fprintf(&b, "  %s:\n    addresses: [%s]\n", containerName(i), containerAddr(i))
		}
	}
	for i := 1; i <= k; i++ {
		fmt.Fprintf(&b, "  n%05d:\n    addresses: [%s]\n", i, nthAddr(netip.MustParseAddr("10.86.0.0"), i))
	}
	p := filepath.Join(in.w.tb.TempDir(), fmt.Sprintf("policy-%d-few.yaml", n))
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		in.w.tb.Fatal(err)
	}
	return p
}

// addInProcess adds containers NAME%03d for i in [from, to] with addresses
// base+2i+1 (the binary's adds take base+2i), and the loopback setting given
// (default: isolated), by calling control.Add from a child in the
// installation's netns.
func addInProcess(b *testing.B, in *install, prefix string, base netip.Addr, from, to int, loopback ...string) addResult {
	b.Helper()
	var specs []addSpec
	for i := from; i <= to; i++ {
		s := addSpec{Name: fmt.Sprintf("%s%03d", prefix, i), Addr: nthAddr(base, 2*i+1).String()}
		if len(loopback) > 0 {
			s.Loopback = loopback[0]
		}
		specs = append(specs, s)
	}
	req, err := json.Marshal(addRequest{BPFFS: in.bpffs, Add: specs})
	if err != nil {
		b.Fatal(err)
	}
	var res addResult
	if err := child(b, roleAdd, "", in.netns, string(req), &res); err != nil {
		b.Fatal(err)
	}
	return res
}
