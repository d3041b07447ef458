package engine

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/l3iso/l3iso/pkg/maps"
)

// AttachDoNothing attaches, at cgroup cg, a program that does nothing — it
// returns 1, "go on" — at every attach point where `l3iso up` attaches one
// of its socket programs. A workload in cg pays what the kernel charges
// for running a cgroup program at each hook (the dispatch, the socket lock
// and sockaddr copy of a sock_addr hook, the skb programs' run on every
// packet) and none of l3iso's work: the floor under any design that
// enforces the L3 rules with these hooks. Closing the returned link set
// detaches them all; on error nothing stays attached.
func AttachDoNothing(cg string) (*DoNothing, error) {
	return attachDoNothing(cg, func(ebpf.AttachType) bool { return true })
}

// AttachDoNothingSockets is AttachDoNothing without the two packet
// (cgroup_skb) attach points: only the hooks on socket system calls, which
// no design that rewrites sources and checks binds can do without. The
// difference to AttachDoNothing is the price of l3iso's packet backstops.
func AttachDoNothingSockets(cg string) (*DoNothing, error) {
	return attachDoNothing(cg, func(t ebpf.AttachType) bool {
		return t != ebpf.AttachCGroupInetIngress && t != ebpf.AttachCGroupInetEgress
	})
}

func attachDoNothing(cg string, want func(ebpf.AttachType) bool) (*DoNothing, error) {
	spec, err := maps.SocketSpec()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(spec.Programs))
	for n, ps := range spec.Programs {
		if want(ps.AttachType) {
			names = append(names, n)
		}
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
	return d, nil
}

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
