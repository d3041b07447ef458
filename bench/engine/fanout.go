package engine

// bcast_fanout (issue 4): what one broadcast datagram from outside costs
// when it is for a subnet of N containers of which two listen. The bridge
// floods it to all N veths and N network stacks; direct delivery copies it
// into the listeners' veths only (l3_tc_group); shared mode copies it back
// into the uplink's ingress once per listener and steers each copy to its
// socket.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l3iso/l3iso/pkg/veth"
)

// Why the other configurations have no bcast_fanout figure.
var fanoutLeftOut = map[string]string{
	Loopback:  "no containers: one stack with no l3iso program has no fan-out to compare; bcast_fanout is compared with bridge",
	HookFloor: "no containers: do-nothing programs have no fan-out to compare",
	BridgeCT:  "not set up: bridge is the baseline of issue 4, and another installation of the same size would lengthen every run",
	Routed:    "routed delivery carries no broadcast into netns containers: the host routes the subnet's broadcast address like a unicast address, back out of the uplink (0 of 100 datagrams reached two listeners when checked by hand)",
}

// setupFanout makes the bcast_fanout installations — bridge, shared and
// direct, each with o.Fanout containers on 10.78.0.0/24 — and their
// targets. Their installations are added to installs (for the up timing).
func (b *bench) setupFanout(ctx context.Context, cpuServer, cpuClient int, installs *[]*install, unavailable map[string]string) error {
	for _, f := range []struct{ config, tag, delivery, mode string }{
		{Bridge, "fb", "bridge", "netns"},
		// Shared-mode containers need the uplink too: l3_tc_group on it
		// sees the outside's broadcasts. The delivery flag is moot.
		{Shared, "fs", "direct", "shared"},
		{Direct, "fd", "direct", "netns"},
	} {
		b.pr.status("setting up %s for bcast_fanout (%d containers)", f.config, b.o.Fanout)
		in, err := b.w.newInstall(ctx, f.tag, f.delivery, false)
		if err != nil {
			return err
		}
		in.fanout, in.mode = true, f.mode
		if _, err := in.populate(ctx, b.o.Fanout); err != nil {
			return err
		}
		if f.delivery == "bridge" {
			if err := in.forwardBroadcasts(); err != nil {
				return err
			}
		}
		*installs = append(*installs, in)
		t := &target{config: f.config, containers: b.o.Fanout, fanout: true, in: in, client: in.broadcaster(cpuClient)}
		for _, i := range in.listening() {
			t.listenAt = append(t.listenAt, in.listener(i, cpuServer))
		}
		b.targets = append(b.targets, t)
	}
	b.epoch = time.Now()
	if b.softirqd = softirqThreads(); len(b.softirqd) == 0 {
		b.pr.phase("no ksoftirqd threads visible: bcast_cpu_ns leaves out deferred softirq work")
	}
	for c, why := range fanoutLeftOut {
		unavailable[BcastFanout+" in "+c] = why
	}
	return nil
}

// runFanout runs bcast_fanout in t for d. Like udp_pps it is measured at
// the receivers, between 20 % and 80 % of the sender's run: each
// listener's datagrams per second (bcast_fanout is their sum), and the CPU
// time the delivery cost over the same window divided by the broadcasts
// that reached the listeners' sockets meanwhile (the mean over the
// listeners of what each received plus what its socket dropped because
// its receive buffer was full): bcast_cpu_ns. The drops count because
// the path delivered those datagrams: the two listeners, on one CPU, fall
// behind a fast path (in direct and shared 10–30 % of the copies overflowed
// their buffers here), never behind a slow one — per datagram received,
// the faster path would pay for its listeners' slowness.
//
// That CPU time is the sender's (all its threads) plus the ksoftirqd
// threads', from /proc/PID/task/*/schedstat, to the nanosecond. The whole
// delivery runs there: the kernel does the softirq work a datagram raises
// in the context of the task that raised it — the sender's, pinned to its
// CPU — or, when it defers it, in ksoftirqd: the host's forwarding and the
// bridge's flood into every veth and stack, or l3_tc_group's copies, up to
// the listeners' socket queues. Left out: the listeners' receive calls
// (the same work per datagram everywhere, except that at a low rate they
// sleep and are woken for each datagram, which would charge the slower
// path twice), and the machine's other load (other sessions share these
// CPUs). The machine's busy time per broadcast (/proc/stat), which counts
// everything, is kept in the details as machine_cpu_ns.
func (b *bench) runFanout(ctx context.Context, t *target, d time.Duration) (runFigures, error) {
	if err := t.cli.Send(fmt.Sprintf("%s %d", BcastFanout, d.Nanoseconds())); err != nil {
		return runFigures{}, err
	}
	snaps := [2][]snap{make([]snap, len(t.listeners)), make([]snap, len(t.listeners))}
	var cpu, at [2]int64
	for i := range snaps {
		if err := untilSnap(ctx, d, i); err != nil {
			return runFigures{}, err
		}
		var err error
		at[i] = time.Since(b.epoch).Nanoseconds()
		if cpu[i], err = b.fanoutCPU(t); err != nil {
			return runFigures{}, err
		}
		// Ask all, then read: the listeners' snapshots are then as
		// close together as their scheduling allows.
		for _, l := range t.listeners {
			if err := l.Send("snap"); err != nil {
				return runFigures{}, err
			}
		}
		for j, l := range t.listeners {
			if err := l.Recv(ctx, 30*time.Second, &snaps[i][j]); err != nil {
				return runFigures{}, err
			}
		}
	}
	var res RunResult
	if err := t.cli.Recv(ctx, d+60*time.Second, &res); err != nil {
		return runFigures{}, err
	}
	t.sent += res.Ops
	if res.Error != "" {
		return runFigures{}, fmt.Errorf("%s in %s: %s", BcastFanout, t.label(), res.Error)
	}
	s1, s2 := snaps[0], snaps[1]
	var got []string
	for j := range t.listeners {
		got = append(got, fmt.Sprintf("container %d: %d in the window, %d in all", t.in.listening()[j], s2[j].UDP-s1[j].UDP, s2[j].UDP))
	}
	var sum, lo, hi, arrived float64
	for j := range t.listeners {
		n := s2[j].UDP - s1[j].UDP
		if n == 0 {
			// errStarved: retried, then missing this round, as in udp_pps.
			return runFigures{}, fmt.Errorf("%s in %s: a listener received nothing between 20 %% and 80 %% of the run (%s; %d datagrams sent to %s:%d): %w",
				BcastFanout, t.label(), strings.Join(got, "; "), res.Ops, fanoutBcast, fanoutPort, errStarved)
		}
		win := float64(s2[j].Ns-s1[j].Ns) / 1e9
		rate := float64(n) / win
		sum += rate
		if j == 0 || rate < lo {
			lo = rate
		}
		hi = max(hi, rate)
		arrived += float64(n+s2[j].Drops-s1[j].Drops) / win
	}
	perBcast := arrived / float64(len(t.listeners)) // broadcasts per second that reached a listener's socket
	// CPUs busy (CPU-seconds per second) over a window, per broadcast.
	perDatagram := func(busy, wall int64) float64 {
		if busy <= 0 || wall <= 0 {
			return math.NaN()
		}
		return float64(busy) / float64(wall) * 1e9 / perBcast
	}
	return runFigures{vals: map[string]float64{
		BcastFanout:  sum,
		BcastCPUNs:   perDatagram(cpu[1]-cpu[0], at[1]-at[0]),
		bcastMachine: perDatagram(s2[0].Busy-s1[0].Busy, s2[0].Ns-s1[0].Ns),
		bcastBalance: lo / hi,
	}, ops: res.Ops}, nil
}

// fanoutCPU is the CPU time so far of t's sender and of the ksoftirqd
// threads, in nanoseconds.
func (b *bench) fanoutCPU(t *target) (int64, error) {
	pids := append(slices.Clone(b.softirqd), t.cli.Pid())
	var total int64
	for _, pid := range pids {
		ns, err := taskCPU(pid)
		if err != nil {
			return 0, err
		}
		total += ns
	}
	return total, nil
}

// taskCPU sums the run time of every thread of process pid: the first
// field of /proc/PID/task/*/schedstat, in nanoseconds (the scheduler's
// clock, not tick samples). A worker is the process the engine started
// (no helper in between).
func taskCPU(pid int) (int64, error) {
	var total int64
	threads, err := taskSched(pid)
	for _, t := range threads {
		total += t[0]
	}
	return total, err
}

// taskSched reads, for every thread of process pid (by its
// /proc/PID/task/TID/schedstat path), the time it has run and the time it
// has waited on a run queue for a CPU: the first two fields, in
// nanoseconds.
func taskSched(pid int) (map[string][2]int64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return nil, fmt.Errorf("CPU time of process %d: no /proc/%d/task/*/schedstat (%v): has it exited?", pid, pid, err)
	}
	out := make(map[string][2]int64, len(tasks))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that just exited
		}
		fs := strings.Fields(string(b))
		if len(fs) < 2 {
			continue
		}
		r, err1 := strconv.ParseInt(fs[0], 10, 64)
		w, err2 := strconv.ParseInt(fs[1], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", f, b, err)
		}
		out[f] = [2]int64{r, w}
	}
	return out, nil
}

// softirqThreads finds the ksoftirqd/N kernel threads (none when this
// process does not see the machine's kernel threads, e.g. in a pid
// namespace: their share is then missing from bcast_cpu_ns).
func softirqThreads() []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || !strings.HasPrefix(string(b), "ksoftirqd/") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// fanoutChecks reads, after the rounds, what each bcast_fanout path's own
// counters say, as proof that it delivered the way it claims: how many of
// the datagrams sent in all runs each listener received (never more:
// each broadcast reaches a listener once), l3iso's group_copies of a
// listening and of a non-listening container (shared, direct), and the
// kernel's Udp IgnoredMulti in a non-listening netns container
// (broadcasts its stack received for a port nobody listens on: every one
// in bridge, none in direct). What contradicts the claim is also reported
// under "Not measured".
func (b *bench) fanoutChecks(ctx context.Context, unavailable map[string]string) []string {
	var out []string
	for _, t := range b.targets {
		if !t.fanout || t.cli == nil {
			continue
		}
		in := t.in
		listener, idle := in.containerName(in.listening()[0]), in.containerName(2)
		var facts, wrong []string
		for j, l := range t.listeners {
			var s snap
			err := l.Call(ctx, "snap", 30*time.Second, &s)
			switch {
			case err != nil:
				wrong = append(wrong, err.Error())
			case s.UDP+s.Drops > t.sent && t.broken == nil:
				wrong = append(wrong, fmt.Sprintf("listener in container %d got %d datagrams (%d received, %d dropped at its full receive buffer), %d were sent: duplicates",
					in.listening()[j], s.UDP+s.Drops, s.UDP, s.Drops, t.sent))
			default:
				facts = append(facts, fmt.Sprintf("listener in container %d received %d and dropped %d (receive buffer full) of %d datagrams sent",
					in.listening()[j], s.UDP, s.Drops, t.sent))
			}
		}
		if in.containerMode() == "netns" {
			ign, err := udpCounter(veth.NetnsPath(in.key(idle)), "IgnoredMulti")
			switch {
			case err != nil:
				wrong = append(wrong, err.Error())
			case t.config == Bridge && ign == 0:
				wrong = append(wrong, fmt.Sprintf("non-listening container %s: Udp IgnoredMulti 0, so the bridge did not flood the broadcasts to it", idle))
			case t.config != Bridge && ign != 0:
				wrong = append(wrong, fmt.Sprintf("non-listening container %s: Udp IgnoredMulti %d, so broadcasts reached a container that does not listen", idle, ign))
			default:
				facts = append(facts, fmt.Sprintf("non-listening container %s: Udp IgnoredMulti %d", idle, ign))
			}
		}
		if t.config != Bridge {
			cl, err1 := in.counters(ctx, listener)
			ci, err2 := in.counters(ctx, idle)
			switch {
			case err1 != nil || err2 != nil:
				wrong = append(wrong, fmt.Sprintf("l3iso stats: %v %v", err1, err2))
			case cl["group_copies"] == 0:
				wrong = append(wrong, fmt.Sprintf("listening container %s: group_copies 0, so l3iso did not deliver the broadcasts", listener))
			case ci["group_copies"] != 0:
				wrong = append(wrong, fmt.Sprintf("non-listening container %s: group_copies %d", idle, ci["group_copies"]))
			default:
				facts = append(facts, fmt.Sprintf("group_copies: listening %s %d (group_copies_lost %d), non-listening %s 0",
					listener, cl["group_copies"], cl["group_copies_lost"], idle))
			}
		}
		if len(wrong) > 0 {
			unavailable[BcastFanout+" in "+t.config+" (check)"] = strings.Join(wrong, "; ")
			facts = append([]string{"**unexpected**: " + strings.Join(wrong, "; ")}, facts...)
		}
		out = append(out, t.config+": "+strings.Join(facts, "; "))
	}
	return out
}
