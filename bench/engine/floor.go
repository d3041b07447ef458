package engine

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/l3iso/l3iso/pkg/loader"
)

// AttachDoNothing attaches, at cgroup cg, a program that does nothing — it
// returns 1, "go on" — at every attach point where `l3iso up` attaches one
// of its socket programs; and, in the calling thread's network namespace,
// one in place of each of l3iso's programs that run for the whole
// namespace on lo's traffic: l3_sk_lookup (it returns 1, SK_PASS) and
// l3_tc_group at lo's TCX ingress (it returns TCX_NEXT). A workload in cg,
// on lo of that namespace, pays what the kernel charges for running a
// program at each hook (the dispatch, the socket lock and sockaddr copy of
// a sock_addr hook, the skb programs' run on every packet) and none of
// l3iso's work: the floor under any design that enforces the L3 rules
// with these hooks. Call it in a namespace of its own: the namespace's
// programs run for every socket in it. Closing the returned link set
// detaches them all; on error nothing stays attached.
func AttachDoNothing(cg string) (*DoNothing, error) {
	return attachDoNothing(cg, true, true)
}

// AttachDoNothingCgroup is AttachDoNothing at the cgroup's attach points
// only: for a workload in the namespace of an l3iso installation, whose
// own programs run there for the namespace.
func AttachDoNothingCgroup(cg string) (*DoNothing, error) {
	return attachDoNothing(cg, false, true)
}

// AttachDoNothingSockets is AttachDoNothingCgroup without the two packet
// (cgroup_skb) attach points: only the hooks on socket system calls, which
// no design that rewrites sources and checks binds can do without. The
// difference to AttachDoNothingCgroup is the price of l3iso's packet
// backstops.
func AttachDoNothingSockets(cg string) (*DoNothing, error) {
	return attachDoNothing(cg, false, false)
}

// attachDoNothing attaches at cg in place of every socket program — the
// two packet (cgroup_skb) ones only with packets — and, with netnsWide,
// in place of the programs l3iso attaches to the calling thread's network
// namespace (l3_sk_lookup, l3_tc_group on lo).
func attachDoNothing(cg string, netnsWide, packets bool) (*DoNothing, error) {
	spec, err := loader.SocketSpec()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(spec.Programs))
	for n, ps := range spec.Programs {
		switch ps.AttachType {
		case ebpf.AttachSkLookup: // a namespace's, not a cgroup's
			if !netnsWide {
				continue
			}
		case ebpf.AttachCGroupInetIngress, ebpf.AttachCGroupInetEgress:
			if !packets {
				continue
			}
		}
		names = append(names, n)
	}
	sort.Strings(names)
	d := &DoNothing{}
	for _, name := range names {
		ps := spec.Programs[name]
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         doNothingName,
			Type:         ps.Type,
			AttachType:   ps.AttachType,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		})
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("load a do-nothing program in place of %s (%v): %w", name, ps.AttachType, err)
		}
		var l link.Link
		if ps.AttachType == ebpf.AttachSkLookup {
			// l3_sk_lookup runs for the network namespace (the calling
			// thread's), not for a cgroup.
			l, err = attachNetnsHere(prog)
		} else {
			l, err = link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ps.AttachType, Program: prog})
		}
		prog.Close() // the link holds it
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("attach a do-nothing program in place of %s (%v) at %s: %w", name, ps.AttachType, cg, err)
		}
		d.links = append(d.links, l)
	}
	if netnsWide {
		if err := d.attachLoTCX(); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// attachLoTCX attaches a do-nothing program at the TCX ingress of lo in the
// calling thread's network namespace, in place of l3_tc_group.
func (d *DoNothing) attachLoTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         doNothingName,
		Type:         ebpf.SchedCLS,
		AttachType:   ebpf.AttachTCXIngress,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1 /* TCX_NEXT */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load a do-nothing program in place of l3_tc_group: %w", err)
	}
	defer prog.Close() // the link holds it
	l, err := link.AttachTCX(link.TCXOptions{Interface: loIfindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach a do-nothing program at lo's TCX ingress in place of l3_tc_group: %w", err)
	}
	d.links = append(d.links, l)
	return nil
}

// loIfindex is lo's interface index in every network namespace.
const loIfindex = 1

// doNothingName is the do-nothing programs' name.
const doNothingName = "l3b_nothing"

// DoNothing is the set of links AttachDoNothing made.
type DoNothing struct{ links []link.Link }

// Close detaches every program.
func (d *DoNothing) Close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	return errors.Join(errs...)
}

// attachNetnsHere attaches an sk_lookup program to the calling thread's
// network namespace.
func attachNetnsHere(prog *ebpf.Program) (link.Link, error) {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return link.AttachNetNs(int(ns.Fd()), prog)
}
