package engine

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestSeries(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name             string
		s                Series
		median, min, max float64
	}{
		{"odd", Series{3, 1, 2}, 2, 1, 3},
		{"even", Series{4, 1, 3, 2}, 2.5, 1, 4},
		{"a failed round is left out", Series{1, nan, 3}, 2, 1, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.Median(); got != tt.median {
				t.Errorf("Median = %v, want %v", got, tt.median)
			}
			if got := tt.s.Min(); got != tt.min {
				t.Errorf("Min = %v, want %v", got, tt.min)
			}
			if got := tt.s.Max(); got != tt.max {
				t.Errorf("Max = %v, want %v", got, tt.max)
			}
		})
	}
	if !math.IsNaN(Series{}.Median()) {
		t.Error("median of nothing must be NaN (null in JSON), not 0")
	}
}

// Ratios are taken round by round, then their median: not the ratio of
// the medians.
func TestRatiosPerRound(t *testing.T) {
	a := Series{10, 20, 30}
	b := Series{10, 40, 10}
	r := Ratios(a, b)
	if want := (Series{1, 0.5, 3}); !slices.Equal(r, want) {
		t.Fatalf("Ratios = %v, want %v", r, want)
	}
	if got := r.Median(); got != 1 {
		t.Errorf("median of per-round ratios = %v, want 1 (the ratio of medians would be %v)", got, a.Median()/b.Median())
	}
	r = Ratios(Series{1, 2}, Series{math.NaN(), 0})
	if !math.IsNaN(r[0]) || !math.IsNaN(r[1]) {
		t.Errorf("a missing round or a zero must give NaN, got %v", r)
	}
}

// fixture is a run in which direct is clearly faster than bridge, shared
// overlaps loopback, and bridge_ct was not measured; bcast_fanout ran in
// bridge and direct with 100 containers.
func fixture() *Report {
	m := Measurements{}
	set := func(c, w string, n int, v ...float64) { m[Key{c, w, n}] = v }
	for _, w := range []string{UDPPPS, TCPRR, TCPCRR, TCPGbps, TCPRRP99, tcpRRP50, tcpRRP999} {
		set(Loopback, w, 1, 100, 110, 90, 100, 105)
		set(Shared, w, 1, 98, 109, 91, 97, 104)
		set(Bridge, w, 1, 60, 66, 54, 60, 63)
		set(Routed, w, 1, 70, 77, 63, 70, 73)
		set(Direct, w, 1, 92, 101, 83, 92, 96)
	}
	set(Direct, UDPPPS, 1000, 91, 100, 84, 92, 95)
	set(Bridge, BcastFanout, 100, 10, 11, 9, 10, 12)
	set(Direct, BcastFanout, 100, 120, 130, 110, 125, 118)
	set(Bridge, BcastCPUNs, 100, 200000, 210000, 190000, 205000, 180000)
	set(Direct, BcastCPUNs, 100, 15000, 16000, 14000, 21000, 15500)
	set(Bridge, bcastBalance, 100, 1, 0.99, 0.98, 1, 0.97)
	set(Direct, bcastBalance, 100, 0.95, 0.99, 0.9, 1, 0.97)
	set(Direct, bcastMachine, 100, 20000, 21000, 19000, 30000, 20500)
	return Build(m, 5, Machine{CPUs: 2}, map[string]string{BcastFanout + " in " + Routed: "no broadcasts", BridgeCT: "no nft"})
}

func find(t *testing.T, rs []Result, config, workload string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Config == config && r.Workload == workload {
			return r
		}
	}
	t.Fatalf("no result for %s %s", config, workload)
	return Result{}
}

func TestBuild(t *testing.T) {
	r := fixture()
	d := find(t, r.Results, Direct, UDPPPS)
	if *d.Median != 92 || *d.Min != 83 || *d.Max != 101 || d.Unit != "pps" {
		t.Errorf("direct udp_pps = %v (%v–%v) %s, want 92 (83–101) pps", *d.Median, *d.Min, *d.Max, d.Unit)
	}
	// Per round: 92/100, 101/110, 83/90, 92/100, 96/105 → median 0.92.
	if math.Abs(*d.VsLoopback-0.92) > 1e-9 {
		t.Errorf("direct vs_loopback = %v, want 0.92", *d.VsLoopback)
	}
	if math.Abs(*d.VsBridge-92.0/60) > 0.01 {
		t.Errorf("direct vs_bridge = %v, want ~1.53", *d.VsBridge)
	}
	if b := find(t, r.Results, BridgeCT, UDPPPS); b.Median != nil || b.VsLoopback != nil {
		t.Errorf("unmeasured bridge_ct must be null, got %+v", b)
	}
	if len(r.Scaling) != 2 || r.Scaling[1].Containers != 1000 || r.Scaling[1].DifferenceShown || *r.Scaling[1].Vs1Low > 1 || *r.Scaling[1].Vs1High < 1 {
		t.Errorf("scaling = %+v, want direct udp_pps at 1 and 1000, no difference shown (bcast_fanout is no scaling figure)", r.Scaling)
	}
	// bcast_fanout's main figures are those of its 100-container
	// installations; loopback has none, so vs_loopback is null.
	bf := find(t, r.Results, Direct, BcastFanout)
	if bf.Median == nil || *bf.Median != 120 || bf.Unit != "deliveries/s" || bf.VsLoopback != nil || bf.VsBridge == nil || *bf.VsBridge != 12 {
		t.Errorf("direct bcast_fanout = %+v, want 120 deliveries/s, 12× bridge, no vs_loopback", bf)
	}
	if rt := find(t, r.Results, Routed, BcastFanout); rt.Median != nil {
		t.Errorf("routed bcast_fanout must be null, got %+v", rt)
	}
	if f := r.Fanout; f == nil || f.Containers != 100 || f.Listening != 2 || f.Balance[Direct] != 0.9 || f.MachineCPUNs[Direct] != 20500 {
		t.Errorf("Fanout = %+v, want 100 containers, 2 listening, direct balance 0.9, machine 20500 ns", r.Fanout)
	}
	if !lowerIsBetter(BcastCPUNs) || lowerIsBetter(BcastFanout) {
		t.Error("bcast_cpu_ns is a cost (lower is better), bcast_fanout a rate")
	}

	var md bytes.Buffer
	if err := r.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// 5 rounds: the interval of the median is the per-round ratios' range.
		"| udp_pps | shared | 98 (91–109) pps | 0.99× [0.97–1.01] (no difference shown) |", // the interval holds 1
		"| udp_pps | direct | 92 (83–101) pps | **0.92×** [0.91–0.92] | **1.53×** [1.52–1.54] |",
		"| udp_pps | bridge_ct | not available |",
		"| direct / bridge in udp_pps ≥ 1.25 | 1.533 [1.524–1.537] | met, shown |",
		"| direct / loopback in udp_pps ≥ 0.90 | 0.920 [0.914–0.922] | met, shown |",
		"| shared / loopback (outside l3iso) in tcp_crr ≥ 0.95 | 0.990 [0.970–1.011] | met, shown |",
		"| direct ×1,000 / direct in udp_pps ≥ 0.97: 1,000 containers registered against 1 | 0.990 [0.989–1.012] | met, shown |",
		"| shared / hook_floor in udp_pps ≥ 0.97: l3iso's socket and skb programs against do-nothing programs at the same hooks | – | not measured |",
		"- bcast_fanout in routed: no broadcasts",
		// Latency: higher is worse, and the interval lies above 1.
		"| direct / bridge in tcp_rr_p99_us ≤ 1.00: direct's p99 no worse than bridge's (a latency: lower is better) | 1.533 [1.524–1.537] | missed, shown |",
		"| bcast_fanout | loopback | not available | – | – |",
		"| bcast_fanout | direct | 120 (110–130) deliveries/s | – | **12.00×** [9.83–12.50] |",
		"| bcast_cpu_ns | direct | 15.5k (14.0k–21.0k) ns | – | **0.08×** [0.07–0.10] |",
		// Per round bridge / direct: 13.3, 13.1, 13.6, 9.8, 11.6: the
		// interval reaches below 10.
		"| bridge / direct in bcast_cpu_ns ≥ 10.00: direct 10× cheaper per broadcast datagram (100 containers, 2 listening) | 13.125 [9.762–13.571] | met by the median, not shown |",
		"of which 2 listen (a UDP socket on 0.0.0.0:7400)",
		"| direct / bridge in udp_pps | 5 | 1.533 [1.524–1.537] | ±0.4 % | 1.524–1.537 |",
		"| direct ×1000 / direct in udp_pps | 5 | 0.990 [0.989–1.012] | ±1.2 % | 0.989–1.012 |",
		"Widths reached: ±0.4 % to ±1.2 %",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md.String())
		}
	}
	var svg bytes.Buffer
	if err := r.WriteSVG(&svg); err != nil || !strings.HasPrefix(svg.String(), "<svg") || !strings.Contains(svg.String(), "direct udp_pps: 0.920× loopback") ||
		!strings.Contains(svg.String(), "15.5k ns — 13.1× cheaper than bridge") {
		t.Errorf("SVG: %v\n%s", err, svg.String())
	}
}

// Without bcast_fanout (--no-bcast) its figures are null, there is no
// bcast section, and its target is "not measured".
func TestBuildWithoutFanout(t *testing.T) {
	m := Measurements{}
	for _, c := range []string{Loopback, Bridge, Direct} {
		m[Key{c, UDPPPS, 1}] = Series{1, 2, 3}
	}
	r := Build(m, 3, Machine{}, map[string]string{BcastFanout: "left out"})
	if r.Fanout != nil {
		t.Errorf("Fanout = %+v, want nil", r.Fanout)
	}
	if b := find(t, r.Results, Direct, BcastCPUNs); b.Median != nil {
		t.Errorf("bcast_cpu_ns = %+v, want null", b)
	}
	found := false
	for _, tg := range r.Targets {
		if strings.Contains(tg.What, "bcast_cpu_ns") {
			found = true
			if tg.Verdict != NotMeasured || tg.Ratio.Measured() {
				t.Errorf("target %+v, want not measured", tg)
			}
		}
	}
	if !found {
		t.Error("no bcast_cpu_ns target")
	}
	var svg bytes.Buffer
	if err := r.WriteSVG(&svg); err != nil || strings.Contains(svg.String(), "bcast_cpu_ns") {
		t.Errorf("SVG without bcast figures: %v, has a bcast panel: %v", err, strings.Contains(svg.String(), "bcast_cpu_ns"))
	}
}

// The -o json shape is a documented contract: exactly these keys, every
// configuration × workload, nulls for what was not measured.
func TestStableJSONShape(t *testing.T) {
	var buf bytes.Buffer
	if err := fixture().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(buf.Bytes(), &top); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(mapKeysOf(top)); !slices.Equal(keys, []string{"machine", "ratios", "results", "rounds", "statistics", "target_rounds"}) {
		t.Fatalf("top-level keys = %v, want machine, ratios, results, rounds, statistics, target_rounds", keys)
	}
	// The intervals can be recomputed from the JSON alone: the method and
	// seed, and each ratio's per-round ratios.
	var st Statistics
	if err := json.Unmarshal(top["statistics"], &st); err != nil || st.Seed != Seed || st.Resamples != Resamples || st.Confidence != Confidence || st.Method == "" {
		t.Errorf("statistics = %+v (%v), want the method, seed %d, %d resamples at %v", st, err, Seed, Resamples, Confidence)
	}
	var ratios []struct {
		What  string `json:"what"`
		Of    Key    `json:"of"`
		Ratio struct {
			PerRound []*float64 `json:"per_round"`
			Median   *float64   `json:"median"`
			Low      *float64   `json:"ci_low"`
			High     *float64   `json:"ci_high"`
			Min      *float64   `json:"min"`
			Max      *float64   `json:"max"`
		} `json:"ratio"`
		Verdict string `json:"verdict"`
	}
	if err := json.Unmarshal(top["ratios"], &ratios); err != nil {
		t.Fatal(err)
	}
	recomputed := 0
	for _, x := range ratios {
		if x.Ratio.Median == nil {
			if x.Verdict != NotMeasured {
				t.Errorf("%s: no median, verdict %q", x.What, x.Verdict)
			}
			continue
		}
		var pr Series
		for _, v := range x.Ratio.PerRound {
			pr = append(pr, *v)
		}
		lo, hi := pr.MedianCI()
		if lo != *x.Ratio.Low || hi != *x.Ratio.High || pr.Min() != *x.Ratio.Min || pr.Max() != *x.Ratio.Max || pr.Median() != *x.Ratio.Median {
			t.Errorf("%s: JSON says %v [%v–%v] (%v–%v); recomputed from its per-round ratios %v [%v–%v] (%v–%v)", x.What,
				*x.Ratio.Median, *x.Ratio.Low, *x.Ratio.High, *x.Ratio.Min, *x.Ratio.Max, pr.Median(), lo, hi, pr.Min(), pr.Max())
		}
		recomputed++
	}
	if recomputed < 5 {
		t.Errorf("only %d ratios with figures in the JSON", recomputed)
	}
	var rounds int
	json.Unmarshal(top["rounds"], &rounds)
	if rounds != 5 {
		t.Errorf("rounds = %d, want 5", rounds)
	}
	var results []map[string]any
	if err := json.Unmarshal(top["results"], &results); err != nil {
		t.Fatal(err)
	}
	if len(results) != len(Configs)*len(Workloads) {
		t.Fatalf("%d results, want %d (every config × workload)", len(results), len(Configs)*len(Workloads))
	}
	want := []string{"config", "max", "median", "min", "unit", "vs_bridge", "vs_loopback", "workload"}
	seen := map[string]bool{}
	for _, r := range results {
		if keys := slices.Sorted(mapKeysOf(r)); !slices.Equal(keys, want) {
			t.Fatalf("result keys = %v, want %v", keys, want)
		}
		seen[r["config"].(string)+"/"+r["workload"].(string)] = true
		if r["workload"] == BcastFanout && r["config"] == Direct && (r["median"] == nil || r["unit"] != "deliveries/s") {
			t.Errorf("direct bcast_fanout: %v, want a figure in deliveries/s", r)
		}
		if r["workload"] == BcastCPUNs && r["config"] == Loopback && r["median"] != nil {
			t.Errorf("loopback bcast_cpu_ns must be null (not measured): %v", r)
		}
	}
	for _, c := range []string{"loopback", "shared", "bridge", "bridge_ct", "routed", "direct"} {
		for _, w := range []string{"udp_pps", "tcp_rr", "tcp_rr_p99_us", "tcp_crr", "tcp_gbps", "bcast_fanout", "bcast_cpu_ns"} {
			if !seen[c+"/"+w] {
				t.Errorf("no result for %s/%s", c, w)
			}
		}
	}
}

func mapKeysOf[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// With another number of containers than the target's 100
// (--bcast-containers), the broadcast ratio is a reference, not a verdict.
func TestBuildFanoutOtherCount(t *testing.T) {
	m := Measurements{}
	m[Key{Bridge, BcastCPUNs, 20}] = Series{30000, 31000, 29000}
	m[Key{Direct, BcastCPUNs, 20}] = Series{10000, 10000, 10000}
	m[Key{Bridge, BcastFanout, 20}] = Series{10, 11, 9}
	m[Key{Direct, BcastFanout, 20}] = Series{30, 33, 27}
	r := Build(m, 3, Machine{}, nil)
	for _, tg := range r.Targets {
		if strings.Contains(tg.What, "bcast_cpu_ns") {
			if !strings.Contains(tg.What, "20 containers") || tg.Verdict != "reference" || !strings.Contains(tg.Note, "set at 100 containers") {
				t.Errorf("target %+v, want a reference at 20 containers that says where the target is set", tg)
			}
			if math.Abs(tg.Ratio.Median-3) > 1e-9 {
				t.Errorf("ratio %v, want 3", tg.Ratio)
			}
			return
		}
	}
	t.Error("no bcast_cpu_ns target")
}
