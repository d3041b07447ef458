package control

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// hostAddr is an address l3iso configures on the host for shared-mode
// containers: on the uplink, or on lo when there is none.
type hostAddr struct {
	prefix netip.Prefix // the IP with the prefix length to configure
	onLo   bool         // always on lo (private loopbacks), whatever the uplink
}

// desired is every address the given containers need on the host, by IP.
// An IP shared by several containers (port ranges) appears once.
func desired(cs []maps.Container) map[netip.Addr]hostAddr {
	out := map[netip.Addr]hostAddr{}
	for _, k := range cs {
		if k.Spec.Mode == policy.ModeNetns {
			continue // configured inside the container's namespace
		}
		for _, a := range k.Spec.Addresses {
			p := netip.PrefixFrom(a.Addr, a.Addr.BitLen())
			if a.Subnet.IsValid() {
				p = netip.PrefixFrom(a.Addr, a.Subnet.Bits())
			}
			if have, ok := out[a.Addr]; !ok || have.prefix.Bits() > p.Bits() {
				out[a.Addr] = hostAddr{prefix: p}
			}
		}
		if k.Isolated() {
			lo6 := k.Loopback6()
			out[lo6] = hostAddr{prefix: netip.PrefixFrom(lo6, 128), onLo: true}
		}
	}
	return out
}

func (c *Control) device(h hostAddr) (netlink.Link, error) {
	if !h.onLo && c.st.Config.UplinkIfindex != 0 {
		l, err := netlink.LinkByIndex(int(c.st.Config.UplinkIfindex))
		if err != nil {
			return nil, fmt.Errorf("uplink %s (index %d) is gone: %w; run `l3iso down` and `l3iso up` with the new uplink", c.st.Config.Uplink, c.st.Config.UplinkIfindex, err)
		}
		return l, nil
	}
	l, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return l, nil
}

// hostAddrs lists every address configured on any interface: IP → device.
func hostAddrs() (map[netip.Addr]string, error) {
	var (
		links []netlink.Link
		err   error
	)
	for i := 0; i < 5; i++ { // link dumps are interrupted while links change
		if links, err = netlink.LinkList(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var addrs []netlink.Addr
	for i := 0; i < 5; i++ {
		if addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok {
			out[ip.Unmap()] = names[a.LinkIndex]
		}
	}
	return out, nil
}

// checkHostConflicts refuses addresses someone else configured on the host:
// l3iso would otherwise take them away from a running service.
func (c *Control) checkHostConflicts(cur []maps.Container, adding []policy.Container) error {
	ours := desired(cur)
	have, err := hostAddrs()
	if err != nil {
		return err
	}
	for _, spec := range adding {
		if spec.Mode == policy.ModeNetns {
			continue
		}
		for _, a := range spec.Addresses {
			if _, mine := ours[a.Addr]; mine {
				continue
			}
			if dev, ok := have[a.Addr]; ok {
				return fmt.Errorf("address %s of container %q is already configured on %s by someone other than l3iso: remove it from the host (ip addr del %s dev %s) or choose another address", a.Addr, spec.Name, dev, a.Addr, dev)
			}
		}
	}
	return nil
}

// configureHost adds the addresses newer needs that older did not have (or
// that are missing, after a crash). The maps already own them (rule 9).
func (c *Control) configureHost(older, newer []maps.Container) error {
	want := desired(newer)
	have, err := hostAddrs()
	if err != nil {
		return err
	}
	ips := make([]netip.Addr, 0, len(want))
	for ip := range want {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	for _, ip := range ips {
		if _, ok := have[ip]; ok {
			continue
		}
		h := want[ip]
		dev, err := c.device(h)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(h.prefix.Bits(), ip.BitLen())}}
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(dev, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("configure %s on %s: %w", h.prefix, dev.Attrs().Name, err)
		}
	}
	return nil
}

// unconfigureHost removes the addresses older needed and newer does not,
// while the maps still own them.
func (c *Control) unconfigureHost(older, newer []maps.Container) error {
	want := desired(newer)
	for ip, h := range desired(older) {
		if _, keep := want[ip]; keep {
			continue
		}
		dev, err := c.device(h)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(h.prefix.Bits(), ip.BitLen())}}
		if err := netlink.AddrDel(dev, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s from %s: %w", h.prefix, dev.Attrs().Name, err)
		}
	}
	return nil
}
