package veth

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SetSubnetRoutes chooses how a container reaches the other addresses of
// its subnets (the prefixes of its addresses, e.g. 10.78.0.0/24 for
// 10.78.0.1/24). On-link (viaGateway false, the kernel's own prefix route)
// it resolves them with ARP / NDP on eth0: right on a bridge, where sibling
// containers answer. Via the gateway (true) it sends them to the host-side
// veth like any other destination, which the host delivers: right for routed
// and direct delivery, where no one on eth0's link would answer ARP or NDP
// for a sibling. Only routes change, so the container's addresses and
// sockets stay as they are. Host prefixes (/32, /128) have no subnet route.
func SetSubnetRoutes(container string, viaGateway bool) error {
	if err := ValidateKey(container); err != nil {
		return err
	}
	ns, err := nsHandle(NetnsPath(container))
	if err != nil {
		return fmt.Errorf("container %q: %w", container, err)
	}
	defer ns.Close()
	eth0, addrs, err := peerInfo(ns)
	if err != nil {
		return fmt.Errorf("container %q: in netns %s: %w", container, NetnsName(container), err)
	}
	if err := subnetRoutes(ns, eth0.Attrs().Index, addrs, viaGateway); err != nil {
		return fmt.Errorf("container %q: in netns %s: %w", container, NetnsName(container), err)
	}
	return nil
}

// Metrics of the kernel's prefix routes, which subnetRoutes replaces in place.
const (
	prefixMetric4 = 0
	prefixMetric6 = 256 // IP6_RT_PRIO_ADDRCONF
)

// subnetRoutes replaces the route of every subnet of addrs on eth0 (index
// ifIndex): through the gateway, or on-link as the kernel makes it.
func subnetRoutes(ns *netlink.Handle, ifIndex int, addrs []netip.Prefix, viaGateway bool) error {
	done := map[netip.Prefix]bool{}
	for _, p := range addrs {
		if p.Bits() == p.Addr().BitLen() || done[p.Masked()] {
			continue
		}
		done[p.Masked()] = true
		r := &netlink.Route{LinkIndex: ifIndex, Dst: ipNet(p.Masked()), Table: unix.RT_TABLE_MAIN}
		switch {
		case viaGateway && p.Addr().Is4():
			r.Gw, r.Flags, r.Priority, r.Protocol = GatewayIPv4.AsSlice(), int(netlink.FLAG_ONLINK), prefixMetric4, RouteProtocol
		case viaGateway:
			r.Gw, r.Priority, r.Protocol = GatewayIPv6.AsSlice(), prefixMetric6, RouteProtocol
		case p.Addr().Is4():
			r.Scope, r.Src, r.Priority, r.Protocol = netlink.SCOPE_LINK, net.IP(p.Addr().AsSlice()), prefixMetric4, unix.RTPROT_KERNEL
		default:
			r.Priority, r.Protocol = prefixMetric6, unix.RTPROT_KERNEL
		}
		if err := ns.RouteReplace(r); err != nil {
			how := "on-link"
			if viaGateway {
				how = "via the gateway"
			}
			return fmt.Errorf("route subnet %v %s dev %s: %w", p.Masked(), how, PeerIfName, err)
		}
	}
	return nil
}

// DeleteMany removes the containers named, like Delete, but releases all
// their namespaces first and then waits for the kernel to destroy their
// veth pairs in one batch (much faster than one by one). Containers of other
// names, and the bridge, are left alone.
func DeleteMany(containers []string) error {
	want := make(map[string]bool, len(containers))
	for _, c := range containers {
		if err := ValidateKey(c); err != nil {
			return fmt.Errorf("delete containers: %w", err)
		}
		want[c] = true
	}
	if len(want) == 0 {
		return nil
	}
	var errs []error
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("delete containers: open netlink socket: %w", err)
	}
	defer host.Close()
	// Routes and neighbours of enslaved containers live on the bridge and
	// outlive their veths: remove them while the namespaces still tell
	// the addresses.
	for c := range want {
		l, err := host.LinkByName(HostIfName(c))
		if err != nil || l.Attrs().MasterIndex == 0 {
			continue
		}
		if owner, ok := ownerOf(l); !ok || owner != c {
			continue
		}
		if err := unbridge(host, NetnsPath(c), l.Attrs().MasterIndex); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, fmt.Errorf("container %q: %w", c, err))
		}
	}
	if err := deleteAll(func(c string) bool { return want[c] }, false); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete containers: %w", err)
	}
	return nil
}

// SetAddrs makes the addresses of an existing container exactly addrs,
// without touching what stays: new ones get their eth0 address (IPv6
// without DAD), their host route and permanent neighbour entry (on the
// host-side veth, or on the bridge when it is enslaved) and, for a family the
// container did not have, the gateway neighbour and default route; old ones
// lose all of that. Sockets on addresses that stay never notice. Subnet
// routes follow viaGateway (see SetSubnetRoutes).
func SetAddrs(container string, addrs []netip.Prefix, viaGateway bool) error {
	if err := ValidateKey(container); err != nil {
		return err
	}
	if err := setAddrs(container, addrs, viaGateway); err != nil {
		return fmt.Errorf("readdress container %q: %w", container, err)
	}
	return nil
}

func setAddrs(container string, addrs []netip.Prefix, viaGateway bool) error {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()
	hostIf := HostIfName(container)
	vl, err := host.LinkByName(hostIf)
	if isNotFound(err) {
		return fmt.Errorf("host interface %s %w", hostIf, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", hostIf, err)
	}
	if owner, ok := ownerOf(vl); !ok || owner != container {
		return fmt.Errorf("%w: %s is not the host-side veth of container %q", ErrIncomplete, hostIf, container)
	}
	dev := vl
	if m := vl.Attrs().MasterIndex; m != 0 {
		if dev, err = host.LinkByIndex(m); err != nil {
			return fmt.Errorf("look up the bridge of %s: %w", hostIf, err)
		}
	}
	ns, err := nsHandle(NetnsPath(container))
	if err != nil {
		return err
	}
	defer ns.Close()
	eth0, have, err := peerInfo(ns)
	if err != nil {
		return fmt.Errorf("in netns %s: %w", NetnsName(container), err)
	}
	if err := validateAddrs(addrs, eth0.Attrs().MTU); err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	for _, p := range addrs {
		want[p] = true
	}
	peerMAC, idx := eth0.Attrs().HardwareAddr, dev.Attrs().Index
	// Old ones first: an IPv6 address whose prefix changes must go before
	// it can come back with the new one. The address on eth0 is what the
	// next run compares with (have), so it goes after the host's route
	// and neighbour entry and comes before them: a run that dies half way
	// leaves nothing the next one would skip.
	for _, p := range have {
		if want[p] {
			continue
		}
		if err := host.RouteDel(hostRoute(p.Addr(), idx)); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete host route %v: %w", HostPrefix(p.Addr()), err)
		}
		if err := delNeigh(host, idx, p.Addr()); err != nil {
			return fmt.Errorf("delete host neighbour %v: %w", p.Addr(), err)
		}
		if err := ns.AddrDel(eth0, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %v from %s in netns %s: %w", p, PeerIfName, NetnsName(container), err)
		}
	}
	had := map[netip.Prefix]bool{}
	for _, p := range have {
		had[p] = true
	}
	for _, p := range addrs {
		if had[p] {
			continue
		}
		if err := setNeigh(host, idx, p.Addr(), peerMAC); err != nil {
			return fmt.Errorf("add host neighbour %v lladdr %v dev %s: %w", p.Addr(), peerMAC, dev.Attrs().Name, err)
		}
		if err := host.RouteReplace(hostRoute(p.Addr(), idx)); err != nil {
			return fmt.Errorf("add host route %v dev %s: %w", HostPrefix(p.Addr()), dev.Attrs().Name, err)
		}
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := ns.AddrAdd(eth0, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %v to %s in netns %s: %w", p, PeerIfName, NetnsName(container), err)
		}
	}
	has4, has6 := families(addrs)
	for _, gw := range []struct {
		ip  netip.Addr
		on  bool
		dst *net.IPNet
	}{
		{GatewayIPv4, has4, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}},
		{GatewayIPv6, has6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
	} {
		if !gw.on {
			continue
		}
		if err := setGatewayNeigh(ns, eth0.Attrs().Index, gw.ip, dev.Attrs().HardwareAddr); err != nil {
			return fmt.Errorf("in netns %s: %w", NetnsName(container), err)
		}
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: gw.dst, Gw: gw.ip.AsSlice()}
		if gw.ip.Is4() {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := ns.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %v in netns %s: %w", gw.ip, NetnsName(container), err)
		}
	}
	return subnetRoutes(ns, eth0.Attrs().Index, addrs, viaGateway)
}
