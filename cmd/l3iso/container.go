package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

func newContainer(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "container",
		Short: "Add, delete and list containers",
	}
	cmd.AddCommand(newContainerAdd(g), newContainerDel(g), newContainerList(g), newContainerCgroup(g))
	return cmd
}

func newContainerAdd(g *globals) *cobra.Command {
	var (
		addrs, mcast   []string
		mode, loopback string
		o              control.AddOptions
	)
	cmd := &cobra.Command{
		Use:   "add NAME --addr ADDRESS [--addr ADDRESS ...]",
		Short: "Create a container that owns the given addresses",
		Long: `add creates the container's cgroup, records its ownership in the maps and
only then makes its addresses local: with --mode shared on the host, IPv4
addresses as local routes (proto 76) on lo, IPv6 addresses on lo (or the
--uplink given to up); with --mode netns in its own network namespace
l3iso-NAME, joined to the host by a veth pair (host side l3i-NAME), with
default routes through the host and the delivery chosen by 'l3iso up'
(direct, routed or bridge). A netns container owns whole IPs (no ports).

Address forms:
  10.77.0.1            one IP (every port, TCP and UDP)
  10.77.0.1/24         an IP on subnet 10.77.0.0/24: its broadcast address
                       becomes usable and the subnet picks this source
  10.77.0.9:5432/tcp   one port of an IP; ranges: 10.77.0.9:8000-8099/udp
  [fd77::1]:443/tcp    IPv6 with a port

An address the host uses is refused: one of its own (never allowed), and,
unless --force, the gateway of a route, a neighbour it knows (ARP/NDP) or an
address it reaches through a route (8.8.8.8). Private addresses (10/8,
172.16/12, 192.168/16, 100.64/10, fc00::/7) that only the default route
covers are fine, and so are unused addresses on an on-link subnet (IP
aliases on the host's LAN).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := policy.Container{Name: args[0], Mode: policy.Mode(mode), Loopback: policy.Loopback(loopback)}
			if err := policy.ValidateName(spec.Name); err != nil {
				return err
			}
			if len(addrs) == 0 {
				return fmt.Errorf("container %q needs at least one --addr", spec.Name)
			}
			for _, s := range addrs {
				a, err := policy.ParseAddress(s)
				if err != nil {
					return fmt.Errorf("--addr %s: %w", s, err)
				}
				spec.Addresses = append(spec.Addresses, a)
			}
			for _, s := range mcast {
				p, err := policy.ParseMulticast(s)
				if err != nil {
					return fmt.Errorf("--mcast %s: %w", s, err)
				}
				spec.Multicast = append(spec.Multicast, p)
			}
			log, err := g.openAudit()
			if err != nil {
				return err
			}
			defer log.Close()
			c, err := control.Open(g.bpffs, true)
			if err != nil {
				return err
			}
			defer c.Close()
			k, err := c.AddWith(spec, o)
			if err != nil {
				return err
			}
			record(cmd, log, addLines(k), false)
			fmt.Fprintf(cmd.OutOrStdout(), "container %q added (id %d, cgroup %s)\n", spec.Name, k.ID, c.CgroupPath(spec.Name))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&addrs, "addr", nil, "address the container owns (repeatable)")
	cmd.Flags().StringVar(&mode, "mode", "shared", "shared (host stack, cgroup only) or netns")
	cmd.Flags().StringVar(&loopback, "loopback", "isolated", "isolated (its own 127.0.0.1/::1) or host")
	cmd.Flags().StringArrayVar(&mcast, "mcast", nil, "multicast group or prefix it may join (repeatable)")
	cmd.Flags().BoolVar(&o.Force, "force", false, "take addresses the host uses (a gateway, a neighbour, a routed address); never the host's own")
	return cmd
}

func newContainerDel(g *globals) *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "del NAME [--grace 10s]",
		Short: "Stop a container's processes and remove it with its addresses",
		Long: `del sends SIGTERM to every process of the container (its whole cgroup
subtree), waits up to --grace for them to exit, kills those still running
(SIGKILL, through cgroup.kill), then removes the container's addresses,
ownership and cgroup. It reports what it stopped and what it had to kill,
and the container's sockets that outlived its processes (a process
elsewhere holds them), by address: they receive nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkGrace(grace); err != nil {
				return err
			}
			log, err := g.openAudit()
			if err != nil {
				return err
			}
			defer log.Close()
			c, err := control.Open(g.bpffs, true)
			if err != nil {
				return err
			}
			defer c.Close()
			st, outlived, err := c.DelOutlived(args[0], grace)
			del := policy.Change{Kind: policy.ChangeDel, Name: args[0]}.String()
			if err != nil {
				if st.Procs > 0 {
					// Processes were stopped: that changed something.
					record(cmd, log, []string{fmt.Sprintf("%s failed after it %s: %v", del, st, err)}, false)
					return fmt.Errorf("%w (%s)", err, st)
				}
				return err
			}
			record(cmd, log, []string{del + ": " + st.String()}, false)
			fmt.Fprintf(cmd.OutOrStdout(), "container %q deleted: %s\n", args[0], st)
			for _, s := range outlived {
				fmt.Fprintln(cmd.OutOrStdout(), s.String(false))
			}
			return nil
		},
	}
	graceFlag(cmd, &grace)
	return cmd
}

// containerJSON is the stable -o json shape of a container.
type containerJSON struct {
	Name      string   `json:"name"`
	ID        uint32   `json:"id"`
	Mode      string   `json:"mode"`
	Loopback  string   `json:"loopback"`
	Addresses []string `json:"addresses"`
	Multicast []string `json:"multicast"`
	Cgroup    string   `json:"cgroup"`
	CgroupID  uint64   `json:"cgroup_id"`
	Loopback4 string   `json:"loopback4,omitempty"`
	Loopback6 string   `json:"loopback6,omitempty"`
	// netns mode: the network namespace (as `ip netns` names it) and the
	// host-side veth.
	Netns    string `json:"netns,omitempty"`
	HostVeth string `json:"host_veth,omitempty"`
	// Adopted: made by the CNI plugin for a container runtime's network
	// namespace (not l3iso's: Netns is empty); apply leaves it alone.
	Adopted bool `json:"cni,omitempty"`
}

func toJSON(c *control.Control, k maps.Container) containerJSON {
	j := containerJSON{
		Name: k.Spec.Name, ID: k.ID, Mode: string(k.Spec.Mode), Loopback: string(k.Spec.Loopback),
		Addresses: []string{}, Multicast: []string{}, Cgroup: c.CgroupPath(k.Spec.Name), CgroupID: k.CgroupID,
	}
	for _, a := range k.Spec.Addresses {
		j.Addresses = append(j.Addresses, a.String())
	}
	for _, m := range k.Spec.Multicast {
		j.Multicast = append(j.Multicast, m.String())
	}
	switch {
	case k.Spec.Adopted:
		j.HostVeth, j.Adopted = c.HostIfName(k.Spec.Name), true
	case k.Spec.Mode == policy.ModeNetns:
		j.Netns, j.HostVeth = c.NetnsName(k.Spec.Name), c.HostIfName(k.Spec.Name)
	case k.Isolated():
		j.Loopback4, j.Loopback6 = k.Loopback4().String(), k.Loopback6().String()
	}
	return j
}

func newContainerList(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List containers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			cs, err := c.Containers()
			if err != nil {
				return err
			}
			list := []containerJSON{}
			for _, k := range cs {
				list = append(list, toJSON(c, k))
			}
			if out == "json" {
				return writeJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tMODE\tLOOPBACK\tADDRESSES\tMULTICAST")
			for _, j := range list {
				m := strings.Join(j.Multicast, ",")
				if m == "" {
					m = "-"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", j.Name, j.ID, modeText(j), j.Loopback, strings.Join(j.Addresses, ","), m)
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &out)
	return cmd
}

// addLines say for the audit log what container add made: the container
// as apply's diff would show it, with its id.
func addLines(k maps.Container) []string {
	out := []string{}
	for _, ch := range policy.Diff(nil, &policy.Policy{Containers: []policy.Container{k.Spec}}) {
		out = append(out, fmt.Sprintf("%s [id %d]", ch, k.ID))
	}
	return out
}

// modeText is a container's mode as the tables show it: "netns (cni)" for
// one the CNI plugin made for a runtime's namespace.
func modeText(j containerJSON) string {
	if j.Adopted {
		return j.Mode + " (cni)"
	}
	return j.Mode
}
