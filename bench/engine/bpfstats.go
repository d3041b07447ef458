package engine

// bpf_stats: the kernel's own account of each program's run time, the
// second, steadier measure beside the packets per second (bench/README.md,
// "bpf_stats"). After the rounds, with run-time statistics on
// (BPF_ENABLE_STATS, as kernel.bpf_stats_enabled=1 does, for as long as
// the engine holds the descriptor), each configuration runs udp_pps (and
// sendto where it is measured) a few more times; before and after each run
// the engine reads run_time_ns and run_cnt of every program of the
// configuration's installation — l3iso's, found through its pins — and of
// the do-nothing (hook_floor) and bare_peer programs. A program's figure
// is the median over those runs of its run time per run.
//
// Statistics cost something of their own: the kernel reads the clock
// before and after every run (~105 ns per run in this guest). The
// do-nothing programs measure it in the same phase — they do nothing else
// — and their median is subtracted from every program's figure.
//
// The phase runs apart from the rounds because the statistics slow every
// program on the machine while they are on: the rounds' figures stay
// those of a machine without them.

import (
	"errors"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// bpfStatsRuns is the number of runs per configuration and workload in
// the bpf_stats phase.
const bpfStatsRuns = 3

// ProgramCost is one program's cost in one configuration and workload.
type ProgramCost struct {
	Config    string  `json:"config"`
	Workload  string  `json:"workload"`
	Program   string  `json:"program"`     // the kernel's name of it (15 characters at most)
	NsPerRun  float64 `json:"ns_per_run"`  // median over the runs, bpf_stats' own cost subtracted
	RunsPerOp float64 `json:"runs_per_op"` // program runs per datagram (udp_pps: received; sendto: sent)
}

// BPFStats is the bpf_stats phase's result (Report.BPFStats).
type BPFStats struct {
	// OwnNs is what bpf_stats adds to a run: the median ns per run of the
	// do-nothing programs, subtracted from every figure in Programs.
	OwnNs    float64       `json:"own_ns"`
	Runs     int           `json:"runs"` // per configuration and workload
	Programs []ProgramCost `json:"programs"`
}

// progStat is one reading of a program's statistics.
type progStat struct {
	name     string
	runtime  int64 // ns
	runCount uint64
}

// programSet is the programs whose statistics a configuration reads.
type programSet map[ebpf.ProgramID]*ebpf.Program

func (ps programSet) close() {
	for _, p := range ps {
		p.Close()
	}
}

// read reads every program's statistics.
func (ps programSet) read() (map[ebpf.ProgramID]progStat, error) {
	out := make(map[ebpf.ProgramID]progStat, len(ps))
	for id, p := range ps {
		info, err := p.Info()
		if err != nil {
			return nil, err
		}
		st, err := p.Stats()
		if err != nil {
			return nil, err
		}
		out[id] = progStat{name: info.Name, runtime: st.Runtime.Nanoseconds(), runCount: st.RunCount}
	}
	return out, nil
}

// add adds p to the set (by its id: the set opens its own descriptor).
func (ps programSet) add(p *ebpf.Program) error {
	info, err := p.Info()
	if err != nil {
		return err
	}
	id, ok := info.ID()
	if !ok {
		return errors.New("program info without an id")
	}
	return ps.addID(id)
}

// addID adds the program with the given id.
func (ps programSet) addID(id ebpf.ProgramID) error {
	if _, dup := ps[id]; dup {
		return nil
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return err
	}
	ps[id] = p
	return nil
}

// addLinks adds the programs of links.
func (ps programSet) addLinks(links []link.Link) error {
	for _, l := range links {
		info, err := l.Info()
		if err != nil {
			return err
		}
		if err := ps.addID(info.Program); err != nil {
			return err
		}
	}
	return nil
}

// pinnedPrograms finds every program pinned under dir, directly or as
// the program of a pinned link, whatever the directory layout. (The
// kernel opens program and link pins read-write only: no ReadOnly.)
func pinnedPrograms(dir string) (programSet, error) {
	ps := programSet{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
			defer p.Close()
			return ps.add(p)
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return nil // a map, or a pin of another kind
		}
		defer l.Close()
		return ps.addLinks([]link.Link{l})
	})
	if err != nil {
		ps.close()
		return nil, err
	}
	return ps, nil
}

// enableStats turns the kernel's run-time statistics on until the
// returned function is called.
func enableStats() (func(), error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, err
	}
	return func() { c.Close() }, nil
}

// costs turns the per-run readings of one configuration and workload into
// ns per run and runs per op, by program name (programs that did not run
// are left out). ops is the operations of each run.
func costs(before, after []map[ebpf.ProgramID]progStat, ops []float64) map[string][2]float64 {
	perRun := map[string][]float64{}
	perOp := map[string][]float64{}
	for i := range before {
		byName := map[string][2]float64{} // runtime, count: programs of one name summed
		for id, b := range before[i] {
			a, ok := after[i][id]
			if !ok || a.runCount <= b.runCount {
				continue
			}
			v := byName[a.name]
			v[0] += float64(a.runtime - b.runtime)
			v[1] += float64(a.runCount - b.runCount)
			byName[a.name] = v
		}
		for name, v := range byName {
			perRun[name] = append(perRun[name], v[0]/v[1])
			if ops[i] > 0 {
				perOp[name] = append(perOp[name], v[1]/ops[i])
			}
		}
	}
	out := map[string][2]float64{}
	for _, name := range slices.Sorted(maps.Keys(perRun)) {
		out[name] = [2]float64{Series(perRun[name]).Median(), Series(perOp[name]).Median()}
	}
	return out
}

// isDoNothing tells the do-nothing programs (AttachDoNothing) by name.
func isDoNothing(name string) bool { return strings.HasPrefix(name, doNothingName) }
