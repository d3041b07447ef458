package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

type statusJSON struct {
	BPFFS        string              `json:"bpffs"`
	CgroupRoot   string              `json:"cgroup_root"`
	Uplink       string              `json:"uplink"`
	ExtraUplinks []string            `json:"extra_uplinks"` // `up --extra-uplink`; [] for none
	Delivery     string              `json:"delivery"`
	Links        []loader.LinkInfo   `json:"links"`
	Interfaces   []interfaceJSON     `json:"interfaces"`
	Containers   []containerStatJSON `json:"containers"`
	Host         maps.Counters       `json:"host_counters"`
	Listeners    []listenerJSON      `json:"listeners"`
	// Stale are live sockets that hold an address their container does
	// not own (any more), or one a container owns now (a socket of no
	// container): they receive nothing (control.Stale).
	Stale []control.Stale `json:"stale_sockets"`
	// Problems are what is wrong with the installation (read from the
	// kernel: detached links, missing pins, TCX attachments or host
	// addresses); Repair says what to do about them ("" when none).
	Problems []loader.Problem `json:"problems"`
	Repair   string           `json:"repair,omitempty"`
}

// listenerJSON is one entry of the broadcast/multicast registry.
type listenerJSON struct {
	Container string `json:"container"`
	Group     string `json:"group"` // "broadcast" or the multicast group
	Port      uint16 `json:"port"`
	Addr      string `json:"addr"` // the address its socket is bound to
	Sockets   uint32 `json:"sockets"`
}

func listeners(c *control.Control) ([]listenerJSON, error) {
	ls, err := c.State().Maps.Listeners()
	if err != nil {
		return nil, err
	}
	cs, err := c.Containers()
	if err != nil {
		return nil, err
	}
	names := map[uint32]string{}
	for _, k := range cs {
		names[k.ID] = k.Spec.Name
	}
	out := []listenerJSON{}
	for _, l := range ls {
		j := listenerJSON{Container: names[l.ID], Group: "broadcast", Port: l.Port, Addr: l.Addr.String(), Sockets: l.Refs}
		if j.Container == "" {
			j.Container = fmt.Sprintf("(gone: id %d)", l.ID)
		}
		if l.Group.IsValid() {
			j.Group = l.Group.String()
		}
		out = append(out, j)
	}
	return out, nil
}

// interfaceJSON is what runs on the TCX hooks of one interface l3iso uses
// (lo, the uplink, host-side veths), l3iso's programs and anyone else's, in
// order: bpftool 7.1 and tc 6.1 cannot show TCX attachments.
type interfaceJSON struct {
	Name     string              `json:"name"`
	Ifindex  int                 `json:"ifindex"`
	Role     string              `json:"role"` // loopback, uplink, or "container NAME"
	Programs []loader.TCXProgram `json:"tcx"`
}

// interfaces lists lo, the uplink, the extra uplinks and the host-side
// veths of netns containers.
func interfaces(c *control.Control) ([]interfaceJSON, error) {
	out := []interfaceJSON{}
	add := func(name, role string) error {
		// One link, not net.InterfaceByName's dump of them all: this runs
		// for every container's veth.
		l, err := netlink.LinkByName(name)
		if err != nil {
			out = append(out, interfaceJSON{Name: name, Role: role + " (interface missing: run `l3iso up` to repair)", Programs: []loader.TCXProgram{}})
			return nil
		}
		index := l.Attrs().Index
		progs, err := loader.QueryTCX(index)
		if err != nil {
			return err
		}
		if progs == nil {
			progs = []loader.TCXProgram{}
		}
		out = append(out, interfaceJSON{Name: name, Ifindex: index, Role: role, Programs: progs})
		return nil
	}
	// l3_tc_group on lo fans out what shared containers and the host
	// send to a container subnet's broadcast address or a group.
	if err := add("lo", "loopback"); err != nil {
		return nil, err
	}
	if up := c.State().Config.Uplink; up != "" {
		if err := add(up, "uplink"); err != nil {
			return nil, err
		}
	}
	for _, x := range c.State().Config.ExtraUplinks {
		if err := add(x, "extra uplink"); err != nil {
			return nil, err
		}
	}
	if c.State().Config.Delivery == maps.DeliveryBridge {
		if err := add(veth.BridgeName, "bridge"); err != nil {
			return nil, err
		}
	}
	cs, err := c.Containers()
	if err != nil {
		return nil, err
	}
	for _, k := range cs {
		if k.Spec.Mode == policy.ModeNetns {
			if err := add(c.HostIfName(k.Spec.Name), "container "+k.Spec.Name); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

type containerStatJSON struct {
	containerJSON
	Counters maps.Counters `json:"counters"`
}

func newStatus(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show programs, links, pins, containers and counters, and what is wrong",
		Long: `status shows the installation: its options, every pinned link with the
target the kernel reports (a cgroup, an interface, or "(detached)"), the TCX
programs on lo, the uplink, the bridge (delivery bridge) and every netns
container's host-side veth, the broadcast/multicast listeners, and each
container with its counters (a netns container with its namespace and
veth: ip netns exec NETNS ...).

It lists stale sockets: live sockets of a container that hold an address
it no longer owns (an apply took it; another container may own it now),
and sockets of no container on an address a container owns — per
container and address, with how many TCP listeners, TCP connections and
UDP sockets. Nothing reaches them; restart what holds them. They are no
problem of the installation (up cannot repair them) and change no exit
status.

It checks the installation against the kernel, not against l3iso's own
record: a link detached (BPF_LINK_DETACH) or whose pin is gone, a missing
map, link or program pin, a TCX program missing from lo, the uplink or a
veth, a container's missing cgroup or namespace, host addresses and routes
that vanished (an IPv4 local route of table local, proto 76, deleted; IPv6
addresses gone with net.ipv6.conf.IF.disable_ipv6), a command that died half
way. If anything is wrong it lists the problems (text: under "problems";
-o json: "problems" and "repair"), says "run ` + "`l3iso up`" + ` to repair" and exits 1;
otherwise it exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			st := c.State()
			s := statusJSON{BPFFS: st.Dir, CgroupRoot: st.Config.CgroupRoot, Uplink: st.Config.Uplink, ExtraUplinks: append([]string{}, st.Config.ExtraUplinks...), Delivery: st.Config.Delivery.String(), Containers: []containerStatJSON{}}
			if s.Links, err = st.Links(); err != nil {
				return err
			}
			if s.Interfaces, err = interfaces(c); err != nil {
				return err
			}
			if s.Host, err = c.Stats(""); err != nil {
				return err
			}
			if s.Listeners, err = listeners(c); err != nil {
				return err
			}
			if s.Stale, err = c.Stale(); err != nil {
				return err
			}
			s.Stale = append([]control.Stale{}, s.Stale...)
			if s.Problems, err = c.Check(); err != nil {
				return err
			}
			if s.Problems == nil {
				s.Problems = []loader.Problem{}
			} else {
				s.Repair = loader.RepairHint
			}
			// Status exits non-zero when something is wrong, after
			// printing everything.
			var wrong error
			if len(s.Problems) > 0 {
				wrong = fmt.Errorf("%d problem(s), listed under \"problems\": %s", len(s.Problems), loader.RepairHint)
			}
			cs, err := c.Containers()
			if err != nil {
				return err
			}
			for _, k := range cs {
				cnt, err := c.Stats(k.Spec.Name)
				if err != nil {
					return err
				}
				s.Containers = append(s.Containers, containerStatJSON{toJSON(c, k), cnt})
			}
			if out == "json" {
				if err := writeJSON(cmd.OutOrStdout(), s); err != nil {
					return err
				}
				return wrong
			}
			w := cmd.OutOrStdout()
			uplink := s.Uplink
			if uplink == "" {
				uplink = "(none: addresses on lo)"
			}
			fmt.Fprintf(w, "pinned in:    %s\ncgroup root:  %s\nuplink:       %s\n", s.BPFFS, s.CgroupRoot, uplink)
			if len(s.ExtraUplinks) > 0 {
				fmt.Fprintf(w, "extra uplinks: %s\n", strings.Join(s.ExtraUplinks, ", "))
			}
			fmt.Fprintf(w, "delivery:     %s\n", s.Delivery)
			if len(s.Problems) == 0 {
				fmt.Fprintf(w, "problems:     none\n\n")
			} else {
				fmt.Fprintf(w, "problems:     %d (%s)\n", len(s.Problems), loader.RepairHint)
				for _, p := range s.Problems {
					fmt.Fprintf(w, "  %s\n", p)
				}
				fmt.Fprintln(w)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LINK\tLINK ID\tPROG ID\tTAG\tATTACH\tTARGET")
			for _, l := range s.Links {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", l.Name, l.ID, l.ProgramID, l.Tag, l.Attach, l.Target)
			}
			tw.Flush()
			if len(s.Interfaces) > 0 {
				fmt.Fprintln(w)
				tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "INTERFACE\tIFINDEX\tROLE\tTCX PROGRAMS (in order)")
				for _, i := range s.Interfaces {
					var progs []string
					for _, p := range i.Programs {
						progs = append(progs, fmt.Sprintf("%s:%s(prog %d, link %d)", p.Direction, p.Name, p.ProgramID, p.LinkID))
					}
					if len(progs) == 0 {
						progs = []string{"-"}
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", i.Name, i.Ifindex, i.Role, strings.Join(progs, " "))
				}
				tw.Flush()
			}
			if len(s.Listeners) > 0 {
				fmt.Fprintln(w)
				tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "LISTENER\tGROUP\tPORT\tBOUND TO\tSOCKETS")
				for _, l := range s.Listeners {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\n", l.Container, l.Group, l.Port, l.Addr, l.Sockets)
				}
				tw.Flush()
			}
			if len(s.Stale) > 0 {
				fmt.Fprintf(w, "\nstale sockets: %d (their addresses are no longer their container's: nothing reaches them)\n", len(s.Stale))
				for _, st := range s.Stale {
					fmt.Fprintf(w, "  %s\n", st.String(false))
				}
			}
			fmt.Fprintf(w, "\n%d containers\n", len(s.Containers))
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tMODE\tNETNS/VETH\tADDRESSES\tALLOWED\tDENIED\tREWRITTEN\tDROPPED")
			for _, k := range s.Containers {
				where := "-"
				switch {
				case k.Adopted:
					where = "(runtime's)/" + k.HostVeth
				case k.Netns != "":
					where = k.Netns + "/" + k.HostVeth
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%v\t%d\t%d\t%d\t%d\n", k.Name, k.ID, modeText(k.containerJSON), where, k.Addresses,
					k.Counters["bind_allowed"]+k.Counters["connect_allowed"],
					k.Counters["bind_denied_foreign"]+k.Counters["bind_denied_port"]+k.Counters["send_denied_spoof"]+k.Counters["denied_no_address"],
					k.Counters["bind_rewritten"]+k.Counters["source_rewritten"]+k.Counters["loopback_remapped"],
					k.Counters["ingress_dropped_foreign"]+k.Counters["egress_dropped_spoof"]+
						k.Counters["tc_dropped_spoof"]+k.Counters["tc_dropped_no_route"]+k.Counters["tc_dropped_malformed"])
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return wrong
		},
	}
	outputFlag(cmd, &out)
	return cmd
}
