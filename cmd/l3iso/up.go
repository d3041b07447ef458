package main

import (
	"fmt"
	"strings"

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

l3iso keeps up's options in its pinned state: an option left out keeps the
value the installation has, so after the first up a bare 'l3iso up' repeats
it (a new installation takes the defaults). Running up again with the same
options changes nothing ("nothing changed"); a newer binary replaces the
programs in place (link update), with no window in which binds or connects
go unchecked. On a running installation:
  --delivery X   switches the netns containers to X in place: their
                 namespaces, addresses, processes and sockets stay
  --uplink IF    moves what lives on the uplink to IF: its TCX programs,
                 direct delivery, shared containers' IPv6 addresses (added
                 on IF before they leave the old one); containers,
                 processes and sockets stay ('--uplink ""': none, lo)
  --extra-uplink IF ...
                 sets the extra uplinks to these ('--extra-uplink ""':
                 none): the programs of the ones left out are detached
  --cgroup-root  cannot change: every container's cgroup lives below it;
                 run 'l3iso down' first (it removes every container)

Extra uplinks (--extra-uplink, repeatable, at most 8) are the host's other
Ethernet interfaces where traffic for the containers may arrive — a second
network that routes the containers' addresses to this host. Each gets the
uplink's TCX programs: a new connection or datagram to a shared
container's wildcard listener finds it (without them it is refused
there), a shadow UDP port's replies leave with the application's port,
broadcasts arriving there reach their listeners, and in direct delivery
packets for netns containers go straight in. Shared containers' IPv6
addresses and multicast joins stay on the uplink.

up also repairs: it reads the kernel's view (as 'l3iso status' does) and
puts back whatever is wrong — a link detached (BPF_LINK_DETACH) or unpinned
is attached anew, a missing map pin is pinned again from the programs that
use the map, a missing TCX attachment (lo, the uplink, a netns container's
veth) is made again, host addresses and routes that vanished (deleted by
hand, or by net.ipv6.conf.IF.disable_ipv6, which up turns off again) are
added back — and lists what it repaired. A crashed command's half-done work
is finished or undone. Containers the CNI plugin made whose network
namespace is gone (the runtime released it without CNI DEL: their veth went
with it) are removed, and listed.

Delivery of netns containers (--delivery, default direct on a new
installation):
  direct   TC programs on the uplink and the host-side veths put packets
           straight into the container's namespace (bpf_redirect_peer) and
           out of the uplink: no host IP input, forwarding or netfilter
  routed   plain kernel routing over the host-side veths (IP forwarding on)
  bridge   host-side veths are ports of bridge l3iso-br0, routed to the
           uplink like a Docker host (IP forwarding on)
Peers on the uplink's network reach netns containers through one route via
this host's uplink address (no proxy ARP/NDP). The uplink and the extra
uplinks are Ethernet interfaces (a NIC, veth, bond, VLAN or bridge): a
tunnel's frames (tun, WireGuard) have no Ethernet header for l3iso's TC
programs, and up refuses them.

A netns container's namespace is l3iso-NAME and its host-side veth l3i-NAME
with the default --bpffs; with another --bpffs both carry a tag of it
(l3iso-TAG_NAME), so two installations never share a name. 'l3iso status'
shows each container's. An installation keeps the names it was made with.

Caution: at the real cgroup root every process on the machine is subject to
l3iso's socket programs. Use --cgroup-root to confine l3iso to a subtree.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := maps.ParseDelivery(delivery)
			if err != nil {
				return err
			}
			o.Delivery = d
			o.KeepCgroupRoot = !cmd.Flags().Changed("cgroup-root")
			o.KeepUplink = !cmd.Flags().Changed("uplink")
			o.KeepDelivery = !cmd.Flags().Changed("delivery")
			o.KeepExtraUplinks = !cmd.Flags().Changed("extra-uplink")
			o.BPFFS = g.bpffs
			log, err := g.openAudit()
			if err != nil {
				return err
			}
			defer log.Close()
			st, err := loader.OpenForUp(o.BPFFS)
			if err != nil {
				return err
			}
			// What is wrong before up changes anything: what it repairs.
			var wrong []loader.Problem
			installed := st.Installed()
			if installed {
				if wrong, err = control.CheckState(st); err != nil {
					st.Close()
					return err
				}
			}
			changed, err := st.Up(o)
			if err != nil {
				// Up undoes a new installation it could not finish; on an
				// existing one, what it changed stays, and is recorded.
				if changed && installed {
					record(cmd, log, append(upChanges(st, installed, wrong), "failed: "+err.Error()), false)
				}
				st.Close()
				return err
			}
			c, err := control.FromState(st)
			if err != nil {
				record(cmd, log, append(upChanges(st, installed, wrong), "failed: "+err.Error()), false)
				st.Close()
				return err
			}
			defer c.Close()
			left, err := c.Check()
			if err == nil && len(left) > 0 {
				err = fmt.Errorf("up could not repair %s", problemList(left))
			}
			if changed || len(wrong) > 0 {
				lines := upChanges(st, installed, wrong)
				if err != nil {
					lines = append(lines, "failed: "+err.Error())
				}
				record(cmd, log, lines, false)
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			switched := switches(st)
			switch {
			case len(switched) > 0:
				fmt.Fprintf(w, "l3iso is up: %s\n", strings.Join(switched, ", "))
			case len(wrong) > 0:
				fmt.Fprintf(w, "l3iso is up at %s: repaired %d problem(s):\n", st.Dir, len(wrong))
			case changed:
				fmt.Fprintf(w, "l3iso is up: programs attached at %s, pinned in %s\n", st.Config.CgroupRoot, st.Dir)
			default:
				fmt.Fprintf(w, "l3iso was already up at %s (nothing changed)\n", st.Dir)
			}
			if len(wrong) > 0 && len(switched) > 0 {
				fmt.Fprintf(w, "and repaired %d problem(s):\n", len(wrong))
			}
			for _, p := range wrong {
				fmt.Fprintf(w, "  repaired: %s\n", p)
			}
			for _, name := range c.Reaped() {
				fmt.Fprintf(w, "  removed container %s: the CNI plugin made it for a runtime's network namespace, which is gone (no CNI DEL came)\n", name)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.CgroupRoot, "cgroup-root", "", "cgroup v2 directory to attach at (default: the installation's; a new one: the cgroup v2 mount's root, found in /proc/self/mountinfo)")
	cmd.Flags().StringVar(&o.Uplink, "uplink", "", "interface that connects containers to the network: shared-mode IPv6 addresses live on it, direct delivery receives on it (default: the installation's; a new one: none, lo; switches a running installation)")
	cmd.Flags().StringArrayVar(&o.ExtraUplinks, "extra-uplink", nil, "another interface where traffic for the containers arrives: it gets the uplink's TCX programs (repeatable, at most 8; default: the installation's; a new one: none; '--extra-uplink \"\"': none)")
	cmd.Flags().StringVar(&delivery, "delivery", "direct", "how packets reach netns containers: direct, routed or bridge (default: the installation's; switches a running installation)")
	return cmd
}

// uplinkName names an uplink for a person ("" is none).
func uplinkName(s string) string {
	if s == "" {
		return "none (lo)"
	}
	return s
}

// problemList is problems on one line: "N problem(s): P1; P2".
func problemList(ps []loader.Problem) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = p.String()
	}
	return fmt.Sprintf("%d problem(s): %s", len(ps), strings.Join(parts, "; "))
}

// upChanges says for the audit log what an up changed: a new installation,
// a switched delivery or uplink, each problem it repaired, else an upgrade
// of programs or pins.
func upChanges(st *loader.State, installed bool, repaired []loader.Problem) []string {
	var out []string
	if !installed {
		line := fmt.Sprintf("installed: programs attached at %s, pinned in %s, uplink %s, delivery %s",
			st.Config.CgroupRoot, st.Dir, uplinkName(st.Config.Uplink), st.Config.Delivery)
		if len(st.Config.ExtraUplinks) > 0 {
			line += ", extra uplinks " + extraNames(st.Config.ExtraUplinks)
		}
		out = append(out, line)
	}
	out = append(out, switches(st)...)
	for _, p := range repaired {
		out = append(out, "repaired: "+p.String())
	}
	if len(out) == 0 {
		out = append(out, "programs or pins replaced (an upgrade, or links attached again)")
	}
	return out
}

// switches says what an up changed on a running installation: the uplink,
// the delivery, the extra uplinks.
func switches(st *loader.State) []string {
	var out []string
	if st.UplinkSwitched {
		out = append(out, fmt.Sprintf("uplink switched from %s to %s", uplinkName(st.UplinkFrom), uplinkName(st.Config.Uplink)))
	}
	if st.Switched {
		out = append(out, fmt.Sprintf("delivery switched from %s to %s", st.From, st.Config.Delivery))
	}
	if st.ExtraSwitched {
		out = append(out, fmt.Sprintf("extra uplinks now %s (were %s)", extraNames(st.Config.ExtraUplinks), extraNames(st.ExtraFrom)))
	}
	return out
}

// extraNames lists extra uplinks for a message: "none" if there are none.
func extraNames(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}
