package veth

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BridgeName is the Linux bridge of the "bridge" delivery mode, the
// Docker-style baseline: host-side veths are its ports.
const BridgeName = "l3iso-br0"

// bridgeName is the bridge the functions below work on; tests point it at a
// bridge of their own so they never touch a real l3iso-br0.
var bridgeName = BridgeName

// EnsureBridge creates BridgeName if it is absent, brings it up and adds the
// gateway addresses gw4 (IPv4) and gw6 (IPv6, without DAD) to it; addresses
// it already has are kept. It returns the bridge's interface index.
//
// The bridge gets a fixed random MAC address when it is created, so its
// address does not change as ports come and go (a bridge without one takes
// the lowest port MAC): enslaved containers resolve their gateway to it.
// Multicast snooping is off, so the baseline floods multicast like a hub.
func EnsureBridge(gw4 []netip.Prefix, gw6 []netip.Prefix) (ifindex int, err error) {
	ifindex, err = ensureBridge(gw4, gw6)
	if err != nil {
		return 0, fmt.Errorf("ensure bridge %s: %w", bridgeName, err)
	}
	return ifindex, nil
}

func ensureBridge(gw4, gw6 []netip.Prefix) (int, error) {
	for _, p := range gw4 {
		if !p.IsValid() || !p.Addr().Is4() {
			return 0, fmt.Errorf("%w: %v is not an IPv4 prefix", ErrInvalid, p)
		}
	}
	for _, p := range gw6 {
		if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() {
			return 0, fmt.Errorf("%w: %v is not an IPv6 prefix", ErrInvalid, p)
		}
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return 0, fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()

	br, err := h.LinkByName(bridgeName)
	if isNotFound(err) {
		mac, merr := randomMAC()
		if merr != nil {
			return 0, merr
		}
		la := netlink.NewLinkAttrs()
		la.Name = bridgeName
		la.HardwareAddr = mac
		la.Flags = net.FlagUp
		off := false
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la, MulticastSnooping: &off}); err != nil && !errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("add bridge: %w", err)
		}
		br, err = h.LinkByName(bridgeName)
	}
	if err != nil {
		return 0, fmt.Errorf("look up bridge: %w", err)
	}
	if br.Type() != "bridge" {
		return 0, fmt.Errorf("interface %s %w but is a %s, not a bridge: delete it with `ip link del %s`",
			bridgeName, ErrExists, br.Type(), bridgeName)
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return 0, fmt.Errorf("bring up: %w", err)
		}
	}
	for _, p := range append(append([]netip.Prefix(nil), gw4...), gw6...) {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(br, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("add address %v: %w", p, err)
		}
	}
	return br.Attrs().Index, nil
}

// Enslave makes the host-side veth hostIf (see HostIfName) a port of
// BridgeName and moves the container's host routes and neighbour entries onto
// the bridge. Inside the container only the gateway neighbour entries change
// (to the bridge MAC), so its namespace, addresses and sockets stay as they
// are. Containers on the bridge that share an on-link prefix reach each other
// directly over L2. Enslaving a port again repairs its routes.
func Enslave(hostIf string) error {
	if err := moveBridge(hostIf, true); err != nil {
		return fmt.Errorf("enslave %s to bridge %s: %w", hostIf, bridgeName, err)
	}
	return nil
}

// Release takes the host-side veth hostIf off the bridge and restores routed
// delivery: host routes and neighbour entries on the veth again, and the
// container's gateway neighbours pointing at the veth. Releasing a veth that
// is not enslaved repairs its routes.
func Release(hostIf string) error {
	if err := moveBridge(hostIf, false); err != nil {
		return fmt.Errorf("release %s from bridge %s: %w", hostIf, bridgeName, err)
	}
	return nil
}

// moveBridge moves a container's delivery onto the bridge (toBridge) or back
// onto its host-side veth.
func moveBridge(hostIf string, toBridge bool) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	br, err := h.LinkByName(bridgeName)
	if isNotFound(err) {
		if !toBridge {
			br = nil // nothing to release from; still restore the routes
		} else {
			return fmt.Errorf("bridge %s %w: create it first (EnsureBridge)", bridgeName, ErrNotFound)
		}
	} else if err != nil {
		return fmt.Errorf("look up bridge: %w", err)
	} else if br.Type() != "bridge" {
		return fmt.Errorf("%w: interface %s is a %s, not a bridge", ErrInvalid, bridgeName, br.Type())
	}

	veth, err := h.LinkByName(hostIf)
	if isNotFound(err) {
		return fmt.Errorf("host interface %s %w", hostIf, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", hostIf, err)
	}
	container, ok := ownerOf(veth)
	if !ok || veth.Type() != "veth" || ValidateKey(container) != nil {
		return fmt.Errorf("%w: %s is not the host-side veth of an l3iso container", ErrInvalid, hostIf)
	}
	ns, err := nsHandle(NetnsPath(container))
	if err != nil {
		return fmt.Errorf("container %q: %w", container, err)
	}
	defer ns.Close()
	eth0, addrs, err := peerInfo(ns)
	if err != nil {
		return fmt.Errorf("container %q: %w", container, err)
	}
	m := &move{host: h, ns: ns, container: container, veth: veth, br: br, eth0: eth0, addrs: addrs}
	if toBridge {
		err = m.to(br, veth)
		if err != nil {
			// Best effort back to routed delivery, so a failed Enslave
			// leaves the container reachable as before.
			if rerr := m.to(veth, br); rerr != nil {
				err = fmt.Errorf("%w; restoring routed delivery also failed: %w", err, rerr)
			}
		}
		return err
	}
	return m.to(veth, br)
}

// move holds what moving one container between veth and bridge needs.
type move struct {
	host, ns  *netlink.Handle
	container string
	veth, br  netlink.Link // br is nil when no bridge exists
	eth0      netlink.Link
	addrs     []netip.Prefix
}

// to makes dev (the bridge or the veth itself) the device the host reaches
// the container through, and old the one it no longer uses (may be nil).
func (m *move) to(dev, old netlink.Link) error {
	peerMAC := m.eth0.Attrs().HardwareAddr
	idx := dev.Attrs().Index
	// Neighbours first, so the host can reach the container the moment the
	// routes switch.
	for _, p := range m.addrs {
		if err := setNeigh(m.host, idx, p.Addr(), peerMAC); err != nil {
			return fmt.Errorf("set host neighbour %v lladdr %v dev %s: %w", p.Addr(), peerMAC, dev.Attrs().Name, err)
		}
	}
	toBridge := m.br != nil && idx == m.br.Attrs().Index
	if toBridge && m.veth.Attrs().MasterIndex != idx {
		if err := m.host.LinkSetMasterByIndex(m.veth, idx); err != nil {
			return fmt.Errorf("set master of %s: %w", m.veth.Attrs().Name, err)
		}
		m.veth.Attrs().MasterIndex = idx
	}
	if !toBridge && m.veth.Attrs().MasterIndex != 0 {
		if err := m.host.LinkSetNoMaster(m.veth); err != nil {
			return fmt.Errorf("clear master of %s: %w", m.veth.Attrs().Name, err)
		}
		m.veth.Attrs().MasterIndex = 0
	}
	for _, p := range m.addrs {
		if err := m.host.RouteReplace(hostRoute(p.Addr(), idx)); err != nil {
			return fmt.Errorf("route %v dev %s: %w", HostPrefix(p.Addr()), dev.Attrs().Name, err)
		}
	}
	has4, has6 := families(m.addrs)
	for _, gw := range []struct {
		ip netip.Addr
		on bool
	}{{GatewayIPv4, has4}, {GatewayIPv6, has6}} {
		if !gw.on {
			continue
		}
		if err := setGatewayNeigh(m.ns, m.eth0.Attrs().Index, gw.ip, dev.Attrs().HardwareAddr); err != nil {
			return fmt.Errorf("in netns %s: %w", NetnsName(m.container), err)
		}
	}
	if old != nil {
		for _, p := range m.addrs {
			if err := delNeigh(m.host, old.Attrs().Index, p.Addr()); err != nil {
				return fmt.Errorf("delete host neighbour %v dev %s: %w", p.Addr(), old.Attrs().Name, err)
			}
		}
	}
	return nil
}

// DeleteBridge releases every l3iso container from BridgeName (restoring
// their routed delivery) and deletes the bridge. A missing bridge is not an
// error.
func DeleteBridge() error {
	if err := deleteBridge(true); err != nil {
		return fmt.Errorf("delete bridge %s: %w", bridgeName, err)
	}
	return nil
}

func deleteBridge(release bool) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	br, err := h.LinkByName(bridgeName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up bridge: %w", err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("%w: interface %s is a %s, not a bridge: delete it with `ip link del %s`",
			ErrInvalid, bridgeName, br.Type(), bridgeName)
	}
	var errs []error
	if release {
		links, err := retryDump(h.LinkList)
		if err != nil {
			return fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			owner, ok := ownerOf(l)
			if !ok || l.Type() != "veth" || l.Attrs().MasterIndex != br.Attrs().Index || ValidateKey(owner) != nil {
				continue
			}
			if _, err := os.Stat(NetnsPath(owner)); errors.Is(err, fs.ErrNotExist) {
				continue // deleted; the kernel is destroying the veth
			}
			if err := Release(l.Attrs().Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Routes and neighbour entries on the bridge go with it.
	if err := h.LinkDel(br); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("delete: %w", err))
	}
	return errors.Join(errs...)
}
