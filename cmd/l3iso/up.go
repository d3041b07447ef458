package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
)

func newUp(g *globals) *cobra.Command {
	var (
		o        loader.Options
		delivery string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Load, attach (once, at the cgroup v2 root) and pin l3iso; idempotent",
		Long: `up loads l3iso's BPF programs, attaches them with bpf_links at the cgroup v2
root (or --cgroup-root) and pins maps and links under --bpffs.

Running it again with the same options changes nothing; running a newer
binary replaces the programs in place (link update), with no window in
which binds or connects go unchecked. Running it with another --delivery
switches the netns containers to it in place: their namespaces, addresses,
processes and sockets stay. Other options need 'l3iso down' first.

Delivery of netns containers (--delivery, default direct on a new
installation; an existing one keeps its delivery unless the flag is given):
  direct   TC programs on the uplink and the host-side veths put packets
           straight into the container's namespace (bpf_redirect_peer) and
           out of the uplink: no host IP input, forwarding or netfilter
  routed   plain kernel routing over the host-side veths (IP forwarding on)
  bridge   host-side veths are ports of bridge l3iso-br0, routed to the
           uplink like a Docker host (IP forwarding on)
Peers on the uplink's network reach netns containers through one route via
this host's uplink address (no proxy ARP/NDP).

Caution: at the real cgroup root every process on the machine is subject to
l3iso's socket programs. Use --cgroup-root to confine l3iso to a subtree.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := maps.ParseDelivery(delivery)
			if err != nil {
				return err
			}
			o.Delivery = d
			o.KeepDelivery = !cmd.Flags().Changed("delivery")
			o.BPFFS = g.bpffs
			st, changed, err := loader.Up(o)
			if err != nil {
				return err
			}
			c, err := control.FromState(st)
			if err != nil {
				st.Close()
				return err
			}
			defer c.Close()
			if st.Switched {
				fmt.Fprintf(cmd.OutOrStdout(), "l3iso is up: delivery switched from %s to %s\n", st.From, st.Config.Delivery)
			} else if changed {
				fmt.Fprintf(cmd.OutOrStdout(), "l3iso is up: programs attached at %s, pinned in %s\n", st.Config.CgroupRoot, st.Dir)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "l3iso was already up at %s (nothing changed)\n", st.Dir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.CgroupRoot, "cgroup-root", "", "cgroup v2 directory to attach at (default: the cgroup v2 mount's root, found in /proc/self/mountinfo)")
	cmd.Flags().StringVar(&o.Uplink, "uplink", "", "interface that connects containers to the network: shared-mode IPv6 addresses live on it, direct delivery receives on it (default: lo)")
	cmd.Flags().StringVar(&delivery, "delivery", "direct", "how packets reach netns containers: direct, routed or bridge (switches a running installation)")
	return cmd
}
