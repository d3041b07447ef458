package engine

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
)

// Configuration names: the stable names of the JSON report.
const (
	Loopback  = "loopback"   // client and server in one netns, over lo, no l3iso program runs
	Shared    = "shared"     // client and server in one shared-mode container, over lo
	HookFloor = "hook_floor" // as loopback, in a cgroup with a do-nothing program at each of l3iso's socket hooks
	Bridge    = "bridge"     // netns container, l3iso --delivery bridge, no netfilter rules
	BridgeCT  = "bridge_ct"  // the same plus an nftables conntrack rule (br_netfilter is on): Docker-like
	Routed    = "routed"     // netns container, l3iso --delivery routed
	Direct    = "direct"     // netns container, l3iso --delivery direct (TC + bpf_redirect_peer)
	BarePeer  = "bare_peer"  // the same path with a bare redirect_peer program and no l3iso program on it: the prototype
)

// Workload names: the stable names of the JSON report.
const (
	UDPPPS      = "udp_pps"       // 64-byte UDP datagrams received per second
	TCPRR       = "tcp_rr"        // 1-byte request/response transactions per second on one connection
	TCPRRP99    = "tcp_rr_p99_us" // 99th percentile of the tcp_rr transaction time
	TCPCRR      = "tcp_crr"       // connect, 1-byte request/response, close: per second
	TCPGbps     = "tcp_gbps"      // one TCP stream, Gbit/s received
	BcastFanout = "bcast_fanout"  // broadcast fan-out (issue 4): datagrams the listening containers received per second, summed
	BcastCPUNs  = "bcast_cpu_ns"  // CPU time of the sender and the softirq threads per broadcast that reached a listener's socket (lower is better)

	// Only in the Markdown table and the details file: the other tcp_rr
	// percentiles.
	tcpRRP50  = "tcp_rr_p50_us"
	tcpRRP999 = "tcp_rr_p99.9_us"
	// Only in the details: per round, the smaller of the two listeners'
	// receive rates divided by the larger (1: both got the same); and the
	// machine's busy CPU time (/proc/stat) per broadcast, which counts
	// whatever else runs on the machine too.
	bcastBalance = "bcast_listener_balance"
	bcastMachine = "bcast_machine_cpu_ns"
)

// Configs are the configurations in report order.
var Configs = []string{Loopback, Shared, HookFloor, Bridge, BridgeCT, Routed, Direct, BarePeer}

// Workloads are the workloads in report order.
var Workloads = []string{UDPPPS, TCPRR, TCPRRP99, TCPCRR, TCPGbps, BcastFanout, BcastCPUNs}

// fanoutWorkloads are measured in installations of their own, with
// FanoutContainers containers of which two listen, not with 1 container.
var fanoutWorkloads = map[string]bool{BcastFanout: true, BcastCPUNs: true, bcastBalance: true, bcastMachine: true}

// Units of the workloads.
var units = map[string]string{
	UDPPPS: "pps", TCPRR: "tps", TCPRRP99: "us", tcpRRP50: "us", tcpRRP999: "us",
	TCPCRR: "cps", TCPGbps: "Gbit/s", BcastFanout: "deliveries/s", BcastCPUNs: "ns", bcastBalance: "", bcastMachine: "ns",
}

// lowerIsBetter marks latency and cost figures: their ratios below 1 are
// the better ones.
func lowerIsBetter(workload string) bool {
	return strings.HasSuffix(workload, "_us") || strings.HasSuffix(workload, "_ns")
}

// Key names one measured figure: a workload in a configuration with a
// number of containers on the host (1 for the main comparison; 100 and
// 1,000 for the scaling runs; for bcast_fanout and bcast_cpu_ns the
// number of containers of their installations, 100 by default).
type Key struct {
	Config     string
	Workload   string
	Containers int
}

// Measurements are the per-round figures of a run.
type Measurements map[Key]Series

// Machine describes where the figures were taken.
type Machine struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu"`
	Kernel  string `json:"kernel"`
	OS      string `json:"os"`
	Go      string `json:"go"`
	Date    string `json:"date"`
	Load    string `json:"loadavg"`
	Pinning string `json:"pinning"`
}

// String is the machine line of the Markdown report.
func (m Machine) String() string {
	return fmt.Sprintf("%d vCPUs (%s), Linux %s, %s, %s, load average at start %s, %s",
		m.CPUs, m.CPU, m.Kernel, m.OS, m.Go, m.Load, m.Date)
}

// Result is one row of the stable JSON report. A figure that could not be
// measured (bridge_ct without nft; bcast_fanout in the configurations that
// deliver no broadcasts into containers) is null.
type Result struct {
	Config     string   `json:"config"`
	Workload   string   `json:"workload"`
	Median     *float64 `json:"median"`
	Min        *float64 `json:"min"`
	Max        *float64 `json:"max"`
	Unit       string   `json:"unit"`
	VsLoopback *float64 `json:"vs_loopback"`
	VsBridge   *float64 `json:"vs_bridge"`
}

// Stable is what `l3iso bench -o json` prints: the documented, stable
// shape. Everything else is in Report (the details file).
type Stable struct {
	Machine Machine  `json:"machine"`
	Rounds  int      `json:"rounds"`
	Results []Result `json:"results"`
}

// Scaling is one scaling figure: a workload with N containers on the host,
// and its per-round ratio to the same configuration with 1.
type Scaling struct {
	Config     string   `json:"config"`
	Containers int      `json:"containers"`
	Workload   string   `json:"workload"`
	Median     *float64 `json:"median"`
	Min        *float64 `json:"min"`
	Max        *float64 `json:"max"`
	Unit       string   `json:"unit"`
	Vs1        *float64 `json:"vs_1"`
	// DifferenceShown is false when the min–max range overlaps that of
	// the configuration with 1 container.
	DifferenceShown bool `json:"difference_shown"`
}

// Op is one control-plane operation, in milliseconds.
type Op struct {
	Operation string  `json:"operation"`
	N         int     `json:"n"`
	MedianMs  float64 `json:"median_ms"`
	MinMs     float64 `json:"min_ms"`
	MaxMs     float64 `json:"max_ms"`
}

// Cross is one figure measured with an outside tool (iperf3, sockperf),
// once per configuration after the rounds: a sanity check of the project's
// own load generator, not part of the statistics.
type Cross struct {
	Config   string  `json:"config"`
	Workload string  `json:"workload"`
	Tool     string  `json:"tool"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
}

// Target is one of the targets and whether this run met it.
type Target struct {
	What    string   `json:"what"`
	Ratio   *float64 `json:"ratio"`
	Verdict string   `json:"verdict"` // met, missed, not measured; reference for a figure with no target
	Note    string   `json:"note,omitempty"`
}

// Report is everything a run found. Stable() is its stable subset.
type Report struct {
	Machine      Machine   `json:"machine"`
	Rounds       int       `json:"rounds"`
	RunSeconds   float64   `json:"run_seconds"` // one run of one workload in one configuration
	Command      string    `json:"command"`
	Results      []Result  `json:"results"`
	Latency      []Result  `json:"tcp_rr_latency"` // p50, p99, p99.9
	Scaling      []Scaling `json:"scaling"`
	ControlPlane []Op      `json:"control_plane"`
	CrossCheck   []Cross   `json:"crosscheck"`
	Targets      []Target  `json:"targets"`
	Fanout       *Fanout   `json:"bcast,omitempty"`
	Unavailable  []string  `json:"unavailable"` // what was not measured, and why

	m       Measurements
	fanoutN int // containers of the bcast_fanout installations (0: none measured)
}

// Fanout describes the bcast_fanout runs (issue 4).
type Fanout struct {
	Containers  int    `json:"containers"`  // per installation
	Listening   int    `json:"listening"`   // of them, with a UDP socket on the wildcard and Port
	Destination string `json:"destination"` // where the outside host sends
	Port        int    `json:"port"`
	// Balance is, per configuration, the lowest per-round ratio of the
	// two listeners' receive rates (smaller / larger): 1 when both got
	// every broadcast the same.
	Balance map[string]float64 `json:"listener_balance"`
	// MachineCPUNs is, per configuration, the median over rounds of the
	// machine's busy CPU time (/proc/stat, all CPUs, 10 ms resolution) per
	// broadcast: bcast_cpu_ns plus whatever else ran on the machine.
	MachineCPUNs map[string]float64 `json:"machine_cpu_ns"`
	// Checks are what the dataplane's own counters said after the rounds:
	// proof that each path delivered the way it claims.
	Checks []string `json:"checks"`
}

// Stable returns the documented, stable part of the report.
func (r *Report) Stable() Stable {
	return Stable{Machine: r.Machine, Rounds: r.Rounds, Results: r.Results}
}

// num is v as a JSON number, or nil (null) for NaN.
func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// Build computes the report from the per-round measurements: medians with
// min–max, and ratios to loopback and to bridge computed per round, then
// their median. unavailable maps a configuration or workload that was not
// measured to the reason.
func Build(m Measurements, rounds int, machine Machine, unavailable map[string]string) *Report {
	r := &Report{Machine: machine, Rounds: rounds, m: m}
	for k := range m {
		if fanoutWorkloads[k.Workload] {
			r.fanoutN = max(r.fanoutN, k.Containers)
		}
	}
	for _, w := range Workloads {
		for _, c := range Configs {
			r.Results = append(r.Results, r.result(c, w))
		}
	}
	for _, w := range []string{tcpRRP50, TCPRRP99, tcpRRP999} {
		for _, c := range Configs {
			r.Latency = append(r.Latency, r.result(c, w))
		}
	}
	var scaled []Key
	for k := range m {
		if k.Containers != 1 && !fanoutWorkloads[k.Workload] {
			scaled = append(scaled, k)
		}
	}
	slices.SortFunc(scaled, func(a, b Key) int {
		if c := strings.Compare(a.Config, b.Config); c != 0 {
			return c
		}
		if c := slices.Index(Workloads, a.Workload) - slices.Index(Workloads, b.Workload); c != 0 {
			return c
		}
		return a.Containers - b.Containers
	})
	seen := map[Key]bool{}
	for _, k := range scaled {
		one := Key{k.Config, k.Workload, 1}
		if !seen[one] {
			seen[one] = true
			r.Scaling = append(r.Scaling, r.scaling(one))
		}
		r.Scaling = append(r.Scaling, r.scaling(k))
	}
	if r.fanoutN > 0 {
		r.Fanout = &Fanout{Containers: r.fanoutN, Listening: fanoutListeners, Destination: fanoutBcast.String(), Port: fanoutPort,
			Balance: map[string]float64{}, MachineCPUNs: map[string]float64{}}
		for _, c := range Configs {
			if v := r.series(c, bcastBalance, r.fanoutN).Min(); !math.IsNaN(v) {
				r.Fanout.Balance[c] = v
			}
			if v := r.series(c, bcastMachine, r.fanoutN).Median(); !math.IsNaN(v) {
				r.Fanout.MachineCPUNs[c] = v
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(unavailable)) {
		r.Unavailable = append(r.Unavailable, k+": "+unavailable[k])
	}
	r.Targets = r.targets()
	return r
}

func (r *Report) series(config, workload string, containers int) Series {
	return r.m[Key{config, workload, containers}]
}

// main is the key of a workload's main comparison in config: 1 container,
// or the bcast_fanout installations' count.
func (r *Report) main(config, workload string) Key {
	if fanoutWorkloads[workload] {
		return Key{config, workload, r.fanoutN}
	}
	return Key{config, workload, 1}
}

func (r *Report) result(config, workload string) Result {
	s := r.m[r.main(config, workload)]
	return Result{
		Config: config, Workload: workload, Unit: units[workload],
		Median: num(s.Median()), Min: num(s.Min()), Max: num(s.Max()),
		VsLoopback: num(Ratios(s, r.m[r.main(Loopback, workload)]).Median()),
		VsBridge:   num(Ratios(s, r.m[r.main(Bridge, workload)]).Median()),
	}
}

func (r *Report) scaling(k Key) Scaling {
	s, one := r.m[k], r.series(k.Config, k.Workload, 1)
	return Scaling{
		Config: k.Config, Containers: k.Containers, Workload: k.Workload, Unit: units[k.Workload],
		Median: num(s.Median()), Min: num(s.Min()), Max: num(s.Max()),
		Vs1:             num(Ratios(s, one).Median()),
		DifferenceShown: !Overlap(s, one),
	}
}

// ratio is the median per-round ratio of a to b and whether their ranges
// are apart (a difference is shown).
func (r *Report) ratio(a, b Key) (float64, bool) {
	sa, sb := r.m[a], r.m[b]
	return Ratios(sa, sb).Median(), !Overlap(sa, sb)
}

// targets evaluates the targets on this run.
func (r *Report) targets() []Target {
	k := func(c, w string, n int) Key { return Key{c, w, n} }
	var out []Target
	atLeast := func(what string, a, b Key, min float64) {
		v, shown := r.ratio(a, b)
		t := Target{What: what, Ratio: num(v)}
		switch {
		case math.IsNaN(v):
			t.Verdict = "not measured"
		case v >= min:
			t.Verdict = "met"
		default:
			t.Verdict = "missed"
		}
		if !math.IsNaN(v) && !shown {
			t.Note = fmt.Sprintf("min–max ranges of %s and %s overlap: no difference shown", a.Config, b.Config)
		}
		out = append(out, t)
	}
	atLeast("direct ≥ 0.90× loopback in udp_pps", k(Direct, UDPPPS, 1), k(Loopback, UDPPPS, 1), 0.90)
	atLeast("direct ≥ 1.25× bridge in udp_pps", k(Direct, UDPPPS, 1), k(Bridge, UDPPPS, 1), 1.25)
	atLeast("shared ≥ 0.97× loopback in udp_pps", k(Shared, UDPPPS, 1), k(Loopback, UDPPPS, 1), 0.97)
	atLeast("shared ≥ 0.95× loopback (outside l3iso) in tcp_crr", k(Shared, TCPCRR, 1), k(Loopback, TCPCRR, 1), 0.95)
	// Issue 4: the ratio is bridge's cost over direct's, so ≥ 10 is met.
	n := r.fanoutN
	if n == 0 {
		n = FanoutContainers
	}
	atLeast(fmt.Sprintf("direct ≥ 10× cheaper than bridge per broadcast datagram (bcast_cpu_ns, bridge / direct; %d containers, 2 listening)", n),
		k(Bridge, BcastCPUNs, n), k(Direct, BcastCPUNs, n), 10)
	if t := &out[len(out)-1]; n != FanoutContainers && t.Verdict != "not measured" {
		// The issue sets the target at 100 containers: elsewhere the
		// ratio says how the cost grows, not whether the target is met.
		t.Verdict = "reference"
		t.Note = fmt.Sprintf("the target is set at %d containers (--bcast-containers)", FanoutContainers)
	}

	// TCP_RR p99 no worse than bridge (issue 3): a higher p99 counts only
	// when the ranges are apart.
	v, shown := r.ratio(k(Direct, TCPRRP99, 1), k(Bridge, TCPRRP99, 1))
	t := Target{What: "direct tcp_rr p99 no worse than bridge", Ratio: num(v)}
	switch {
	case math.IsNaN(v):
		t.Verdict = "not measured"
	case v <= 1 || !shown:
		t.Verdict = "met"
		if v > 1 {
			t.Note = "median higher, but the min–max ranges overlap: no difference shown"
		}
	default:
		t.Verdict = "missed"
	}
	out = append(out, t)

	// No target: how much of shared's distance to loopback is l3iso's
	// work, against do-nothing programs at the same hooks in the same rounds.
	v, _ = r.ratio(k(Shared, UDPPPS, 1), k(HookFloor, UDPPPS, 1))
	fl := Target{What: "shared / hook_floor in udp_pps: l3iso's programs against do-nothing programs at the same hooks (no target)", Ratio: num(v), Verdict: "reference"}
	if math.IsNaN(v) {
		fl.Verdict = "not measured"
	}
	out = append(out, fl)

	// No target: how much of direct's distance to loopback is l3iso's
	// own, against the bare prototype of its path in the same rounds.
	v, _ = r.ratio(k(Direct, UDPPPS, 1), k(BarePeer, UDPPPS, 1))
	ref := Target{What: "direct / bare_peer in udp_pps: l3iso's programs against the bare redirect_peer prototype (no target)", Ratio: num(v), Verdict: "reference"}
	if math.IsNaN(v) {
		ref.Verdict = "not measured"
	}
	out = append(out, ref)

	for _, c := range []string{Direct, Shared} {
		for _, w := range []string{UDPPPS, TCPCRR} {
			a, b := k(c, w, 1000), k(c, w, 1)
			if _, ok := r.m[a]; !ok {
				continue
			}
			v, shown := r.ratio(a, b)
			t := Target{What: fmt.Sprintf("%s %s: 1,000 containers within 5%% of 1", c, w), Ratio: num(v)}
			switch {
			case math.IsNaN(v):
				t.Verdict = "not measured"
			case math.Abs(v-1) <= 0.05:
				t.Verdict = "met"
			default:
				t.Verdict = "missed"
			}
			if !math.IsNaN(v) && !shown {
				t.Note = "min–max ranges overlap: no difference shown"
			}
			out = append(out, t)
		}
	}
	return out
}

// WriteJSON writes the stable report (indented).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.Stable())
}

// WriteDetails writes the whole report as JSON: the stable part plus
// latency percentiles, scaling, control plane, cross-checks and targets.
func (r *Report) WriteDetails(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// fmtVal prints a figure with a precision that suits its unit.
func fmtVal(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case unit == "Gbit/s":
		return fmt.Sprintf("%.2f", v)
	case unit == "us":
		return fmt.Sprintf("%.0f", v)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func deref(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// fmtRatio prints a per-round ratio of a to b and says "no difference
// shown" when the min–max ranges of the two overlap.
func (r *Report) fmtRatio(a, b Key) string {
	if len(r.m[a].valid()) == 0 || len(r.m[b].valid()) == 0 {
		return "–"
	}
	if a.Config == b.Config && a.Containers == b.Containers {
		return "1"
	}
	v, shown := r.ratio(a, b)
	if math.IsNaN(v) {
		return "–"
	}
	rs := Ratios(r.m[a], r.m[b])
	if !shown {
		return fmt.Sprintf("%.2f× [%.2f–%.2f] (no difference shown)", v, rs.Min(), rs.Max())
	}
	return fmt.Sprintf("**%.2f×** [%.2f–%.2f]", v, rs.Min(), rs.Max())
}

// WriteMarkdown writes the report as Markdown tables.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s.\n\n", r.Machine)
	fmt.Fprintf(&b, "%d rounds, configurations interleaved round-robin (order rotated each round), %.2f s per run; "+
		"median (min–max) over rounds; ratios computed per round: median [min–max of the per-round ratios]. "+
		"**Bold** ratios: the min–max ranges of the two configurations are apart; otherwise \"no difference shown\". %s.\n\n",
		r.Rounds, r.RunSeconds, r.Machine.Pinning)

	cross := map[Key]Cross{}
	for _, c := range r.CrossCheck {
		cross[Key{c.Config, c.Workload, 1}] = c
	}
	b.WriteString("| workload | config | median (min–max) | vs loopback | vs bridge | cross-check |\n|---|---|---|---|---|---|\n")
	for _, w := range []string{UDPPPS, TCPRR, tcpRRP50, TCPRRP99, tcpRRP999, TCPCRR, TCPGbps, BcastFanout, BcastCPUNs} {
		for _, c := range Configs {
			k := r.main(c, w)
			s := r.m[k]
			unit := units[w]
			fig := "not available"
			if len(s.valid()) > 0 {
				fig = fmt.Sprintf("%s (%s–%s) %s", fmtVal(s.Median(), unit), fmtVal(s.Min(), unit), fmtVal(s.Max(), unit), unit)
			}
			x := ""
			if cc, ok := cross[k]; ok {
				x = fmt.Sprintf("%s %s %s", cc.Tool, fmtVal(cc.Value, cc.Unit), cc.Unit)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", w, c, fig,
				r.fmtRatio(k, r.main(Loopback, w)), r.fmtRatio(k, r.main(Bridge, w)), x)
		}
	}
	if f := r.Fanout; f != nil {
		fmt.Fprintf(&b, "\n**Broadcast fan-out** (bcast_fanout, bcast_cpu_ns): installations of their own with %d containers "+
			"(netns; shared: shared-mode) on %s/%d, of which %d listen (a UDP socket on 0.0.0.0:%d); the outside host sends "+
			"64-byte datagrams to %s:%d. bcast_fanout: datagrams received per second, summed over the listeners; "+
			"bcast_cpu_ns: CPU time of the sender and of the ksoftirqd threads — the delivery up to the listeners' "+
			"sockets runs there (softirq work in the sender's context) — per broadcast that reached a listener's socket "+
			"(received, or dropped there because its receive buffer was full); the listeners' receive calls are not "+
			"counted (lower is better; a ratio below 1 is cheaper).",
			f.Containers, fanoutBase, fanoutPrefix, f.Listening, f.Port, f.Destination, f.Port)
		if len(f.MachineCPUNs) > 0 {
			var m []string
			for _, c := range Configs {
				if v, ok := f.MachineCPUNs[c]; ok {
					m = append(m, fmt.Sprintf("%s %s", c, fmtVal(v, "ns")))
				}
			}
			fmt.Fprintf(&b, " The machine's busy time (/proc/stat, everything on it) per broadcast, median: %s ns.", strings.Join(m, ", "))
		}
		if len(f.Balance) > 0 {
			var bal []string
			for _, c := range Configs {
				if v, ok := f.Balance[c]; ok {
					bal = append(bal, fmt.Sprintf("%s %.2f", c, v))
				}
			}
			fmt.Fprintf(&b, " Listener balance (lowest per-round ratio of the two listeners' rates): %s.", strings.Join(bal, ", "))
		}
		b.WriteString("\n")
		if len(f.Checks) > 0 {
			b.WriteString("\nCounters after the rounds:\n\n")
			for _, c := range f.Checks {
				fmt.Fprintf(&b, "- %s\n", c)
			}
		}
	}
	if len(r.Scaling) > 0 {
		b.WriteString("\n**Scaling** — the same figures with N containers registered on the host " +
			"(the extra ones idle), measured in the same rounds:\n\n")
		b.WriteString("| config | workload | containers | median (min–max) | vs 1 container |\n|---|---|---|---|---|\n")
		for _, s := range r.Scaling {
			ratio := "1"
			if s.Median == nil {
				ratio = "–"
			} else if s.Containers != 1 {
				ratio = r.fmtRatio(Key{s.Config, s.Workload, s.Containers}, Key{s.Config, s.Workload, 1})
			}
			fig := "not available"
			if s.Median != nil {
				fig = fmt.Sprintf("%s (%s–%s) %s", fmtVal(*s.Median, s.Unit), fmtVal(deref(s.Min), s.Unit), fmtVal(deref(s.Max), s.Unit), s.Unit)
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", s.Config, s.Workload, s.Containers, fig, ratio)
		}
	}
	if len(r.ControlPlane) > 0 {
		b.WriteString("\n**Control plane** — the `l3iso` binary as an operator runs it (process start included), ms:\n\n")
		b.WriteString("| operation | n | median (min–max) ms |\n|---|---|---|\n")
		for _, o := range r.ControlPlane {
			fmt.Fprintf(&b, "| %s | %d | %.1f (%.1f–%.1f) |\n", o.Operation, o.N, o.MedianMs, o.MinMs, o.MaxMs)
		}
	}
	if len(r.Targets) > 0 {
		b.WriteString("\n**Targets**\n\n| target | ratio | verdict |\n|---|---|---|\n")
		for _, t := range r.Targets {
			ratio := "–"
			if t.Ratio != nil {
				ratio = fmt.Sprintf("%.3f", *t.Ratio)
			}
			v := t.Verdict
			if t.Note != "" {
				v += " — " + t.Note
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", t.What, ratio, v)
		}
	}
	if len(r.Unavailable) > 0 {
		b.WriteString("\nNot measured:\n\n")
		for _, u := range r.Unavailable {
			fmt.Fprintf(&b, "- %s\n", u)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
