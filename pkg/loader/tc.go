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
)

// The TC programs of netns containers (bpf/tc.c).
const (
	// ProgUplink delivers packets from the uplink straight into containers
	// (delivery direct).
	ProgUplink = "l3_tc_uplink"
	// ProgVeth checks and delivers what leaves a container (delivery
	// direct), on its host-side veth.
	ProgVeth = "l3_tc_veth"
	// ProgGuard only checks the source of what leaves a container (delivery
	// routed and bridge), on its host-side veth.
	ProgGuard = "l3_tc_guard"
	// ProgGroup steers broadcast and multicast datagrams to the
	// shared-mode containers that listen for them, on lo and the uplink.
	ProgGroup = "l3_tc_group"
	// ProgGroupOut does the same for broadcasts this host sends out of the
	// uplink (TCX egress).
	ProgGroupOut = "l3_tc_group_out"
	// ProgVethOut gives a shared container's shadow UDP port its
	// application port back on the egress of every host-side veth (any
	// delivery).
	ProgVethOut = "l3_tc_veth_out"
	// ProgBridge steers what netns containers send to a shared container
	// through the bridge (delivery bridge), on the bridge's ingress.
	ProgBridge = "l3_tc_bridge"
)

// groupLinkName is the pin name of the TCX ingress link of ProgGroup on
// interface ifname (it chains with the interface's other l3iso program).
func groupLinkName(ifname string) string { return "tc-" + ifname + "-group" }

func progsDir(dir string) string { return filepath.Join(dir, "progs") }

// tcLinkName is the pin name of the TCX ingress link on interface ifname.
func tcLinkName(ifname string) string { return "tc-" + ifname + "-ingress" }

// tcOutLinkName is the pin name of the TCX egress link (ProgVethOut) on
// host-side veth ifname.
func tcOutLinkName(ifname string) string { return "tc-" + ifname + "-egress" }

// ensureTCPrograms loads the TC programs against the pinned maps and pins
// them in <bpffs>/progs, where container commands pick them up without
// loading anything. A program whose tag changed (a newer binary) replaces
// its pin with one rename, and every pinned TC link running the old one is
// switched to it in place with link.Update.
func (st *State) ensureTCPrograms() (changed bool, err error) {
	spec, err := tcSpec()
	if err != nil {
		return false, err
	}
	coll, err := st.loadAgainstPins(spec, "TC programs")
	if err != nil {
		return false, err
	}
	defer coll.Close()
	dir := progsDir(st.Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	names := make([]string, 0, len(coll.Programs))
	for n := range coll.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	replaced := map[string]*ebpf.Program{}
	for _, name := range names {
		prog := coll.Programs[name]
		pin := filepath.Join(dir, name)
		if old, err := ebpf.LoadPinnedProgram(pin, nil); err == nil {
			same, err := sameTag(old, prog)
			old.Close()
			if err != nil {
				return changed, fmt.Errorf("inspect pinned program %s: %w", pin, err)
			}
			if same {
				continue
			}
		}
		tmp := filepath.Join(dir, "tmp-"+name) // bpffs refuses names with a dot
		os.Remove(tmp)
		if err := prog.Pin(tmp); err != nil {
			return changed, fmt.Errorf("pin program %s: %w", name, err)
		}
		if err := os.Rename(tmp, pin); err != nil {
			os.Remove(tmp)
			return changed, fmt.Errorf("move pinned program %s into place: %w", name, err)
		}
		replaced[name] = prog
		changed = true
	}
	if len(replaced) == 0 {
		return changed, nil
	}
	// Switch the links that run an older build of a replaced program.
	links, err := st.tcLinks()
	if err != nil {
		return changed, err
	}
	for _, tl := range links {
		prog, ok := replaced[tl.Program]
		if !ok || tl.l == nil {
			tl.close()
			continue
		}
		err := tl.l.Update(prog)
		tl.close()
		if err != nil {
			return changed, fmt.Errorf("upgrade TC program %s on %s in place: %w", tl.Program, tl.Interface, err)
		}
	}
	return changed, nil
}

func sameTag(a, b *ebpf.Program) (bool, error) {
	ai, err := a.Info()
	if err != nil {
		return false, err
	}
	bi, err := b.Info()
	if err != nil {
		return false, err
	}
	return ai.Tag == bi.Tag, nil
}

// program returns the pinned TC program name, opened once per State.
func (st *State) program(name string) (*ebpf.Program, error) {
	if p, ok := st.progs[name]; ok {
		return p, nil
	}
	pin := filepath.Join(progsDir(st.Dir), name)
	p, err := ebpf.LoadPinnedProgram(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: TC program %s is not pinned in %s: run `l3iso up` (with this version of l3iso) first", ErrNotUp, name, progsDir(st.Dir))
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned program %s: %w", pin, err)
	}
	if st.progs == nil {
		st.progs = map[string]*ebpf.Program{}
	}
	st.progs[name] = p
	return p, nil
}

// AttachTC makes the TCX ingress link of l3iso on interface ifname (index
// ifindex) run program prog (ProgUplink, ProgVeth or ProgGuard): it attaches
// and pins a new link (<bpffs>/links/tc-IFNAME-ingress), switches an
// existing one to prog in place (no moment without a program), or replaces
// a pin whose interface is gone (a recreated interface of the same name).
// It reports whether anything changed.
func (st *State) AttachTC(ifname string, ifindex int, prog string) (bool, error) {
	return st.attachTC(tcLinkName(ifname), ifname, ifindex, prog, ebpf.AttachTCXIngress)
}

// AttachTCWant makes link w (VethTC) exist on interface index ifindex, as
// AttachTC does for the ingress link.
func (st *State) AttachTCWant(w TCWant, ifindex int) (bool, error) {
	return st.attachTC(w.Pin, w.Interface, ifindex, w.Program, w.Attach)
}

// ensureGroupLinks attaches ProgGroup to lo, the uplink (if any) and the
// extra uplinks, and ProgGroupOut to the egress of the latter.
func (st *State) ensureGroupLinks() (bool, error) {
	ifs := append([]string{"lo"}, st.Uplinks()...)
	changed := false
	for _, name := range ifs {
		idx, _, _, err := linkOf(name)
		if err != nil {
			return changed, err
		}
		c, err := st.attachTC(groupLinkName(name), name, int(idx), ProgGroup, ebpf.AttachTCXIngress)
		if err != nil {
			return changed, err
		}
		changed = changed || c
		if name != "lo" {
			c, err := st.attachTC(groupLinkName(name)+"-out", name, int(idx), ProgGroupOut, ebpf.AttachTCXEgress)
			if err != nil {
				return changed, err
			}
			changed = changed || c
		}
	}
	// Copies of broadcasts the host sends re-enter through lo with their
	// local source: lo receives nothing but what the host sent, so
	// accepting local sources there opens nothing.
	// l3iso remembers whether it turned it on, so down restores the host.
	b, err := os.ReadFile(acceptLocal)
	if err != nil {
		return changed, fmt.Errorf("read %s: %w", acceptLocal, err)
	}
	if strings.TrimSpace(string(b)) == "0" {
		if err := os.WriteFile(acceptLocal, []byte("1"), 0o644); err != nil {
			return changed, fmt.Errorf("set net.ipv4.conf.lo.accept_local: %w", err)
		}
		cfg := st.Config
		cfg.AcceptLocal = true
		if err := st.Maps.SetConfig(cfg); err != nil {
			return changed, err
		}
		st.Config = cfg
	}
	return changed, nil
}

// acceptLocal is lo's accept_local sysctl in l3iso's network namespace.
const acceptLocal = "/proc/sys/net/ipv4/conf/lo/accept_local"

func (st *State) attachTC(pinName, ifname string, ifindex int, prog string, at ebpf.AttachType) (bool, error) {
	p, err := st.program(prog)
	if err != nil {
		return false, err
	}
	pin := filepath.Join(linksDir(st.Dir), pinName)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		tl := describeTC(l, pinName)
		if tl.Ifindex == ifindex {
			if tl.Program == prog {
				same, err := sameProgram(l, p)
				if err == nil && same {
					return false, nil
				}
			}
			if err := l.Update(p); err != nil {
				return false, fmt.Errorf("switch TC program on %s to %s: %w", ifname, prog, err)
			}
			return true, nil
		}
		// A link of an interface that no longer exists, or detached
		// (its ifindex is 0): a new link takes the pin's place below.
	} else if !errors.Is(err, os.ErrNotExist) {
		// Not a link (anymore): a new link takes the pin's place.
		if err := os.Remove(pin); err != nil {
			return false, fmt.Errorf("remove pin %s, which is no link: %w", pin, err)
		}
	}
	o := link.TCXOptions{Interface: ifindex, Program: p, Attach: at}
	switch prog {
	case ProgUplink:
		// First on the uplink: a container's unicast goes in without
		// ProgGroup's look at it; the rest it hands on (TCX_NEXT).
		o.Anchor = link.Head()
	case ProgGroup:
		// After ProgUplink, whichever was attached first; it only
		// copies, then hands on to the stack and any other program.
		o.Anchor = link.Tail()
	case ProgGroupOut, ProgVethOut, ProgBridge:
		// Alone on its hook; first, should another tool add one.
		o.Anchor = link.Head()
	}
	l, err := link.AttachTCX(o)
	if err != nil {
		return false, fmt.Errorf("attach %s to the %s of %s (index %d; needs Linux 6.6 or newer): %w", prog, at, ifname, ifindex, err)
	}
	defer l.Close() // the pin keeps it; on error, closing detaches it
	if err := os.MkdirAll(linksDir(st.Dir), 0o700); err != nil {
		return false, fmt.Errorf("create %s: %w", linksDir(st.Dir), err)
	}
	if err := pinOver(l, pin); err != nil {
		return false, err
	}
	return true, nil
}

// DetachTC removes l3iso's TCX links from interface ifname — the ingress
// link and a host-side veth's egress link — detaching their programs. A
// missing link is fine.
func (st *State) DetachTC(ifname string) error {
	var errs []error
	for _, name := range []string{tcLinkName(ifname), tcOutLinkName(ifname)} {
		if err := st.detachPin(filepath.Join(linksDir(st.Dir), name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (st *State) detachPin(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove pin %s: %w", pin, err)
		}
		return nil
	}
	defer l.Close() // last reference: the program detaches
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", pin, err)
	}
	return nil
}

// DetachTCPin removes the pinned TC link pin (a name from TCLinks), for
// links whose interface is gone.
func (st *State) DetachTCPin(pin string) error {
	path := filepath.Join(linksDir(st.Dir), filepath.Base(pin))
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		l.Unpin()
		l.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pin %s: %w", path, err)
	}
	return nil
}

// TCLink is one of l3iso's pinned TCX links.
type TCLink struct {
	Pin       string `json:"pin"`
	Interface string `json:"interface"` // "" when the interface is gone
	Ifindex   int    `json:"ifindex"`
	Program   string `json:"program"`
	ProgramID uint32 `json:"program_id"`
	LinkID    uint32 `json:"link_id"`

	l link.Link
}

func (t *TCLink) close() {
	if t.l != nil {
		t.l.Close()
		t.l = nil
	}
}

func describeTC(l link.Link, pin string) TCLink {
	tl := TCLink{Pin: pin}
	info, err := l.Info()
	if err != nil {
		return tl
	}
	tl.LinkID = uint32(info.ID)
	tl.ProgramID = uint32(info.Program)
	if tcx := info.TCX(); tcx != nil {
		tl.Ifindex = int(tcx.Ifindex)
		tl.Interface = IfName(tl.Ifindex)
	}
	if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
		if pi, err := p.Info(); err == nil {
			tl.Program = pi.Name
		}
		p.Close()
	}
	return tl
}

// tcLinks opens every pinned TC link; the caller closes them.
func (st *State) tcLinks() ([]TCLink, error) {
	entries, err := os.ReadDir(linksDir(st.Dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", linksDir(st.Dir), err)
	}
	var out []TCLink
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "tc-") {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(linksDir(st.Dir), e.Name()), nil)
		if err != nil {
			out = append(out, TCLink{Pin: e.Name()})
			continue
		}
		tl := describeTC(l, e.Name())
		tl.l = l
		out = append(out, tl)
	}
	return out, nil
}

// TCLinks lists l3iso's pinned TCX links, by pin name.
func (st *State) TCLinks() ([]TCLink, error) {
	links, err := st.tcLinks()
	for i := range links {
		links[i].close()
	}
	return links, err
}

// TCXProgram is one program attached to an interface's TCX hook, whoever
// attached it (bpftool 7.1 and tc 6.1 cannot show these).
type TCXProgram struct {
	Direction string `json:"direction"` // ingress or egress
	ProgramID uint32 `json:"program_id"`
	Name      string `json:"program"`
	LinkID    uint32 `json:"link_id,omitempty"`
}

// QueryTCX lists the programs attached to the TCX hooks of interface
// ifindex, in the order they run.
func QueryTCX(ifindex int) ([]TCXProgram, error) {
	var out []TCXProgram
	for _, h := range []struct {
		dir string
		at  ebpf.AttachType
	}{{"ingress", ebpf.AttachTCXIngress}, {"egress", ebpf.AttachTCXEgress}} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.at})
		if err != nil {
			return nil, fmt.Errorf("query TCX %s programs of interface %d: %w", h.dir, ifindex, err)
		}
		for _, p := range res.Programs {
			tp := TCXProgram{Direction: h.dir, ProgramID: uint32(p.ID)}
			if id, ok := p.LinkID(); ok {
				tp.LinkID = uint32(id)
			}
			if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
				if pi, err := prog.Info(); err == nil {
					tp.Name = pi.Name
				}
				prog.Close()
			}
			out = append(out, tp)
		}
	}
	return out, nil
}
