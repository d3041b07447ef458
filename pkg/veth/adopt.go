package veth

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Adopted namespaces: a container runtime (podman, containerd, a
// Kubernetes node) made the network namespace and calls l3iso's CNI
// plugin to connect it. l3iso then makes only the veth pair: its host side
// HostIfName(KEY) with alias l3iso:KEY as for its own containers, its peer
// inside the runtime's namespace under the name the runtime chose
// (CNI_IFNAME), with the same addresses, gateway neighbours, default
// routes and host routes as Create gives. It never mounts, enters for
// good, or deletes the namespace: deleting the host-side veth (Detach)
// removes the peer with it, and when the runtime releases the namespace
// the kernel removes the pair by itself.

// AttachSpec describes a veth pair to make into a runtime's namespace.
type AttachSpec struct {
	// Container is the container's key (see Key).
	Container string
	// Netns is the path of the runtime's network namespace (CNI_NETNS:
	// /run/netns/NAME, /proc/PID/ns/net, ...).
	Netns string
	// IfName is the peer's name in that namespace (CNI_IFNAME).
	IfName string
	// Addrs, MTU and SubnetsViaGateway are as in Spec.
	Addrs             []netip.Prefix
	MTU               int
	SubnetsViaGateway bool
}

// Attach makes the veth pair of an adopted namespace (see above). It is
// all-or-nothing: on failure the pair is deleted again (the namespace is
// left as it was).
func Attach(s AttachSpec) (*Endpoint, error) {
	ep, err := attach(s)
	if err != nil {
		return nil, fmt.Errorf("attach container %q to netns %s: %w", s.Container, s.Netns, err)
	}
	return ep, nil
}

func attach(s AttachSpec) (ep *Endpoint, err error) {
	if err := ValidateKey(s.Container); err != nil {
		return nil, err
	}
	if s.IfName == "" || len(s.IfName) > maxIfNameLen {
		return nil, fmt.Errorf("%w: interface name %q must be 1 to %d characters long", ErrInvalid, s.IfName, maxIfNameLen)
	}
	mtu := s.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if err := validateAddrs(s.Addrs, mtu); err != nil {
		return nil, err
	}
	c := &creation{
		name:       s.Container,
		nsPath:     s.Netns,
		hostIf:     HostIfName(s.Container),
		addrs:      append([]netip.Prefix(nil), s.Addrs...),
		mtu:        mtu,
		viaGateway: s.SubnetsViaGateway,
		nsFd:       -1,
		peerName:   s.IfName,
		nsDesc:     s.Netns,
		skipLo:     true,
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if uerr := c.undo(); uerr != nil {
				err = fmt.Errorf("%w; cleaning up also failed: %w", err, uerr)
			}
		}
		c.close()
	}()
	if c.nsFd, err = unix.Open(s.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("netns %s %w", s.Netns, ErrNotFound)
		}
		return nil, fmt.Errorf("open netns %s: %w", s.Netns, err)
	}
	if c.ns, err = nsHandle(s.Netns); err != nil {
		return nil, err
	}
	if _, err := c.ns.LinkByName(s.IfName); err == nil {
		return nil, fmt.Errorf("%w: netns %s already has an interface %s: the runtime must give l3iso a free interface name (CNI_IFNAME)", ErrExists, s.Netns, s.IfName)
	}
	for _, step := range []func() error{c.makeVeth, c.upPeer, c.addAddrs, c.addGateways, c.addHostRoutes, c.setAlias} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return c.endpoint(), nil
}

// Detach deletes the host-side veth of an adopted container (the peer in
// the runtime's namespace goes with it, and so do the host routes and
// neighbour entries on it). A veth that is gone already, or that is not
// the container's (its alias says another), is left alone: no error.
func Detach(container string) error {
	if err := ValidateKey(container); err != nil {
		return err
	}
	l, err := HostLink(container)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s of container %q: %w", l.Attrs().Name, container, err)
	}
	return nil
}

// HostLink returns the host-side veth of container (by name and alias),
// or an error wrapping ErrNotFound.
func HostLink(container string) (netlink.Link, error) {
	hostIf := HostIfName(container)
	l, err := netlink.LinkByName(hostIf)
	if isNotFound(err) {
		return nil, fmt.Errorf("host interface %s %w", hostIf, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up host interface %s: %w", hostIf, err)
	}
	if owner, ok := ownerOf(l); !ok || owner != container || l.Type() != "veth" {
		return nil, fmt.Errorf("host interface %s %w for container %q (type %s, alias %q)", hostIf, ErrNotFound, container, l.Type(), l.Attrs().Alias)
	}
	return l, nil
}

// LookupAdopted describes an adopted container from the host side alone
// (the runtime's namespace is not entered): its host-side veth, and its
// peer's MAC address from the permanent neighbour entries Attach made
// (none when the container has no address: PeerMAC is nil then). An error
// wraps ErrNotFound when the veth is gone — its namespace was released.
func LookupAdopted(container string, addrs []netip.Addr) (*Endpoint, error) {
	l, err := HostLink(container)
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{
		Container: container, HostIf: l.Attrs().Name, HostIfIndex: l.Attrs().Index,
		HostMAC: l.Attrs().HardwareAddr, PeerIfIndex: l.Attrs().ParentIndex,
		Bridged: l.Attrs().MasterIndex != 0,
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(ep.HostIfIndex, fam) })
		if err != nil {
			return nil, fmt.Errorf("list neighbours of %s: %w", ep.HostIf, err)
		}
		for _, n := range ns {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && n.State&netlink.NUD_PERMANENT != 0 && slices.Contains(addrs, ip.Unmap()) && len(n.HardwareAddr) == 6 {
				ep.PeerMAC = n.HardwareAddr
				return ep, nil
			}
		}
	}
	return ep, nil
}

// CheckAttached reports what differs between an adopted container's veth
// and what Attach made: the host-side veth (alias), its peer IfName in the
// namespace at netns (the same pair), and the addresses on the peer (every
// one of addrs). nil when all is as made.
func CheckAttached(container, netns, ifName string, addrs []netip.Prefix) error {
	l, err := HostLink(container)
	if err != nil {
		return err
	}
	ns, err := nsHandle(netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	peer, err := ns.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("netns %s has no interface %s: %w", netns, ifName, err)
	}
	if peer.Type() != "veth" || peer.Attrs().Index != l.Attrs().ParentIndex || l.Attrs().Index != peer.Attrs().ParentIndex {
		return fmt.Errorf("%w: %s in netns %s is not the peer of host interface %s", ErrIncomplete, ifName, netns, l.Attrs().Name)
	}
	if peer.Attrs().OperState == netlink.OperDown || peer.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%w: %s in netns %s is down", ErrIncomplete, ifName, netns)
	}
	list, err := retryDump(func() ([]netlink.Addr, error) { return ns.AddrList(peer, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s in netns %s: %w", ifName, netns, err)
	}
	have := map[netip.Prefix]bool{}
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			ones, _ := a.Mask.Size()
			have[netip.PrefixFrom(ip.Unmap(), ones)] = true
		}
	}
	for _, p := range addrs {
		if !have[p] {
			return fmt.Errorf("%w: %s in netns %s lacks address %s", ErrIncomplete, ifName, netns, p)
		}
	}
	return nil
}
