package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/veth"
)

// A Problem is something wrong with an installation that `l3iso up`
// repairs: what a process with access to the pins (BPF_OBJ_GET needs only
// file permission), a careless operator or a crash can leave — a detached
// link, a missing pin, a missing TCX attachment, a vanished host address.
type Problem struct {
	Object string `json:"object"`  // what: "links/l3_bind4", "interface lo", "address fd77::1"
	Issue  string `json:"problem"` // what is wrong with it
}

func (p Problem) String() string { return p.Object + ": " + p.Issue }

// RepairHint ends every report of problems.
const RepairHint = "run `l3iso up` to repair"

// Check reports what is wrong with the installation's own objects: map,
// link and program pins, and the links' real targets as the kernel reports
// them (a cgroup link's cgroup id, 0 once BPF_LINK_DETACH detached it; a
// TCX link's ifindex), not the configuration. The TCX links of netns
// containers' veths are the caller's (CheckTC).
func (st *State) Check() ([]Problem, error) {
	var out []Problem
	for _, name := range st.recovered {
		out = append(out, Problem{"maps/" + name, "pin missing (the programs still use the map)"})
	}
	spec, err := socketSpec()
	if err != nil {
		return nil, err
	}
	rootID, err := cgroup.ID(st.Config.CgroupRoot)
	if err != nil {
		out = append(out, Problem{"cgroup root " + st.Config.CgroupRoot, fmt.Sprintf("cannot be read (%v): every program is detached", err)})
	}
	names := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if p := st.checkCgroupLink(n, spec.Programs[n].AttachType, rootID != 0); p != nil {
			out = append(out, *p)
		}
	}
	tc, err := tcSpec()
	if err != nil {
		return nil, err
	}
	names = names[:0]
	for n := range tc.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(progsDir(st.Dir), n)); err != nil {
			out = append(out, Problem{"progs/" + n, "pin missing (new veths would get no program)"})
		}
	}
	for _, w := range st.HostTC() {
		if p := st.CheckTC(w); p != nil {
			out = append(out, *p)
		}
	}
	return out, nil
}

// Programs counts the program attachments the installation should have —
// every socket program at its cgroup (CgroupOf; sk_lookup: in this network
// namespace), the host-wide TCX links (HostTC) and the TCX links of each
// host-side veth in veths (VethTC) — and how many of them are attached as they
// should be (what Check and CheckTC find no problem with).
func (st *State) Programs(veths []string) (attached, expected int, err error) {
	spec, err := socketSpec()
	if err != nil {
		return 0, 0, err
	}
	rootID, _ := cgroup.ID(st.Config.CgroupRoot)
	for n, p := range spec.Programs {
		expected++
		if rootID != 0 && st.checkCgroupLink(n, p.AttachType, true) == nil {
			attached++
		}
	}
	want := st.HostTC()
	for _, v := range veths {
		want = append(want, st.VethTC(v)...)
	}
	for _, w := range want {
		expected++
		if st.CheckTC(w) == nil {
			attached++
		}
	}
	return attached, expected, nil
}

// Repinned are the maps whose pins OpenForUp found missing and pinned
// again: problems it repaired before anyone could Check.
func (st *State) Repinned() []Problem {
	var out []Problem
	for _, name := range st.repinned {
		out = append(out, Problem{"maps/" + name, "pin missing (the programs still used the map)"})
	}
	return out
}

// kernelName is a program's or map's name as the kernel keeps it
// (BPF_OBJ_NAME_LEN - 1 characters).
func kernelName(name string) string {
	if len(name) > 15 {
		return name[:15]
	}
	return name
}

// checkCgroupLink checks the pinned link of socket program name: that it
// exists, is attached to its cgroup (CgroupOf; compared only when
// rootKnown, i.e. the cgroup root could be read), with attach type at, and
// runs that program.
func (st *State) checkCgroupLink(name string, at ebpf.AttachType, rootKnown bool) *Problem {
	obj := "links/" + name
	var wantID uint64
	if rootKnown && at != ebpf.AttachSkLookup {
		id, err := cgroup.ID(st.CgroupOf(at))
		if err != nil {
			return &Problem{obj, fmt.Sprintf("its cgroup %s cannot be read (%v): %s runs nowhere", st.CgroupOf(at), err, name)}
		}
		wantID = id
	}
	info, p := st.pinnedLink(name, name+" is not attached (or only by someone else's descriptor)")
	if p != nil {
		return p
	}
	if at == ebpf.AttachSkLookup {
		ns := info.NetNs()
		switch {
		case ns == nil:
			return &Problem{obj, "is not a network namespace link"}
		case ns.NetnsIno == 0:
			return &Problem{obj, "detached (BPF_LINK_DETACH): the pin stays, but " + name + " runs nowhere"}
		case uint64(ns.NetnsIno) != netnsIno():
			return &Problem{obj, "attached to another network namespace than this one"}
		}
		if got := st.programName(info.Program); got != kernelName(name) {
			return &Problem{obj, fmt.Sprintf("runs program %q, not %s", got, name)}
		}
		return nil
	}
	cg := info.Cgroup()
	switch {
	case cg == nil:
		return &Problem{obj, "is not a cgroup link"}
	case cg.CgroupId == 0:
		return &Problem{obj, "detached (BPF_LINK_DETACH): the pin stays, but " + name + " runs nowhere"}
	case rootKnown && cg.CgroupId != wantID:
		return &Problem{obj, fmt.Sprintf("attached to cgroup id %d, not to %s (id %d)", cg.CgroupId, st.CgroupOf(at), wantID)}
	case ebpf.AttachType(cg.AttachType) != at:
		return &Problem{obj, fmt.Sprintf("attach type %s, want %s", ebpf.AttachType(cg.AttachType), at)}
	}
	if got := st.programName(info.Program); got != kernelName(name) {
		return &Problem{obj, fmt.Sprintf("runs program %q, not %s", got, name)}
	}
	return nil
}

// pinnedLink reads what the kernel says of the link pinned as links/pin,
// or says why it cannot: missing is what a missing pin means.
func (st *State) pinnedLink(pin, missing string) (*link.Info, *Problem) {
	obj := "links/" + pin
	l, err := link.LoadPinnedLink(filepath.Join(linksDir(st.Dir), pin), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &Problem{obj, "pin missing: " + missing}
	}
	if err != nil {
		return nil, &Problem{obj, fmt.Sprintf("cannot be opened as a link: %v", err)}
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, &Problem{obj, fmt.Sprintf("cannot be read: %v", err)}
	}
	return info, nil
}

// progInfo is the kernel's name and tag of program id ("" if it cannot
// say), asked once per State: every veth's link runs the same program.
func (st *State) progInfo(id ebpf.ProgramID) (name, tag string) {
	if pi, ok := st.progInfos[id]; ok {
		return pi[0], pi[1]
	}
	if p, err := ebpf.NewProgramFromID(id); err == nil {
		if pi, err := p.Info(); err == nil {
			name, tag = pi.Name, pi.Tag
		}
		p.Close()
	}
	if st.progInfos == nil {
		st.progInfos = map[ebpf.ProgramID][2]string{}
	}
	st.progInfos[id] = [2]string{name, tag}
	return name, tag
}

// programName is the kernel's name of program id (see progInfo).
func (st *State) programName(id ebpf.ProgramID) string {
	name, _ := st.progInfo(id)
	return name
}

// TCWant is a TCX link l3iso should have: program Program on the Attach
// hook of interface Interface, pinned as links/Pin.
type TCWant struct {
	Pin       string
	Interface string
	Program   string
	Attach    ebpf.AttachType
}

// HostTC are the host-wide TCX links the configuration asks for:
// ProgGroup on lo and on the uplink and each extra uplink (and ProgGroupOut
// on their egress), ProgUplink on them in direct delivery, ProgBridge on
// the bridge in bridge delivery.
func (st *State) HostTC() []TCWant {
	out := []TCWant{{groupLinkName("lo"), "lo", ProgGroup, ebpf.AttachTCXIngress}}
	for _, up := range st.Uplinks() {
		out = append(out,
			TCWant{groupLinkName(up), up, ProgGroup, ebpf.AttachTCXIngress},
			TCWant{groupLinkName(up) + "-out", up, ProgGroupOut, ebpf.AttachTCXEgress})
		if st.Config.Delivery == maps.DeliveryDirect {
			out = append(out, TCWant{tcLinkName(up), up, ProgUplink, ebpf.AttachTCXIngress})
		}
	}
	if st.Config.Delivery == maps.DeliveryBridge {
		out = append(out, st.BridgeTC())
	}
	return out
}

// Uplinks are the uplink (if any) and the extra uplinks: the interfaces
// where the outside's traffic for the containers arrives.
func (st *State) Uplinks() []string {
	var out []string
	if st.Config.Uplink != "" {
		out = append(out, st.Config.Uplink)
	}
	return append(out, st.Config.ExtraUplinks...)
}

// BridgeTC is the TCX link of the bridge in delivery bridge: ProgBridge
// on its ingress.
func (st *State) BridgeTC() TCWant {
	return TCWant{tcLinkName(veth.BridgeName), veth.BridgeName, ProgBridge, ebpf.AttachTCXIngress}
}

// VethTC are the TCX links the host-side veth ifname of a netns container
// should have in the current delivery: on its ingress ProgVeth (direct) or
// ProgGuard, on its egress ProgVethOut.
func (st *State) VethTC(ifname string) []TCWant {
	prog := ProgGuard
	if st.Config.Delivery == maps.DeliveryDirect {
		prog = ProgVeth
	}
	return []TCWant{
		{tcLinkName(ifname), ifname, prog, ebpf.AttachTCXIngress},
		{tcOutLinkName(ifname), ifname, ProgVethOut, ebpf.AttachTCXEgress},
	}
}

// CheckVethTC is CheckTC for each of VethTC(ifname).
func (st *State) CheckVethTC(ifname string) []Problem {
	var out []Problem
	for _, w := range st.VethTC(ifname) {
		if p := st.CheckTC(w); p != nil {
			out = append(out, *p)
		}
	}
	return out
}

// CheckTC checks that the pinned link w.Pin is attached to w.Interface as it
// is now (the ifindex the kernel reports: 0 once detached, another one if
// the interface was made anew) and runs w.Program.
func (st *State) CheckTC(w TCWant) *Problem {
	obj := "links/" + w.Pin
	nl, err := netlink.LinkByName(w.Interface)
	if err != nil {
		return &Problem{"interface " + w.Interface, fmt.Sprintf("missing (%v): %s cannot run on it", err, w.Program)}
	}
	info, p := st.pinnedLink(w.Pin, fmt.Sprintf("%s is not attached to %s", w.Program, w.Interface))
	if p != nil {
		return p
	}
	tcx := info.TCX()
	switch {
	case tcx == nil:
		return &Problem{obj, "is not a TCX link"}
	case tcx.Ifindex == 0:
		return &Problem{obj, fmt.Sprintf("detached: %s runs on no interface (want %s %s)", w.Program, w.Interface, direction(w.Attach))}
	case int(tcx.Ifindex) != nl.Attrs().Index:
		return &Problem{obj, fmt.Sprintf("attached to interface index %d, but %s is index %d (made anew?)", tcx.Ifindex, w.Interface, nl.Attrs().Index)}
	case ebpf.AttachType(tcx.AttachType) != w.Attach:
		return &Problem{obj, fmt.Sprintf("on the %s of %s, want its %s", direction(ebpf.AttachType(tcx.AttachType)), w.Interface, direction(w.Attach))}
	}
	if got := st.programName(info.Program); got != kernelName(w.Program) {
		return &Problem{obj, fmt.Sprintf("runs program %q on %s, not %s", got, w.Interface, w.Program)}
	}
	return nil
}

func direction(at ebpf.AttachType) string {
	switch at {
	case ebpf.AttachTCXIngress:
		return "ingress"
	case ebpf.AttachTCXEgress:
		return "egress"
	}
	return at.String()
}

// PruneTC removes the pinned TCX links (links/tc-*) that are not in keep
// (pin names): those of an uplink l3iso no longer uses, of interfaces that
// are gone, of containers that are gone. It reports the pins it removed.
func (st *State) PruneTC(keep map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(linksDir(st.Dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", linksDir(st.Dir), err)
	}
	var gone []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "tc-") || keep[e.Name()] {
			continue
		}
		if err := st.DetachTCPin(e.Name()); err != nil {
			return gone, err
		}
		gone = append(gone, e.Name())
	}
	return gone, nil
}

// mapsOfPrograms returns the maps the running programs of this
// installation use (those of its pinned links and programs), by the
// kernel's name of the map, for the names in want. The caller closes them.
func (st *State) mapsOfPrograms(want map[string]bool) map[string]*ebpf.Map {
	found := map[string]*ebpf.Map{}
	var progs []ebpf.ProgramID
	for _, sub := range []string{linksDir(st.Dir), progsDir(st.Dir)} {
		entries, _ := os.ReadDir(sub)
		for _, e := range entries {
			pin := filepath.Join(sub, e.Name())
			if sub == linksDir(st.Dir) {
				if l, err := link.LoadPinnedLink(pin, nil); err == nil {
					if info, err := l.Info(); err == nil {
						progs = append(progs, info.Program)
					}
					l.Close()
				}
				continue
			}
			if p, err := ebpf.LoadPinnedProgram(pin, nil); err == nil {
				if info, err := p.Info(); err == nil {
					if id, ok := info.ID(); ok {
						progs = append(progs, id)
					}
				}
				p.Close()
			}
		}
	}
	seen := map[ebpf.MapID]bool{}
	for _, id := range progs {
		if len(found) == len(want) {
			break
		}
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			continue
		}
		ids, _ := info.MapIDs()
		for _, mid := range ids {
			if seen[mid] {
				continue
			}
			seen[mid] = true
			m, err := ebpf.NewMapFromID(mid)
			if err != nil {
				continue
			}
			mi, err := m.Info()
			if err != nil || !want[mi.Name] || found[mi.Name] != nil {
				m.Close()
				continue
			}
			found[mi.Name] = m
		}
	}
	return found
}

// recordsMap holds the containers' records. No program uses it, so nothing
// but its pin keeps it: once the pin is gone, so are the records (every
// l3iso had it: it is never a map an upgrade adds).
const recordsMap = "l3_metas"

// ErrRecordsLost says the containers' records are gone (see recordsMap).
var ErrRecordsLost = errors.New("the containers' records are lost")

// recordsLost returns an error wrapping ErrRecordsLost when the pins in dir
// are an installation (l3_config or links are pinned) without recordsMap.
func recordsLost(dir string) error {
	if _, err := os.Stat(filepath.Join(mapsDir(dir), recordsMap)); !errors.Is(err, os.ErrNotExist) {
		return nil // the usual case: one stat per command
	}
	if _, err := os.Stat(filepath.Join(mapsDir(dir), "l3_config")); err != nil {
		if links, _ := os.ReadDir(linksDir(dir)); len(links) == 0 {
			return nil // nothing installed
		}
	}
	return fmt.Errorf("%w: the pin maps/%s in %s was removed, and no program holds that map: l3iso cannot repair it. The pinned programs keep enforcing the last policy; run `l3iso down` (it removes every container and pin; addresses it configured stay), then `l3iso up` and apply the policy again", ErrRecordsLost, recordsMap, dir)
}

// missingMaps lists the maps whose pins are missing from dir's maps.
func missingMaps(dir string) map[string]bool {
	out := map[string]bool{}
	for _, name := range maps.PinNames() {
		if _, err := os.Stat(filepath.Join(mapsDir(dir), name)); errors.Is(err, os.ErrNotExist) {
			out[name] = true
		}
	}
	return out
}

// repinMaps pins again, from the programs that use them, the maps whose
// pins are missing (for up, under the exclusive lock). Maps no program uses
// stay missing: PinMissing then makes them.
func (st *State) repinMaps() error {
	missing := missingMaps(st.Dir)
	if len(missing) == len(maps.PinNames()) {
		if _, err := os.Stat(linksDir(st.Dir)); err != nil {
			return nil // nothing installed, or nothing left to take them from
		}
	}
	if len(missing) == 0 {
		return nil
	}
	found := st.mapsOfPrograms(missing)
	if len(found) == 0 {
		return nil
	}
	if err := os.MkdirAll(mapsDir(st.Dir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", mapsDir(st.Dir), err)
	}
	names := make([]string, 0, len(found))
	for n := range found {
		names = append(names, n)
	}
	sort.Strings(names)
	defer func() {
		for _, m := range found {
			m.Close()
		}
	}()
	for _, n := range names {
		if err := found[n].Pin(filepath.Join(mapsDir(st.Dir), n)); err != nil {
			return fmt.Errorf("pin map %s again: %w", n, err)
		}
		st.repinned = append(st.repinned, n)
	}
	return nil
}
