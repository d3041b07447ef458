package bench

import (
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/l3iso/l3iso/bench/engine"
	"github.com/l3iso/l3iso/pkg/loader"
)

// BenchmarkEvents measures what the denial records (l3_events, issue 15)
// cost, with events on and off (L3_CFG_NO_EVENTS, switched between
// batches) in one installation with two containers:
//
//	sendto       an allowed path (a container's unbound sendto): it writes
//	             no record, so on / off must be 1 within the noise
//	bind-denied  a flood of denials (a bind to the other container's
//	             address): a record each, up to the rate limit (20/s per
//	             container and CPU, burst 50); the rest are counted lost
//
// In every round each workload runs one batch with events on and one with
// them off, in an order that alternates from round to round; the ratio is
// the median of per-round on / off ratios of ns per system call.
func BenchmarkEvents(b *testing.B) {
	w := newWorld(b)
	in := w.newInstall("events")
	in.apply(2)
	cg := in.containerCgroup(containerName(1))
	workloads := []struct {
		loop, label string
		addr        int // the container whose address the loop uses
	}{
		{engine.LoopSendto, "sendto (allowed: writes no record)", 1},
		{engine.LoopDenied, "bind-denied (a flood of denials)", 2},
	}
	rounds := hookRounds
	if testing.Short() {
		rounds = hookRoundsShort
	}
	var tb strings.Builder
	tw := tabwriter.NewWriter(&tb, 0, 4, 2, ' ', 0)
	fmt.Fprintf(&tb, "Events: %d rounds × batches of %v, events on and off\n", rounds, hookBatch)
	fmt.Fprintln(tw, "workload\ton ns/op\toff ns/op\ton / off median [p25–p75] (min–max)")
	for _, wl := range workloads {
		a := startAgent(b, wl.loop, wl.loop, cg, in.netns, containerAddr(wl.addr))
		a.run(hookBatch) // warm-up
		on, off := series{}, series{}
		for i := 0; i < b.N; i++ {
			on, off = on[:0], off[:0]
			for r := 0; r < rounds; r++ {
				for k := 0; k < 2; k++ {
					events := (r+k)%2 == 0
					in.setEvents(b, events)
					ns, _ := a.run(hookBatch)
					if events {
						on = append(on, ns)
					} else {
						off = append(off, ns)
					}
				}
			}
		}
		in.setEvents(b, true)
		r := ratios(on, off)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", wl.label, on.fmtRange("%.0f"), off.fmtRange("%.0f"), r.fmtSpread("%.3f"))
		b.ReportMetric(r.median(), "ratio_on_off_"+wl.loop)
	}
	tw.Flush()
	say("%s", tb.String())
	b.ReportMetric(0, "ns/op")
}

// setEvents switches the installation's denial records on or off.
func (in *install) setEvents(tb testing.TB, on bool) {
	tb.Helper()
	st, err := loader.Open(in.bpffs, true)
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	cfg := st.Config
	cfg.NoEvents = !on
	if err := st.Maps.SetConfig(cfg); err != nil {
		tb.Fatal(err)
	}
}
