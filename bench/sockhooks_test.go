package bench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/l3iso/l3iso/bench/engine"
	"github.com/l3iso/l3iso/internal/sockprobe"
)

// hookWorkload is one tight loop of real system calls: one of the engine
// client's loops.
type hookWorkload struct {
	name    string // engine.LoopBind, LoopConnect, LoopSendto
	counter string // the container counter each iteration bumps
	target  string // the target for container vs unmanaged
}

var hookWorkloads = []hookWorkload{
	{engine.LoopBind, "bind_allowed", "none stated"},
	{engine.LoopConnect, "source_rewritten", "≤ 1.05"},
	{engine.LoopSendto, "source_rewritten", "≤ 1.05"},
}

// hookBatch is the length of one batch.
const hookBatch = 100 * time.Millisecond

// Rounds per workload (full run, -short): in each round every
// configuration runs one batch, in an order rotated from round to round.
const hookRounds, hookRoundsShort = 40, 8

// hookConfig is where a workload runs: a cgroup and a netns.
type hookConfig struct {
	key   string // metric name part: container1, host10k, ...
	label string
	cg    string
	netns string
	addr  netip.Addr // what it binds, listens on, sends to
	in    *install   // for counters; nil outside l3iso
}

// BenchmarkSocketHooks measures the cost of l3iso's socket hooks.
//
// Two installations run side by side, each `l3iso up` in its own netns and
// attached at its own test cgroup: one with 1 container registered, one with
// 10,000 (`l3iso apply -f` of a generated policy). Each workload runs, in
// each installation's netns, in these places:
//
//	container  in <root>/l3iso/c00001: every hook applies, sources are rewritten
//	host       in <root>/<other>: a host process under l3iso's root (the hooks
//	           run and find no container; the host rules apply)
//	unmanaged  in a cgroup outside both roots: no l3iso program runs at all
//	floor      in a cgroup outside both roots with a do-nothing program at
//	           each of l3iso's attach points (newFloorCgroup), in the netns
//	           of the 1: what the hooks cost before any program does work
//	sockfloor  the same without the two packet (cgroup_skb) attach points
//	           (newSockFloorCgroup): what the socket hooks alone cost, and
//	           by difference what l3iso's packet backstops cost to attach
//
// Each configuration has one long-lived child (the test binary re-executed
// in its cgroup and netns) that runs batches on command. In every round each
// configuration runs one batch of about 0.1 s, in an order rotated from
// round to round. Figures are medians over rounds; ratios are medians of
// per-round ratios, so a slow stretch of the machine moves numerator and
// denominator together. After the rounds, the container's verdict counter
// must have grown by every iteration: proof that the hooks ran.
func BenchmarkSocketHooks(b *testing.B) {
	w := newWorld(b)
	one := w.newInstall("one")
	applyOne := one.apply(1)
	tenK := w.newInstall("tenk")
	tries := tenK.applyMany(10_000)
	unmanaged := sockprobe.NewCgroup(b, w.top)
	own := containerAddr(1)

	configs := []hookConfig{
		{"container1", "container, 1 registered", one.containerCgroup(containerName(1)), one.netns, own, one},
		{"host1", "host process under root, 1 registered", sockprobe.NewCgroup(b, one.cgroot), one.netns, freeAddr, nil},
		{"unmanaged1", "unmanaged (netns of the 1)", unmanaged, one.netns, freeAddr, nil},
		{"floor1", "do-nothing programs at l3iso's hooks (netns of the 1)", newFloorCgroup(b, w.top), one.netns, freeAddr, nil},
		{"sockfloor1", "do-nothing programs at the socket hooks only, no skb (netns of the 1)", newSockFloorCgroup(b, w.top), one.netns, freeAddr, nil},
		{"container10k", "container, 10,000 registered", tenK.containerCgroup(containerName(1)), tenK.netns, own, tenK},
		{"host10k", "host process under root, 10,000 registered", sockprobe.NewCgroup(b, tenK.cgroot), tenK.netns, freeAddr, nil},
		{"unmanaged10k", "unmanaged (netns of the 10,000)", unmanaged, tenK.netns, freeAddr, nil},
	}
	say("machine: %s\n", machine())
	applyTenK := report(b, "apply of 10,000 containers", tries)
	say("setup: apply of 1 container %.1f ms, apply of 10,000 containers %.0f ms (l3iso binary, process start included; 0: no attempt succeeded)",
		ms(applyOne).median(), ms(applyTenK).median())
	say("\n")

	for _, wl := range hookWorkloads {
		b.Run(wl.name, func(b *testing.B) { runHookWorkload(b, wl, configs) })
	}
}

func runHookWorkload(b *testing.B, wl hookWorkload, configs []hookConfig) {
	rounds := hookRounds
	if testing.Short() {
		rounds = hookRoundsShort
	}
	before := map[*install]uint64{}
	for _, c := range configs {
		if c.in != nil {
			before[c.in] = counter(b, c.in, containerName(1), wl.counter)
		}
	}

	agents := make([]*agent, len(configs))
	iters := map[*install]uint64{} // the containers' iterations
	for k, c := range configs {
		agents[k] = startAgent(b, wl.name+" in "+c.label, wl.name, c.cg, c.netns, c.addr)
		_, n := agents[k].run(hookBatch) // warm-up batch, not counted
		if c.in != nil {
			iters[c.in] += n
		}
	}
	got := make(map[string]series, len(configs))
	for i := 0; i < b.N; i++ {
		clear(got)
		for r := 0; r < rounds; r++ {
			for k := range configs {
				j := (r + k) % len(configs)
				ns, n := agents[j].run(hookBatch)
				got[configs[j].key] = append(got[configs[j].key], ns)
				if configs[j].in != nil {
					iters[configs[j].in] += n
				}
			}
		}
	}

	// The container runs must have gone through the hooks.
	for in, n := range before {
		delta := counter(b, in, containerName(1), wl.counter) - n
		if want := iters[in]; delta < want {
			b.Errorf("%s: counter %s of the container grew by %d, want ≥ %d: did the hooks run?", wl.name, wl.counter, delta, want)
		}
	}

	type ratio struct {
		key, label, target string
		s                  series // per-round ratios
	}
	r := func(a, b string) series { return ratios(got[a], got[b]) }
	rs := []ratio{
		{"container_vs_unmanaged", "container / unmanaged, 1 registered", wl.target, r("container1", "unmanaged1")},
		{"container_vs_unmanaged_10k", "container / unmanaged, 10,000 registered", wl.target, r("container10k", "unmanaged10k")},
		{"host_vs_unmanaged", "host under root / unmanaged, 1 registered", "", r("host1", "unmanaged1")},
		{"floor_vs_unmanaged", "do-nothing programs / unmanaged (the hooks' own price)", "", r("floor1", "unmanaged1")},
		{"container_vs_floor", "container / do-nothing programs, 1 registered (l3iso's work)", "", r("container1", "floor1")},
		{"sockfloor_vs_unmanaged", "do-nothing at socket hooks only / unmanaged (the socket hooks' price)", "", r("sockfloor1", "unmanaged1")},
		{"floor_vs_sockfloor", "do-nothing at all / at socket hooks only (the skb backstops' price)", "", r("floor1", "sockfloor1")},
		{"host_vs_unmanaged_10k", "host under root / unmanaged, 10,000 registered", "", r("host10k", "unmanaged10k")},
		{"10k_vs_1", "container: 10,000 / 1 registered", "≤ 1.03", r("container10k", "container1")},
		{"10k_vs_1_unmanaged", "unmanaged: netns of 10,000 / of 1 (kernel only)", "", r("unmanaged10k", "unmanaged1")},
		{"10k_vs_1_hooks", "(container/unmanaged) 10,000 / 1 (l3iso only)", "≤ 1.03",
			ratios(r("container10k", "unmanaged10k"), r("container1", "unmanaged1"))},
	}

	var tb strings.Builder
	tw := tabwriter.NewWriter(&tb, 0, 4, 2, ' ', 0)
	fmt.Fprintf(&tb, "SocketHooks/%s: %d rounds × batches of %v\n", wl.name, rounds, hookBatch)
	fmt.Fprintln(tw, "configuration\tns/op median (min–max)")
	for _, c := range configs {
		fmt.Fprintf(tw, "%s\t%s\n", c.label, got[c.key].fmtRange("%.0f"))
	}
	tw.Flush()
	tw = tabwriter.NewWriter(&tb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ratio (per round)\tmedian [p25–p75] (min–max)\ttarget")
	for _, x := range rs {
		t := x.target
		if t == "" {
			t = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", x.label, x.s.fmtSpread("%.3f"), t)
	}
	fmt.Fprintln(tw)
	tw.Flush()
	say("%s", tb.String())

	b.ReportMetric(0, "ns/op") // the figures are per system call, below
	for _, c := range configs {
		b.ReportMetric(got[c.key].median(), c.key+"_ns/op")
	}
	for _, x := range rs {
		b.ReportMetric(x.s.median(), "ratio_"+wl.name+"_"+x.key)
	}
}

// counter reads one verdict counter of container name.
func counter(tb testing.TB, in *install, name, which string) uint64 {
	tb.Helper()
	out, _, err := in.l3iso("stats", name, "-o", "json")
	if err != nil {
		tb.Fatal(err)
	}
	var all map[string]map[string]uint64
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		tb.Fatalf("l3iso stats -o json: %v\n%s", err, out)
	}
	v, ok := all[name][which]
	if !ok {
		tb.Fatalf("l3iso stats -o json: no counter %s for %s:\n%s", which, name, out)
	}
	return v
}
