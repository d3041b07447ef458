// Package engine is l3iso's network benchmark, the engine of l3iso-bench:
// it builds every topology in private namespaces — loopback, shared-mode
// containers, a host process under l3iso's root, and netns containers
// behind l3iso's bridge (with and without conntrack), routed and direct
// delivery — runs its own Go load generator through each (udp_pps, tcp_rr
// with latency percentiles, tcp_crr, tcp_gbps, sendto_ns, and
// bcast_fanout: a broadcast from outside into 100 containers of which two
// listen), configurations interleaved round by round, and reports medians
// with min–max and per-round paired ratios with bootstrap confidence
// intervals. It also measures how the figures change with 100 and 1,000
// containers on the host, what each BPF program costs per run
// (bpf_stats), and the control plane (up, container add, apply of 10,000
// containers, down).
//
// cmd/l3iso-bench runs it against the l3iso binary it measures; see
// bench/README.md for what is measured and how to read it. It needs root.
// Everything it makes — network namespaces, a cgroup subtree, a private
// bpffs mount — is its own and is removed when Run returns, after a
// failure or an interrupt (cancel the context) too. It never attaches at
// the machine's cgroup root and sends traffic only inside the namespaces
// it made.
//
// The engine never links the l3iso command or its control plane: it sets
// every installation up by running the l3iso binary, as an operator does,
// and its load generator is the benchmark binary itself (MaybeWorker,
// worker.go), which the socket-hook benchmarks in bench/ use too.
package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// Options configure a run. The zero value is the full benchmark.
type Options struct {
	// Binary is the l3iso binary under test: every installation is set up
	// and torn down by running it. Required.
	Binary string
	// Worker is the load generator's binary: one that calls MaybeWorker
	// first thing. Default: this executable (l3iso-bench, or a test
	// binary).
	Worker string
	// Quick selects the short defaults (make bench-quick).
	Quick bool
	// Rounds (default DefaultRounds, quick QuickRounds) and RunTime, the
	// duration of one run of one workload in one configuration (default
	// DefaultRunTime, quick QuickRunTime).
	Rounds  int
	RunTime time.Duration
	// TargetRounds are rounds of the two sides of issue 17's target
	// ratios only (isFocus), spread among the full rounds: they narrow
	// those intervals for a fraction of a full round's time. Default:
	// TargetShare of Rounds (none with Quick); set NoTargetRounds for
	// none.
	TargetRounds   int
	NoTargetRounds bool
	// Scale are the container counts of the scaling runs (shared and
	// direct). Default 100 and 1,000; set NoScale for none.
	Scale   []int
	NoScale bool
	// Fanout is the number of containers of each bcast_fanout
	// installation (bridge, shared, direct), of which the first and the
	// last listen: default FanoutContainers, at least 3 and at most 253
	// (one /24). NoFanout leaves bcast_fanout out.
	Fanout   int
	NoFanout bool
	// ControlPlane is the number of containers of the control-plane apply
	// (default 10,000); SkipControlPlane leaves that phase out.
	ControlPlane     int
	SkipControlPlane bool
	// SkipCrossCheck leaves out iperf3 and sockperf even where they are
	// installed.
	SkipCrossCheck bool
	// Nice is the nice value of the load generator's working threads
	// (0: the benchmark's own).
	Nice int
	// SkipBPFStats leaves out the bpf_stats phase.
	SkipBPFStats bool
	// Workloads, if set, are the only workloads measured (of udp_pps,
	// tcp_rr, tcp_crr, tcp_gbps, sendto_ns, bcast_fanout): for a quicker
	// look at a few figures.
	Workloads []string
	// Progress receives the live progress line (os.Stderr for a person).
	Progress io.Writer
	// RunID (6 hex digits; default random) is in the name of everything
	// the run makes: namespaces l3b-bID-*, cgroup l3iso-bench-bID, and
	// the containers' namespaces l3iso-ID[:4]…
	RunID string
}

func (o *Options) defaults() error {
	if o.Binary == "" {
		return errors.New("no l3iso binary to measure")
	}
	if o.Worker == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the benchmark's own binary (the load generator): %w", err)
		}
		o.Worker = exe
	}
	for _, w := range o.Workloads {
		if !slices.Contains(measured, w) {
			return fmt.Errorf("workload %q: want one of %s", w, strings.Join(measured, ", "))
		}
	}
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
		if o.Quick {
			o.Rounds = QuickRounds
		}
	}
	switch {
	case o.TargetRounds < 0:
		return fmt.Errorf("%d target rounds: want 0 (the default) or more", o.TargetRounds)
	case o.NoTargetRounds:
		o.TargetRounds = 0
	case o.TargetRounds == 0 && !o.Quick:
		o.TargetRounds = o.Rounds * TargetShare / 100
	}
	if o.RunTime == 0 {
		o.RunTime = DefaultRunTime
		if o.Quick {
			o.RunTime = QuickRunTime
		}
	}
	if o.Scale == nil && !o.NoScale {
		o.Scale = []int{100, 1000}
	}
	if o.NoScale {
		o.Scale = nil
	}
	if o.Fanout == 0 {
		o.Fanout = FanoutContainers
	}
	if o.Fanout < 3 || o.Fanout > 253 {
		return fmt.Errorf("bcast_fanout with %d containers: want 3 to 253 (two listen, one must not, all on one /24)", o.Fanout)
	}
	if o.Nice < -20 || o.Nice > 19 {
		return fmt.Errorf("nice %d: want -20 to 19", o.Nice)
	}
	if o.ControlPlane == 0 {
		o.ControlPlane = 10_000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// The default rounds and run time (bench/README.md, "Method", says why).
// The interval of a median narrows as 1/√rounds: simulated per-round
// ratios with a spread σ give a half-width of ~0.53σ with 25 rounds and
// ~0.34σ with 50, so 50 rounds reach ±3 % while one round's ratio spreads
// by up to ~9 % (a quiet 2-vCPU machine: ~5–8 %). Short runs keep a round,
// and the time between the two runs of a pair, short.
const (
	DefaultRounds  = 50
	DefaultRunTime = 300 * time.Millisecond
	QuickRounds    = 6
	QuickRunTime   = 200 * time.Millisecond
	// TargetShare is the default of target rounds, in % of the rounds:
	// with 50 rounds, 80 more of the 13 runs of the target pairs (~4.2 s
	// each, ~5.6 min). A run with 40 reached ±0.6–3.2 % (median ±2.5 %)
	// where one without had reached ±0.8–3.8 %: the machine's quiet
	// moves the widths as much as the rounds do, and 130 rounds narrow
	// the widest of those to ~±2.7 % (× √(90/130)).
	TargetShare = 160
)

// scaledWorkloads are measured with 100 and 1,000 containers too: the
// per-packet and the per-connection figure.
var scaledWorkloads = map[string]bool{UDPPPS: true, TCPCRR: true}

// sendtoConfigs are where sendto_ns runs: the socket-hook comparison
// (unmanaged, a host process under l3iso's root, a container, do-nothing
// programs), each on lo of its namespace. Elsewhere the sender is the
// outside host, which no l3iso program sees.
var sendtoConfigs = map[string]bool{Loopback: true, Host: true, Shared: true, HookFloor: true}

// target is one configuration under test with its workers: a server and
// a client, or for bcast_fanout the listeners and a client (the sender).
type target struct {
	config     string
	containers int
	server     Place
	client     Place
	srv, cli   *Worker
	broken     error                  // set when the warm-up failed: left out of the rounds
	in         *install               // its installation
	extra      func(programSet) error // bpf_stats: adds programs of its own (do-nothing, bare_peer)

	fanout    bool // runs bcast_fanout only
	listenAt  []Place
	listeners []*Worker
	sent      uint64 // bcast_fanout: datagrams the sender sent in all runs
}

func (t *target) label() string {
	switch {
	case t.fanout:
		return fmt.Sprintf("%s bcast ×%d", t.config, t.containers)
	case t.containers == 1:
		return t.config
	}
	return fmt.Sprintf("%s ×%d", t.config, t.containers)
}

// orderKey places a target in a round: the two sides of every ratio the
// targets name are neighbours (host–loopback–hook_floor–shared–shared
// ×1,000, bridge–direct–bare_peer–direct ×1,000), so the runs a ratio
// pairs are a run apart, and the machine's drifting load moves both.
func orderKey(t *target) [3]int {
	rank := map[string]int{Host: 0, Loopback: 1, HookFloor: 2, Shared: 3, Routed: 4, BridgeCT: 5, Bridge: 6, Direct: 7, BarePeer: 7}
	sub := 0
	switch {
	case t.config == BarePeer:
		sub = 1
	case t.containers > 1 && !t.fanout:
		sub = 2
	}
	return [3]int{rank[t.config], sub, -t.containers}
}

// Run sets everything up, measures, tears everything down and returns the
// report. Cancelling ctx (Ctrl-C in l3iso-bench) stops the run; the
// teardown still happens before Run returns.
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the benchmark needs root: it creates network namespaces, cgroups and a bpffs mount")
	}
	pr := newProgress(o.Progress)
	machine := describeMachine()
	if o.RunID != "" && (len(o.RunID) != 6 || strings.Trim(o.RunID, "0123456789abcdef") != "") {
		return nil, fmt.Errorf("run id %q: want 6 hex digits", o.RunID)
	}
	w, err := newWorld(o.Binary, o.Worker, o.RunID)
	defer func() {
		pr.phase("tearing down")
		if terr := w.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
		pr.phase("done")
		pr.done()
	}()
	if err != nil {
		return nil, err
	}
	w.nice = o.Nice

	unavailable := map[string]string{}
	b := &bench{o: o, w: w, pr: pr, m: Measurements{}, failures: map[string]int{}, runs: map[string]int{}}

	// Topologies.
	pr.phase("setting up the topologies")
	var installs []*install
	mk := func(tag, delivery string, ct bool, n int) (*install, error) {
		pr.status("setting up %s (%d containers)", tag, n)
		in, err := w.newInstall(ctx, tag, delivery, ct)
		if err != nil {
			return nil, err
		}
		if _, err := in.populate(ctx, n); err != nil {
			return nil, err
		}
		installs = append(installs, in)
		return in, nil
	}
	cpuServer, cpuClient := -1, -1
	if runtime.NumCPU() >= 2 {
		cpuServer, cpuClient = 1, 0
		machine.Pinning = "client (sender) pinned to CPU 0, server (receiver) to CPU 1, in every configuration"
	} else {
		machine.Pinning = "no CPU pinning (1 CPU)"
	}
	if o.Nice != 0 {
		machine.Pinning += fmt.Sprintf("; the load generator's working threads at nice %d", o.Nice)
	}
	add := func(config string, n int, in *install) *target {
		t := &target{config: config, containers: n, server: in.server(cpuServer), client: in.client(cpuClient), in: in}
		b.targets = append(b.targets, t)
		return t
	}
	s1, err := mk("s1", "", false, 1)
	if err != nil {
		return nil, err
	}
	// loopback, host and hook_floor: over an address on a namespace's lo
	// that is not 127/8, the kind of address shared's container has
	// (loAddr). loopback in a namespace of its own, where no program runs;
	// host in the shared installation's, where l3iso's programs for the
	// namespace (l3_tc_group on lo, l3_sk_lookup) run too, on an address
	// of the host's that no container owns; hook_floor in one of its own
	// with a do-nothing program at each of l3iso's hooks.
	onLo := func(config, cg, netns string, addr netip.Addr) (*target, error) {
		if err := addLoAddress(netns, addr); err != nil {
			return nil, fmt.Errorf("%s: %w", config, err)
		}
		srv := Place{cg, netns, addr, cpuServer}
		cli := srv
		cli.CPU = cpuClient
		t := &target{config: config, containers: 1, server: srv, client: cli, in: s1}
		b.targets = append(b.targets, t)
		return t, nil
	}
	loNetns, err := w.newNetns("lo")
	if err != nil {
		return nil, err
	}
	if _, err := onLo(Loopback, w.unmanaged, loNetns, loAddr); err != nil {
		return nil, err
	}
	// A host process under l3iso's root, in no container: the hooks run
	// and find none.
	hostCg := filepath.Join(s1.cgroot, "host")
	if err := cgroup.Create(hostCg); err != nil {
		return nil, err
	}
	if _, err := onLo(Host, hostCg, s1.host, hostLoAddr); err != nil {
		return nil, err
	}
	add(Shared, 1, s1)
	// The hooks' floor: a do-nothing program at each of l3iso's hooks
	// (AttachDoNothing).
	if cg, ns, err := w.doNothingFloor(); err != nil {
		unavailable[HookFloor] = err.Error()
	} else {
		t, err := onLo(HookFloor, cg, ns, loAddr)
		if err != nil {
			return nil, err
		}
		t.extra = func(ps programSet) error { return ps.addLinks(w.floor.links) }
	}
	deliveries := []struct {
		config, tag, delivery string
		ct                    bool
	}{{Bridge, "br", "bridge", false}, {BridgeCT, "bc", "bridge", true}, {Routed, "rt", "routed", false}, {Direct, "d1", "direct", false}}
	for _, d := range deliveries {
		if d.ct {
			if _, err := exec.LookPath("nft"); err != nil {
				unavailable[BridgeCT] = "nft (nftables) is not installed"
				continue
			}
		}
		in, err := mk(d.tag, d.delivery, d.ct, 1)
		if err != nil {
			return nil, err
		}
		if d.ct {
			b.ct = in
		}
		add(d.config, 1, in)
	}
	// The bare prototype: routed delivery's namespace, veth and container
	// (its server under l3iso's socket programs, as direct's is), and a
	// bare redirect_peer program ahead of everything on the uplink (see
	// barePeerProgram): direct / bare_peer differ in the TC delivery only.
	bp, err := mk("bp", "routed", false, 1)
	if err != nil {
		return nil, err
	}
	if err := bp.barePeer(); err != nil {
		unavailable[BarePeer] = err.Error()
	} else {
		t := add(BarePeer, 1, bp)
		t.extra = func(ps programSet) error { return ps.add(bp.barePeerProg) }
	}
	for _, n := range o.Scale {
		in, err := mk(fmt.Sprintf("s%d", n), "", false, n)
		if err != nil {
			return nil, err
		}
		add(Shared, n, in)
		if in, err = mk(fmt.Sprintf("d%d", n), "direct", false, n); err != nil {
			return nil, err
		}
		add(Direct, n, in)
	}
	for _, w := range measured {
		if w != BcastFanout && !b.measures(w) {
			unavailable[w] = "left out (--workloads)"
		}
	}
	switch {
	case o.NoFanout:
		unavailable[BcastFanout] = "left out (--no-bcast)"
	case !b.measures(BcastFanout):
		unavailable[BcastFanout] = "left out (--workloads)"
	default:
		if err := b.setupFanout(ctx, cpuServer, cpuClient, &installs, unavailable); err != nil {
			return nil, err
		}
	}
	var noSendto []string
	for _, c := range Configs {
		if !sendtoConfigs[c] {
			noSendto = append(noSendto, c)
		}
	}
	unavailable[SendtoNs+" in "+strings.Join(noSendto, ", ")] = "measured where the sender is under l3iso's cgroup root or beside " +
		"it on lo (loopback, host, shared, hook_floor); elsewhere the sender is the outside host, which no l3iso program sees"
	slices.SortStableFunc(b.targets, func(x, y *target) int {
		kx, ky := orderKey(x), orderKey(y)
		return slices.Compare(kx[:], ky[:])
	})

	// Workers.
	for _, t := range b.targets {
		pr.status("starting the load generator for %s", t.label())
		if err := b.start(ctx, t); err != nil {
			return nil, err
		}
	}

	if err := b.measure(ctx); err != nil {
		return nil, err
	}
	for _, t := range b.targets {
		if t.broken != nil {
			unavailable[t.label()] = "left out (its runs count as missing) after: " + t.broken.Error()
		}
	}
	if b.ct != nil && b.measures(UDPPPS) {
		// Proof that bridge_ct's packets went through conntrack.
		if n, err := b.ct.conntracked(ctx); err != nil || n == 0 {
			unavailable[BridgeCT+" (check)"] = fmt.Sprintf("the conntrack rule counted %d packets (%v): bridge_ct may not be what it claims", n, err)
		}
	}
	checks := b.fanoutChecks(ctx, unavailable)
	for what, n := range b.failures {
		if _, broken := unavailable[strings.SplitN(what, " in ", 2)[1]]; !broken {
			unavailable[what] = fmt.Sprintf("%d of %d runs failed (counted as missing)", n, b.runs[what])
		}
	}
	var stats *BPFStats
	if o.SkipBPFStats {
		unavailable["bpf_stats"] = "left out (--no-bpf-stats)"
	} else if stats, err = b.bpfStats(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		unavailable["bpf_stats"] = err.Error()
		stats = nil
	}
	var cross []Cross
	if !o.SkipCrossCheck {
		cross = b.crossCheck(ctx)
	}
	var ops []Op
	var up Series
	for _, in := range installs {
		up = append(up, ms(in.up))
	}
	ops = append(ops, op(fmt.Sprintf("l3iso up (fresh; the %d installations above)", len(up)), up))
	if !o.SkipControlPlane {
		cp, err := b.controlPlane(ctx)
		if err != nil {
			return nil, err
		}
		ops = append(ops, cp...)
	}
	rep = Build(b.m, o.Rounds, machine, unavailable)
	if rep.Fanout != nil {
		rep.Fanout.Checks = checks
	}
	rep.RunSeconds = o.RunTime.Seconds()
	rep.TargetRounds = o.TargetRounds
	rep.CrossCheck = cross
	rep.ControlPlane = ops
	rep.BPFStats = stats
	rep.Load = b.load
	return rep, nil
}

// loAddr is the address on lo where the loopback and hook_floor
// configurations' servers listen: shared's container 1's address, in
// namespaces of their own. Not 127.0.0.1: a datagram to 127/8 takes a
// cheaper path through this kind of machine's kernel than one to any other
// local address (bench/README.md, "Same path, same address"), so a floor
// on 127.0.0.1 would count that difference as l3iso's. hostLoAddr is the
// host configuration's: on lo of shared's namespace, owned by no container.
var (
	loAddr     = nthAddr(sharedBas, 1)
	hostLoAddr = mustAddr("10.79.0.1")
)

// bench is one run in progress.
type bench struct {
	o        Options
	w        *world
	pr       *progress
	targets  []*target
	m        Measurements
	failures map[string]int // runs that failed, by "workload in config"
	runs     map[string]int // runs made, by "workload in config"
	ct       *install       // bridge_ct's installation
	softirqd []int          // pids of the ksoftirqd threads (bcast_cpu_ns)
	epoch    time.Time      // bcast_cpu_ns's clock
	load     *Load          // the machine while the rounds ran
}

// measures reports whether workload w is measured in this run.
func (b *bench) measures(w string) bool {
	return len(b.o.Workloads) == 0 || slices.Contains(b.o.Workloads, w)
}

// start starts the target's server (bcast_fanout: its listeners) and then
// its client.
func (b *bench) start(ctx context.Context, t *target) error {
	if t.fanout {
		pj, _ := json.Marshal(ports{Bcast: fanoutPort})
		for i, p := range t.listenAt {
			l, err := b.w.startWorker(ctx, fmt.Sprintf("broadcast listener %d (%s)", i+1, t.label()), "listener", p, envPorts+"="+string(pj))
			if err != nil {
				return err
			}
			// The socket is bound (and registered) once it answers.
			var got ports
			if err := l.Recv(ctx, 30*time.Second, &got); err != nil {
				return err
			}
			t.listeners = append(t.listeners, l)
		}
		var err error
		t.cli, err = b.w.startWorker(ctx, "broadcast sender ("+t.label()+")", "client", t.client, envPorts+"="+string(pj))
		return err
	}
	var err error
	if t.srv, err = b.w.startWorker(ctx, "load generator server ("+t.label()+")", "server", t.server); err != nil {
		return err
	}
	var p ports
	if err := t.srv.Recv(ctx, 30*time.Second, &p); err != nil {
		return err
	}
	pj, _ := json.Marshal(p)
	t.cli, err = b.w.startWorker(ctx, "load generator client ("+t.label()+")", "client", t.client, envPorts+"="+string(pj))
	return err
}

// runsOf lists the targets a workload runs in, in the order of a round.
func (b *bench) runsOf(workload string) []*target {
	if !b.measures(workload) {
		return nil
	}
	var out []*target
	for _, t := range b.targets {
		switch {
		case t.fanout != (workload == BcastFanout):
		case workload == SendtoNs && !sendtoConfigs[t.config]:
		case t.fanout || t.containers == 1 || scaledWorkloads[workload]:
			out = append(out, t)
		}
	}
	return out
}

// isFocus: is t's figure in workload w a side of one of issue 17's
// target ratios (report.go, issueRatios)? Those run in the target rounds
// too.
func isFocus(t *target, w string) bool {
	k := Key{t.config, w, t.containers}
	return !t.fanout && slices.ContainsFunc(issueRatios, func(x issueRatio) bool { return x.of == k || x.over == k })
}

// focusOf lists the targets workload w runs in a target round.
func (b *bench) focusOf(w string) []*target {
	var out []*target
	for _, t := range b.runsOf(w) {
		if isFocus(t, w) {
			out = append(out, t)
		}
	}
	return out
}

// measured are the measured workloads, in the order of a round.
var measured = []string{UDPPPS, TCPRR, TCPCRR, TCPGbps, SendtoNs, BcastFanout}

// measure runs the warm-up and the rounds.
func (b *bench) measure(ctx context.Context) error {
	total, focusTotal := 0, 0
	for _, w := range measured {
		total += len(b.runsOf(w))
		focusTotal += len(b.focusOf(w))
	}
	d := b.o.RunTime
	b.pr.phase(fmt.Sprintf("warm-up, then %d rounds × %d runs of %v and %d target rounds × %d runs", b.o.Rounds, total, d, b.o.TargetRounds, focusTotal))
	for _, w := range measured {
		for _, t := range b.runsOf(w) {
			if t.broken != nil {
				continue
			}
			b.pr.status("warm-up · %s · %s", w, t.label())
			// At least 200 ms: the first packets of a path wait for ARP,
			// and a receiver that is not scheduled in a short window
			// counts nothing.
			_, err := b.runOnce(ctx, t, w, max(d/2, 200*time.Millisecond))
			if errors.Is(err, errStarved) {
				_, err = b.runOnce(ctx, t, w, max(d, 400*time.Millisecond))
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// A configuration that carries no traffic is reported,
				// loudly, and the others are still measured.
				t.broken = err
				b.pr.phase(fmt.Sprintf("%s does not work, left out: %v", t.label(), err))
			}
		}
	}
	start, done := time.Now(), 0
	all := b.o.Rounds*total + b.o.TargetRounds*focusTotal
	sys0, serr := readSys()
	ld := &Load{LoadAvgStart: loadAvg()}
	round := func(label string, reverse bool, focus bool) error {
		rs0, _ := readSys()
		for _, w := range measured {
			ts := b.runsOf(w)
			if focus && len(b.focusOf(w)) == 0 {
				continue // no target's ratio in w: nothing of it in a target round
			}
			for k := range ts {
				// Serpentine: every other round backwards, so each side
				// of a pair runs first as often as the other.
				t := ts[k]
				if reverse {
					t = ts[len(ts)-1-k]
				}
				if focus && !isFocus(t, w) {
					// Not a side of a target's ratio: missing in this
					// round (NaN keeps the rounds aligned).
					for _, name := range figures[w] {
						k := Key{t.config, name, t.containers}
						b.m[k] = append(b.m[k], math.NaN())
					}
					continue
				}
				left := "…"
				if done > 0 {
					left = (time.Since(start) / time.Duration(done) * time.Duration(all-done)).Round(time.Second).String()
				}
				b.pr.status("%s · %s · %s · run %d/%d · ~%s left", label, w, t.label(), done+1, all, left)
				if err := b.measureRun(ctx, t, w, label, ld); err != nil {
					return err
				}
				done++
			}
		}
		if rs1, err := readSys(); err == nil {
			ld.RoundStealPct = append(ld.RoundStealPct, stealPct(rs0.all, rs1.all))
		}
		return nil
	}
	focusDone := 0
	for r := 0; r < b.o.Rounds; r++ {
		if err := round(fmt.Sprintf("round %d/%d", r+1, b.o.Rounds), r%2 == 1, false); err != nil {
			return err
		}
		// The target rounds spread over the run, one after every full
		// round or so: the machine's drift reaches them as it reaches
		// the full rounds.
		for ; focusDone < (r+1)*b.o.TargetRounds/b.o.Rounds; focusDone++ {
			label := fmt.Sprintf("target round %d/%d", focusDone+1, b.o.TargetRounds)
			if err := round(label, focusDone%2 == 1, true); err != nil {
				return err
			}
		}
	}
	if sys1, err := readSys(); serr == nil && err == nil {
		l := load(sys0, sys1, time.Since(start).Seconds())
		l.RoundStealPct, l.QueueWaitMsPerS, l.LoadAvgStart, l.LoadAvgEnd = ld.RoundStealPct, ld.QueueWaitMsPerS, ld.LoadAvgStart, loadAvg()
		b.load = &l
	}
	return nil
}

// measureRun runs workload w in t once and appends its figures to b.m
// (NaN when it failed: the rounds stay aligned). Only a cancelled ctx
// returns an error; a failed run is counted in b.failures, and a
// configuration whose workers may still answer it is left out from here
// on.
func (b *bench) measureRun(ctx context.Context, t *target, w, label string, ld *Load) error {
	var res runFigures
	var err error
	b.runs[fmt.Sprintf("%s in %s", w, t.label())]++
	if t.broken == nil {
		wait0, t0 := b.queueWaits(t), time.Now()
		res, err = b.runOnce(ctx, t, w, b.o.RunTime)
		if wait0 != nil && err == nil {
			if wait1 := b.queueWaits(t); wait1 != nil {
				ld.QueueWaitMsPerS = append(ld.QueueWaitMsPerS, waitedMs(wait0, wait1)/time.Since(t0).Seconds())
			}
		}
		for try := 0; try < 2 && errors.Is(err, errStarved); try++ {
			// Again: a receiver that is not scheduled in the window
			// counts nothing on a loaded machine; its workers are in
			// step.
			res, err = b.runOnce(ctx, t, w, b.o.RunTime)
		}
	}
	if t.broken != nil {
		err = t.broken
	}
	vals := res.vals
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// NaN keeps the rounds aligned for the per-round ratios.
		vals = map[string]float64{}
		for _, name := range figures[w] {
			vals[name] = math.NaN()
		}
		b.failures[fmt.Sprintf("%s in %s", w, t.label())]++
		if t.broken == nil && errors.Is(err, errStarved) {
			// Three times in a row: this round's figure is missing, the
			// configuration stays in.
			b.pr.phase(fmt.Sprintf("%s: %s in %s counted nothing three times (missing this round): %v", label, w, t.label(), err))
		} else if t.broken == nil {
			// Its workers may still answer the failed run later: leave
			// the configuration out from here on.
			b.pr.phase(fmt.Sprintf("%s: %s in %s failed, left out from here on: %v", label, w, t.label(), err))
			t.broken = err
		}
	}
	for name, v := range vals {
		k := Key{t.config, name, t.containers}
		b.m[k] = append(b.m[k], v)
	}
	return nil
}

// queueWaits reads how long each thread of t's workers has waited on a
// run queue for a CPU so far (ns, by thread): time another task had their
// CPU. nil: unknown.
func (b *bench) queueWaits(t *target) map[string]int64 {
	out := map[string]int64{}
	for _, wk := range append([]*Worker{t.cli, t.srv}, t.listeners...) {
		if wk == nil {
			continue
		}
		threads, err := taskSched(wk.Pid())
		if err != nil {
			return nil
		}
		for k, v := range threads {
			out[k] = v[1]
		}
	}
	return out
}

// waitedMs is the run-queue wait between two queueWaits readings, in ms,
// over the threads both saw (a thread started or ended between them has
// no interval to count).
func waitedMs(before, after map[string]int64) float64 {
	var ns int64
	for k, a := range after {
		if b, ok := before[k]; ok {
			ns += a - b
		}
	}
	return float64(ns) / 1e6
}

// untilSnap waits from snapshot i-1 (or the run's start) to snapshot i of a
// run of d: snapshots are 20 % and 80 % into the run, so start-up and
// wind-down stay out of the measuring window.
func untilSnap(ctx context.Context, d time.Duration, i int) error {
	wait := d / 5
	if i == 1 {
		wait = d * 3 / 5
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}

// errStarved: the receiver counted nothing in the measuring window while
// the sender sent. Seen only on a loaded machine; the workers stay in step.
var errStarved = errors.New("no datagram arrived in the measuring window")

// figures are the names a workload's run produces.
var figures = map[string][]string{
	UDPPPS: {UDPPPS}, TCPRR: {TCPRR, tcpRRP50, TCPRRP99, tcpRRP999}, TCPCRR: {TCPCRR}, TCPGbps: {TCPGbps},
	SendtoNs:    {SendtoNs},
	BcastFanout: {BcastFanout, BcastCPUNs, bcastMachine, bcastBalance},
}

// runFigures are one run's figures by name, and the operations the client
// made (datagrams, transactions, iterations).
type runFigures struct {
	vals map[string]float64
	ops  uint64
}

// runOnce runs workload w in t for d and returns its figures.
// Stream workloads (udp_pps, tcp_gbps) are measured at the receiver:
// counters read 20 % and 80 % into the sender's run, so start-up and
// wind-down stay out of the window. Transactional ones, and the sendto
// loop, are measured by the client.
func (b *bench) runOnce(ctx context.Context, t *target, w string, d time.Duration) (runFigures, error) {
	if t.fanout {
		return b.runFanout(ctx, t, d)
	}
	cmd := w
	if w == SendtoNs {
		cmd = LoopSendto
	}
	if err := t.cli.Send(fmt.Sprintf("%s %d", cmd, d.Nanoseconds())); err != nil {
		return runFigures{}, err
	}
	var s1, s2 snap
	stream := w == UDPPPS || w == TCPGbps
	if stream {
		for i, s := range []*snap{&s1, &s2} {
			if err := untilSnap(ctx, d, i); err != nil {
				return runFigures{}, err
			}
			if err := t.srv.Call(ctx, "snap", 30*time.Second, s); err != nil {
				return runFigures{}, err
			}
		}
	}
	var res RunResult
	if err := t.cli.Recv(ctx, d+60*time.Second, &res); err != nil {
		return runFigures{}, err
	}
	if res.Error != "" {
		return runFigures{}, fmt.Errorf("%s in %s: %s", w, t.label(), res.Error)
	}
	f := func(kv ...any) (runFigures, error) {
		m := map[string]float64{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1].(float64)
		}
		return runFigures{vals: m, ops: res.Ops}, nil
	}
	win := float64(s2.Ns - s1.Ns)
	switch w {
	case UDPPPS:
		if s2.UDP == s1.UDP {
			return runFigures{}, fmt.Errorf("udp_pps in %s: %w (%d sent)", t.label(), errStarved, res.Ops)
		}
		return f(UDPPPS, float64(s2.UDP-s1.UDP)/win*1e9)
	case TCPGbps:
		return f(TCPGbps, float64(s2.Stream-s1.Stream)*8/win)
	case TCPRR:
		return f(TCPRR, float64(res.Ops)/float64(res.Ns)*1e9,
			tcpRRP50, float64(res.P50)/1e3, TCPRRP99, float64(res.P99)/1e3, tcpRRP999, float64(res.P999)/1e3)
	case TCPCRR:
		return f(TCPCRR, float64(res.Ops)/float64(res.Ns)*1e9)
	case SendtoNs:
		return f(SendtoNs, res.NsPerOp())
	}
	return runFigures{}, fmt.Errorf("unknown workload %q", w)
}

// bpfStats runs the bpf_stats phase (bpfstats.go): udp_pps, and sendto_ns
// where it is measured, bpfStatsRuns times in every configuration with 1
// container, with the kernel's run-time statistics on.
func (b *bench) bpfStats(ctx context.Context) (*BPFStats, error) {
	var ws []string
	for _, w := range []string{UDPPPS, SendtoNs} {
		if b.measures(w) {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return nil, errors.New("left out (--workloads has neither udp_pps nor sendto_ns)")
	}
	b.pr.phase(fmt.Sprintf("bpf_stats: %d runs of %s per configuration, run-time statistics on", bpfStatsRuns, strings.Join(ws, " and ")))
	stop, err := enableStats()
	if err != nil {
		return nil, fmt.Errorf("turn on the kernel's BPF run-time statistics: %w", err)
	}
	defer stop()
	st := &BPFStats{Runs: bpfStatsRuns}
	own := Series{}
	for _, w := range ws {
		for _, t := range b.runsOf(w) {
			if t.containers != 1 || t.broken != nil {
				continue
			}
			b.pr.status("bpf_stats · %s · %s", w, t.label())
			c, err := b.programCosts(ctx, t, w)
			if err != nil {
				return nil, err
			}
			for _, name := range slices.Sorted(maps.Keys(c)) {
				if isDoNothing(name) {
					own = append(own, c[name][0])
				}
				if math.IsNaN(c[name][1]) { // no operations counted
					continue
				}
				st.Programs = append(st.Programs, ProgramCost{Config: t.config, Workload: w, Program: name, NsPerRun: c[name][0], RunsPerOp: c[name][1]})
			}
		}
	}
	if len(own) == 0 {
		return nil, errors.New("no do-nothing program ran (hook_floor not measured): bpf_stats' own cost is unknown")
	}
	st.OwnNs = own.Median()
	for i := range st.Programs {
		st.Programs[i].NsPerRun -= st.OwnNs
	}
	return st, nil
}

// programCosts runs w in t bpfStatsRuns times and returns, by program
// name, the median ns per run and runs per operation (bpf_stats' own cost
// still in).
func (b *bench) programCosts(ctx context.Context, t *target, w string) (map[string][2]float64, error) {
	ps, err := pinnedPrograms(t.in.bpffs)
	if err != nil {
		return nil, fmt.Errorf("programs of %s: %w", t.label(), err)
	}
	defer ps.close()
	if t.extra != nil {
		if err := t.extra(ps); err != nil {
			return nil, fmt.Errorf("programs of %s: %w", t.label(), err)
		}
	}
	var before, after []map[ebpf.ProgramID]progStat
	var ops []float64
	for range bpfStatsRuns {
		s0, err := ps.read()
		if err != nil {
			return nil, err
		}
		res, err := b.runOnce(ctx, t, w, b.o.RunTime)
		if errors.Is(err, errStarved) {
			continue
		}
		if err != nil {
			return nil, err
		}
		s1, err := ps.read()
		if err != nil {
			return nil, err
		}
		before, after, ops = append(before, s0), append(after, s1), append(ops, float64(res.ops))
	}
	return costs(before, after, ops), nil
}

// crossCheck measures, once per main configuration and with the same
// placement and pinning, tcp_gbps with iperf3 and udp_pps and
// tcp_rr_p99_us with sockperf (--quick: in sockperfQuick only), each if
// it is installed. Failures are
// reported in the progress output and leave the cell empty.
func (b *bench) crossCheck(ctx context.Context) []Cross {
	iperf, ierr := exec.LookPath("iperf3")
	sockperf, serr := exec.LookPath("sockperf")
	if ierr != nil && serr != nil {
		return nil
	}
	var out []Cross
	secs := max(1, int(math.Ceil(b.o.RunTime.Seconds())))
	for _, t := range b.targets {
		if t.containers != 1 || t.broken != nil || t.fanout {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if ierr == nil {
			b.pr.status("cross-check · iperf3 · %s", t.label())
			v, err := b.iperf(ctx, iperf, t, secs)
			if err != nil {
				b.pr.phase(fmt.Sprintf("cross-check with iperf3 in %s failed: %v", t.label(), err))
			} else {
				out = append(out, Cross{Config: t.config, Workload: TCPGbps, Tool: "iperf3", Value: v, Unit: "Gbit/s"})
			}
		}
		if serr == nil && (!b.o.Quick || sockperfQuick[t.config]) {
			b.pr.status("cross-check · sockperf · %s", t.label())
			cs, errs := b.sockperfCross(ctx, sockperf, t, secs)
			for _, err := range errs {
				b.pr.phase(fmt.Sprintf("cross-check with sockperf in %s failed: %v", t.label(), err))
			}
			out = append(out, cs...)
		}
	}
	return out
}

func (b *bench) iperf(ctx context.Context, iperf string, t *target, secs int) (float64, error) {
	const port = "5299"
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	srv, release, err := command(ctx, t.server.Cgroup, iperf, "-s", "-1", "-B", t.server.Addr.String(), "-p", port, fmt.Sprintf("-A%d", max(t.server.CPU, 0)))
	if err != nil {
		return 0, err
	}
	defer release()
	if err := startIn(t.server.Netns, srv); err != nil {
		return 0, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var lastErr error
	for try := 0; try < 20; try++ {
		time.Sleep(100 * time.Millisecond)
		cli, rel, err := command(ctx, t.client.Cgroup, iperf, "-c", t.client.Addr.String(), "-p", port, "-t", fmt.Sprint(secs), "-J", fmt.Sprintf("-A%d", max(t.client.CPU, 0)))
		if err != nil {
			return 0, err
		}
		var out bytes.Buffer
		cli.Stdout = &out
		err = runIn(t.client.Netns, cli)
		rel()
		outb := out.Bytes()
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if jerr := json.Unmarshal(outb, &res); jerr == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
			return res.End.SumReceived.BitsPerSecond / 1e9, nil
		}
		lastErr = fmt.Errorf("iperf3 client: %v %s %s", err, res.Error, strings.TrimSpace(string(outb[:min(len(outb), 200)])))
		if ctx.Err() != nil {
			break
		}
	}
	return 0, lastErr
}

// controlPlane times the l3iso binary as an operator runs it, in an
// installation of its own (direct delivery, so netns containers get TC
// programs): container add in shared and netns mode, apply of an
// o.ControlPlane-container policy (from none, and again unchanged), and
// down with all of them registered.
func (b *bench) controlPlane(ctx context.Context) ([]Op, error) {
	b.pr.phase("control plane")
	in, err := b.w.newInstall(ctx, "cp", "direct", false)
	if err != nil {
		return nil, err
	}
	const adds = 10
	var shared, netns Series
	for i := 1; i <= adds; i++ {
		b.pr.status("control plane · container add %d/%d", i, adds)
		d, err := in.l3iso(ctx, "container", "add", fmt.Sprintf("cps%02d", i), "--addr", nthAddr(mustAddr("10.81.0.0"), i).String())
		if err != nil {
			return nil, err
		}
		shared = append(shared, ms(d))
		d, err = in.l3iso(ctx, "container", "add", fmt.Sprintf("%sn%03d", in.namePrefix(), i), "--mode", "netns", "--addr", nthAddr(mustAddr("10.79.0.0"), i).String())
		if err != nil {
			return nil, err
		}
		netns = append(netns, ms(d))
	}
	empty, err := in.policy(0, "shared")
	if err != nil {
		return nil, err
	}
	if _, err := in.l3iso(ctx, "apply", "-f", empty, "--allow-empty"); err != nil {
		return nil, err
	}
	n := b.o.ControlPlane
	b.pr.status("control plane · apply of %d containers", n)
	p, err := in.policy(n, "shared")
	if err != nil {
		return nil, err
	}
	apply, err := in.l3iso(ctx, "apply", "-f", p)
	if err != nil {
		return nil, err
	}
	b.pr.status("control plane · the same apply again")
	again, err := in.l3iso(ctx, "apply", "-f", p)
	if err != nil {
		return nil, err
	}
	b.pr.status("control plane · down with %d containers", n)
	down, err := in.l3iso(ctx, "down")
	if err != nil {
		return nil, err
	}
	return []Op{
		op(fmt.Sprintf("container add, shared (%d adds)", adds), shared),
		op(fmt.Sprintf("container add --mode netns (%d adds)", adds), netns),
		op(fmt.Sprintf("apply of %d shared containers, from 0", n), Series{ms(apply)}),
		op(fmt.Sprintf("apply of the same %d again (no change)", n), Series{ms(again)}),
		op(fmt.Sprintf("down with %d containers registered", n), Series{ms(down)}),
	}, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func op(name string, s Series) Op {
	return Op{Operation: name, N: len(s), MedianMs: s.Median(), MinMs: s.Min(), MaxMs: s.Max()}
}

// describeMachine fills in the machine line.
func describeMachine() Machine {
	var u unix.Utsname
	unix.Uname(&u)
	m := Machine{
		CPUs:   runtime.NumCPU(),
		Kernel: unix.ByteSliceToString(u.Release[:]),
		Go:     runtime.Version(),
		Date:   time.Now().UTC().Format("2006-01-02 15:04 UTC"),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	m.Load = loadAvg()
	return m
}

// progress is the live progress line: rewritten in place on a terminal,
// one line per phase otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		p.tty = err == nil
	}
	return p
}

func (p *progress) status(format string, args ...any) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", fmt.Sprintf(format, args...))
	}
}

func (p *progress) phase(msg string) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "l3iso-bench: %s: %s\n", time.Since(p.start).Round(time.Second), msg)
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K")
	}
}

// WriteFiles writes the Markdown report, the details JSON and the SVG
// chart into dir (bench/results by default in `make bench`).
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{
		"report.md":    r.WriteMarkdown,
		"details.json": r.WriteDetails,
		"results.json": r.WriteJSON,
		"chart.svg":    r.WriteSVG,
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
		}
	}
	return nil
}
