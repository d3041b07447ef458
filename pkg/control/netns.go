package control

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// What a netns container has besides its cgroup and its policy entries:
//
//   - the network namespace l3iso-KEY and a veth pair (pkg/veth, keyed by
//     Control.key: the name after the installation's name tag), with its
//     addresses on eth0 and its routes (made after the maps own them: rule 9);
//   - l3_ports / l3_delivs entries: the veth's ifindex and MACs per address;
//   - a TCX link on the host-side veth: l3_tc_veth (direct) or l3_tc_guard
//     (routed, bridge);
//   - in bridge delivery, the host-side veth is a port of l3iso-br0.
//
// Host-wide, per delivery: l3_tc_uplink on the uplink (direct), IP
// forwarding (routed, bridge), the bridge (bridge).

func isNetns(k maps.Container) bool { return k.Spec.Mode == policy.ModeNetns }

// key is container name's key in pkg/veth: its name after this
// installation's name tag (see veth.Key), so that two installations with
// different --bpffs never share a namespace or veth name.
func (c *Control) key(name string) string { return veth.Key(c.st.Config.NameTag, name) }

// ours reports whether a pkg/veth key is of this installation.
func (c *Control) ours(key string) bool {
	tag, _ := veth.SplitKey(key)
	return tag == c.st.Config.NameTag
}

// adoptNameTag gives an installation made before name tags the tag of its
// --bpffs (loader.NameTag) when it has no netns container: nothing has a
// name to keep. One that has netns containers keeps their names (no tag):
// a live namespace or veth cannot be renamed without its containers
// noticing.
func (c *Control) adoptNameTag() error {
	tag := loader.NameTag(c.st.Dir)
	if c.st.Config.NameTag != "" || tag == "" {
		return nil
	}
	for _, k := range c.cur {
		if isNetns(k) {
			return nil
		}
	}
	return c.setConfig(func(cfg *maps.Config) { cfg.NameTag = tag })
}

// NetnsName is the network namespace of netns container name, as `ip
// netns` shows it (l3iso-NAME, or l3iso-TAG_NAME: see veth.Key).
func (c *Control) NetnsName(name string) string { return veth.NetnsName(c.key(name)) }

// NetnsPath is the bind mount of netns container name's namespace.
func (c *Control) NetnsPath(name string) string { return veth.NetnsPath(c.key(name)) }

// HostIfName is the host-side veth of netns container name.
func (c *Control) HostIfName(name string) string { return veth.HostIfName(c.key(name)) }

// vethAddrs are the container's addresses as eth0 gets them: with their
// subnet where the policy gives one, else as /32 or /128.
func vethAddrs(k maps.Container) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(k.Spec.Addresses))
	for _, a := range k.Spec.Addresses {
		if a.Subnet.IsValid() {
			out = append(out, netip.PrefixFrom(a.Addr, a.Subnet.Bits()))
		} else {
			out = append(out, veth.HostPrefix(a.Addr))
		}
	}
	return out
}

func ips(k maps.Container) []netip.Addr {
	out := make([]netip.Addr, 0, len(k.Spec.Addresses))
	for _, a := range k.Spec.Addresses {
		out = append(out, a.Addr)
	}
	return out
}

// vethMTU is the MTU of a new container veth: the uplink's (0, the
// default, without one). Direct delivery skips the forwarding path that
// answers a packet too big for the uplink with ICMP "fragmentation needed"
// or "packet too big"; with the uplink's MTU a container never sends one —
// it cannot raise its own (no CAP_NET_ADMIN), and its stack fragments or
// segments to fit, as it would on the uplink itself.
func (c *Control) vethMTU() int {
	if c.st.Config.UplinkIfindex == 0 {
		return 0
	}
	l, err := netlink.LinkByIndex(int(c.st.Config.UplinkIfindex))
	if err != nil {
		return 0
	}
	return l.Attrs().MTU
}

// plumb creates the namespace and veth of netns container k and wires them
// for the current delivery — for an adopted container, only the veth,
// into the runtime's namespace at (adopt.go). The maps already own k's
// addresses (rule 9). On error nothing of it is left.
func (c *Control) plumb(k maps.Container, at *Attachment) (*veth.Endpoint, error) {
	if k.Spec.Adopted {
		return c.attach(k, at)
	}
	if err := c.ensureDelivery(); err != nil {
		return nil, err
	}
	mtu := c.vethMTU()
	c.tr.step("delivery, MTU")
	ep, err := veth.Create(veth.Spec{
		Container:         c.key(k.Spec.Name),
		Addrs:             vethAddrs(k),
		SubnetsViaGateway: c.st.Config.Delivery != maps.DeliveryBridge,
		MTU:               mtu,
	})
	if err != nil {
		if mtu != 0 && errors.Is(err, veth.ErrInvalid) {
			return nil, fmt.Errorf("%w (a container's veth takes the MTU of the uplink %s: %d)", err, c.st.Config.Uplink, mtu)
		}
		return nil, err
	}
	c.tr.step("namespace, veth")
	if err := c.wire(k, ep, true); err != nil {
		if uerr := c.unplumb(k, true); uerr != nil {
			err = errors.Join(err, fmt.Errorf("undoing it failed too (the next l3iso command repairs): %w", uerr))
		}
		return nil, err
	}
	c.tr.step("wire")
	return ep, nil
}

// wire registers a container's veth in the maps, attaches the TC program
// the delivery needs and puts the veth on or off the bridge. It is
// idempotent: reconcile and delivery switches run it on live containers,
// whose sockets never notice (only host-side state and container routes
// change). fresh says the namespace was just made for this delivery.
func (c *Control) wire(k maps.Container, ep *veth.Endpoint, fresh bool) error {
	port := maps.Port{ID: k.ID, IfIndex: ep.HostIfIndex, HostMAC: ep.HostMAC, PeerMAC: ep.PeerMAC}
	if err := c.st.Maps.SetPort(port, ips(k)); err != nil {
		return fmt.Errorf("container %q: %w", k.Spec.Name, err)
	}
	if c.st.Config.Delivery == maps.DeliveryDirect {
		if err := vethForwarding(ep.HostIf); err != nil {
			return fmt.Errorf("container %q: %w", k.Spec.Name, err)
		}
	}
	for _, w := range c.st.VethTC(ep.HostIf) {
		if _, err := c.st.AttachTCWant(w, ep.HostIfIndex); err != nil {
			return fmt.Errorf("container %q: %w", k.Spec.Name, err)
		}
	}
	bridge := c.st.Config.Delivery == maps.DeliveryBridge
	if k.Spec.Adopted {
		// Its routes live in the runtime's namespace: through the
		// gateway, as direct and routed delivery want (adopt.go).
		if bridge {
			return fmt.Errorf("container %q was made by the CNI plugin: bridge delivery cannot take it: remove it (the runtime's CNI DEL) or keep delivery direct or routed", k.Spec.Name)
		}
		return nil
	}
	switch {
	case bridge && !ep.Bridged:
		if err := veth.Enslave(ep.HostIf); err != nil {
			return fmt.Errorf("container %q: %w", k.Spec.Name, err)
		}
	case !bridge && ep.Bridged:
		if err := veth.Release(ep.HostIf); err != nil {
			return fmt.Errorf("container %q: %w", k.Spec.Name, err)
		}
	}
	if !fresh {
		if err := veth.SetSubnetRoutes(c.key(k.Spec.Name), !bridge); err != nil {
			return err
		}
	}
	return nil
}

// unplumb detaches and removes a netns container's host-side state and its
// namespace (its processes are dead by now) — an adopted container's veth
// only, never the runtime's namespace. wait makes it wait until the
// kernel has destroyed the veth pair; without it, call veth.DeleteMany
// later.
func (c *Control) unplumb(k maps.Container, wait bool) error {
	hostIf := c.HostIfName(k.Spec.Name)
	var errs []error
	if err := c.st.DetachTC(hostIf); err != nil {
		errs = append(errs, err)
	}
	ifindex := 0
	if l, err := netlink.LinkByName(hostIf); err == nil {
		ifindex = l.Attrs().Index
	} else if ports, err := c.st.Maps.PortIDs(); err == nil {
		for idx, id := range ports {
			if id == k.ID {
				ifindex = idx
			}
		}
	}
	if err := c.st.Maps.DeletePort(ifindex, ips(k)); err != nil {
		errs = append(errs, err)
	}
	if k.Spec.Adopted {
		// Its veth only: never the runtime's namespace (adopt.go).
		if err := veth.Detach(c.key(k.Spec.Name)); err != nil {
			errs = append(errs, err)
		}
	} else if wait {
		if err := veth.DeleteMany([]string{c.key(k.Spec.Name)}); err != nil {
			errs = append(errs, err)
		}
	} else if err := veth.Delete(c.key(k.Spec.Name)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove network namespace of container %q: %w", k.Spec.Name, err)
	}
	return nil
}

// ensureDelivery makes the host-wide state of the delivery mode exist, once
// per command: the uplink's TC program (direct), IP forwarding (routed,
// bridge), the bridge and its TC program (bridge).
func (c *Control) ensureDelivery() error {
	if c.deliveryReady {
		return nil
	}
	d := c.st.Config.Delivery
	for _, up := range c.st.Uplinks() {
		if d != maps.DeliveryDirect {
			if err := c.st.DetachTC(up); err != nil {
				return err
			}
			continue
		}
		idx := int(c.st.Config.UplinkIfindex)
		if up != c.st.Config.Uplink {
			l, err := netlink.LinkByName(up)
			if err != nil {
				// Gone (unplugged, deleted): status names it, and
				// commands on containers go on; up attaches again
				// when it is back.
				continue
			}
			idx = l.Attrs().Index
		}
		if _, err := c.st.AttachTC(up, idx, loader.ProgUplink); err != nil {
			return fmt.Errorf("delivery direct: %w", err)
		}
	}
	if err := c.setForwarding(d != maps.DeliveryDirect); err != nil {
		return err
	}
	if d == maps.DeliveryBridge {
		idx, err := veth.EnsureBridge(nil, nil)
		if err != nil {
			return fmt.Errorf("delivery bridge: %w", err)
		}
		if _, err := c.st.AttachTCWant(c.st.BridgeTC(), idx); err != nil {
			return fmt.Errorf("delivery bridge: %w", err)
		}
	}
	c.deliveryReady = true
	return nil
}

// forwarding sysctls of the host network namespace (the one l3iso runs in).
var forwardSysctls = [2]string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"}

// setForwarding turns IPv4 and IPv6 forwarding on (routed and bridge
// delivery need the kernel to forward) or back off. l3iso turns off only
// what it turned on itself (l3_config remembers), so forwarding an operator
// enabled stays.
func (c *Control) setForwarding(on bool) error {
	cfg := c.st.Config
	for i, path := range forwardSysctls {
		mine := &cfg.Forward4
		if i == 1 {
			mine = &cfg.Forward6
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		enabled := strings.TrimSpace(string(b)) != "0"
		switch {
		case on && !enabled:
			if err := os.WriteFile(path, []byte("1"), 0); err != nil {
				return fmt.Errorf("enable forwarding (%s) for routed/bridge delivery: %w", path, err)
			}
			*mine = true
		case !on && enabled && *mine:
			if err := os.WriteFile(path, []byte("0"), 0); err != nil {
				return fmt.Errorf("disable the forwarding l3iso enabled (%s): %w", path, err)
			}
			*mine = false
		case !on && !enabled:
			*mine = false
		}
	}
	if cfg.Forward4 != c.st.Config.Forward4 || cfg.Forward6 != c.st.Config.Forward6 {
		if err := c.st.Maps.SetConfig(cfg); err != nil {
			return err
		}
		c.st.Config = cfg
	}
	return nil
}

// vethForwarding sets forwarding on the host-side veth ifname (only there,
// IPv4 and IPv6), as the FIB lookup of l3_tc_veth requires
// (bpf_fib_lookup answers "forwarding disabled" for packets entering an
// interface without it). The kernel itself forwards nothing that way: the
// program redirects every packet it does not hand to the host's own
// sockets, and the host's all/ip_forward switch stays as it is.
func vethForwarding(ifname string) error {
	for _, fam := range []string{"ipv4", "ipv6"} {
		path := "/proc/sys/net/" + fam + "/conf/" + ifname + "/forwarding"
		b, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0); err != nil {
			return fmt.Errorf("enable %s forwarding on %s (needed by direct delivery's FIB lookup): %w", fam, ifname, err)
		}
	}
	return nil
}

// repairNetns makes every netns container's namespace, veth and wiring
// exist for the current delivery, removes what belongs to no container
// (veths l3iso made for containers that are gone, TC links of vanished
// interfaces), and removes the bridge outside bridge delivery.
func (c *Control) repairNetns() error {
	if err := c.ensureDelivery(); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, k := range c.cur {
		if !isNetns(k) {
			continue
		}
		known[c.key(k.Spec.Name)] = true
		if k.Spec.Adopted {
			if err := c.repairAdopted(k); err != nil {
				return err
			}
			continue
		}
		ep, err := veth.Lookup(c.key(k.Spec.Name))
		if errors.Is(err, veth.ErrNotFound) || errors.Is(err, veth.ErrIncomplete) {
			// An add that died half way, or a namespace removed by hand:
			// make it again (its processes, if any, are in the old one).
			if err := c.unplumb(k, true); err != nil {
				return err
			}
			if _, err := c.plumb(k, nil); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !sameAddrs(ep.Addrs, vethAddrs(k)) {
			// An apply that died between the switch and the namespace.
			if err := veth.SetAddrs(c.key(k.Spec.Name), vethAddrs(k), c.st.Config.Delivery != maps.DeliveryBridge); err != nil {
				return err
			}
		}
		if err := c.wire(k, ep, false); err != nil {
			return err
		}
	}
	if err := c.pruneDeliveries(); err != nil {
		return err
	}
	// Leftovers: namespaces of containers that are gone.
	keys, err := veth.List()
	if err != nil {
		return err
	}
	var stray []string
	for _, n := range keys {
		if known[n] || !c.ours(n) {
			continue // another installation's (another --bpffs) are not ours
		}
		// Only ours: its host-side veth is in this (the host) namespace.
		if l, err := netlink.LinkByName(veth.HostIfName(n)); err == nil && l.Attrs().Alias == "l3iso:"+n {
			stray = append(stray, n)
		}
	}
	if err := veth.DeleteMany(stray); err != nil {
		return err
	}
	// And veths of containers that are gone whose namespace mount is gone
	// too, but not the namespace (an orphan socket holds it).
	if err := veth.DeleteStray(func(n string) bool { return known[n] || !c.ours(n) }); err != nil {
		return err
	}
	// TC links nothing needs: of an uplink `up --uplink` replaced (after
	// the new one has its programs), of interfaces that are gone.
	keep := map[string]bool{}
	for _, w := range c.st.HostTC() {
		keep[w.Pin] = true
	}
	for _, k := range c.cur {
		if isNetns(k) {
			for _, w := range c.st.VethTC(c.HostIfName(k.Spec.Name)) {
				keep[w.Pin] = true
			}
		}
	}
	if _, err := c.st.PruneTC(keep); err != nil {
		return err
	}
	if c.st.Config.Delivery != maps.DeliveryBridge {
		if err := veth.DeleteBridge(); err != nil {
			return err
		}
	}
	return nil
}

// pruneDeliveries removes l3_ports and l3_delivs entries that no current
// netns container explains: of deleted containers whose removal died half
// way, and of veths that were recreated under another ifindex.
func (c *Control) pruneDeliveries() error {
	wantPort := map[int]uint32{}
	wantAddr := map[netip.Addr]bool{}
	for _, k := range c.cur {
		if !isNetns(k) {
			continue
		}
		if l, err := netlink.LinkByName(c.HostIfName(k.Spec.Name)); err == nil {
			wantPort[l.Attrs().Index] = k.ID
		}
		for _, a := range ips(k) {
			wantAddr[a] = true
		}
	}
	ports, err := c.st.Maps.PortIDs()
	if err != nil {
		return err
	}
	for idx, id := range ports {
		if wantPort[idx] != id {
			if err := c.st.Maps.DeletePort(idx, nil); err != nil {
				return err
			}
		}
	}
	delivs, err := c.st.Maps.Deliveries()
	if err != nil {
		return err
	}
	var stale []netip.Addr
	for a := range delivs {
		if !wantAddr[a] {
			stale = append(stale, a)
		}
	}
	return c.st.Maps.DeleteDeliveries(stale)
}

func sameAddrs(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range a {
		seen[p] = true
	}
	for _, p := range b {
		if !seen[p] {
			return false
		}
	}
	return true
}

// teardownDelivery removes the host-wide delivery state (for down): the
// uplink's TC link, the bridge, and the forwarding l3iso turned on.
func (c *Control) teardownDelivery() error {
	if c.st.Config.Uplink != "" {
		if err := c.st.DetachTC(c.st.Config.Uplink); err != nil {
			return err
		}
	}
	if err := veth.DeleteBridge(); err != nil {
		return err
	}
	return c.setForwarding(false)
}

// shrinkAddrs removes from netns container o (the old version of k) the
// addresses k no longer has: deliveries first, then the namespace's
// addresses and host routes. It runs before the policy switch, while the
// maps still own them.
func (c *Control) shrinkAddrs(o, k maps.Container) error {
	want := map[netip.Prefix]bool{}
	for _, p := range vethAddrs(k) {
		want[p] = true
	}
	var stay []netip.Prefix
	var goneIPs []netip.Addr
	for _, p := range vethAddrs(o) {
		if want[p] {
			stay = append(stay, p)
		} else {
			goneIPs = append(goneIPs, p.Addr())
		}
	}
	if err := c.st.Maps.DeleteDeliveries(goneIPs); err != nil {
		return err
	}
	return veth.SetAddrs(c.key(k.Spec.Name), stay, c.st.Config.Delivery != maps.DeliveryBridge)
}

// growAddrs gives netns container k all its addresses, after the switch.
func (c *Control) growAddrs(k maps.Container) error {
	if err := veth.SetAddrs(c.key(k.Spec.Name), vethAddrs(k), c.st.Config.Delivery != maps.DeliveryBridge); err != nil {
		return err
	}
	ep, err := veth.Lookup(c.key(k.Spec.Name))
	if err != nil {
		return err
	}
	return c.wire(k, ep, false)
}
