package engine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// What limits the intervals: the machine's other work. The engine reads
// /proc/stat (steal time: the hypervisor ran something else on a vCPU;
// busy time) and /proc/softirqs (on which CPU the network softirqs ran)
// around the rounds, and steal time around each round.

// cpuTicks are one CPU's times from /proc/stat, in USER_HZ ticks.
type cpuTicks struct {
	busy, idle, steal, softirq uint64
}

// sysSample is one reading of /proc/stat and /proc/softirqs.
type sysSample struct {
	all   cpuTicks   // the "cpu" line
	cpus  []cpuTicks // cpu0, cpu1, ...
	netRx []uint64   // NET_RX softirqs per CPU
	netTx []uint64   // NET_TX softirqs per CPU
}

// readSys reads /proc/stat and /proc/softirqs.
func readSys() (sysSample, error) {
	var s sysSample
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		var v [8]uint64 // user nice system idle iowait irq softirq steal
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return s, fmt.Errorf("/proc/stat: %q: %w", l, err)
			}
		}
		t := cpuTicks{busy: v[0] + v[1] + v[2] + v[5] + v[6], idle: v[3] + v[4], steal: v[7], softirq: v[6]}
		if f[0] == "cpu" {
			s.all = t
		} else {
			s.cpus = append(s.cpus, t)
		}
	}
	b, err = os.ReadFile("/proc/softirqs")
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || (f[0] != "NET_RX:" && f[0] != "NET_TX:") {
			continue
		}
		var per []uint64
		for _, x := range f[1:] {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return s, fmt.Errorf("/proc/softirqs: %q: %w", l, err)
			}
			per = append(per, v)
		}
		if f[0] == "NET_RX:" {
			s.netRx = per
		} else {
			s.netTx = per
		}
	}
	return s, nil
}

func (t cpuTicks) total() uint64 { return t.busy + t.idle + t.steal }

// stealPct is the share of the time between a and b the hypervisor took
// from the CPUs (all of them), in %.
func stealPct(a, b cpuTicks) float64 {
	d := b.total() - a.total()
	if d == 0 {
		return 0
	}
	return 100 * float64(b.steal-a.steal) / float64(d)
}

// CPULoad is what one CPU did while the rounds ran.
type CPULoad struct {
	CPU        int     `json:"cpu"`
	BusyPct    float64 `json:"busy_pct"`    // user, nice, system, irq, softirq: everything that ran on it, the benchmark's and others'
	SoftirqPct float64 `json:"softirq_pct"` // of which softirq (as ticks sampled it)
	StealPct   float64 `json:"steal_pct"`   // taken by the hypervisor
	NetRx      uint64  `json:"net_rx"`      // NET_RX softirqs that ran on it
	NetTx      uint64  `json:"net_tx"`      // NET_TX softirqs
}

// Load is the machine's load while the rounds ran (Report.Load).
type Load struct {
	Seconds float64   `json:"seconds"`
	CPUs    []CPULoad `json:"cpus"`
	// RoundStealPct is the steal time of every round, all CPUs, in %.
	RoundStealPct []float64 `json:"round_steal_pct"`
	// QueueWaitMsPerS is, for every run, how long the load generator's
	// threads waited on a run queue while another task had their CPU,
	// in ms per second of the run (summed over the threads).
	QueueWaitMsPerS Series `json:"queue_wait_ms_per_s"`
	LoadAvgStart    string `json:"loadavg_start"`
	LoadAvgEnd      string `json:"loadavg_end"`
}

// load summarises the time between two samples.
func load(a, b sysSample, seconds float64) Load {
	l := Load{Seconds: seconds}
	for i := range min(len(a.cpus), len(b.cpus)) {
		x, y := a.cpus[i], b.cpus[i]
		d := float64(y.total() - x.total())
		if d == 0 {
			d = 1
		}
		c := CPULoad{CPU: i, BusyPct: 100 * float64(y.busy-x.busy) / d, SoftirqPct: 100 * float64(y.softirq-x.softirq) / d, StealPct: 100 * float64(y.steal-x.steal) / d}
		if i < len(a.netRx) && i < len(b.netRx) {
			c.NetRx = b.netRx[i] - a.netRx[i]
		}
		if i < len(a.netTx) && i < len(b.netTx) {
			c.NetTx = b.netTx[i] - a.netTx[i]
		}
		l.CPUs = append(l.CPUs, c)
	}
	return l
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
