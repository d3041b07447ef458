// Package veth creates and removes the kernel objects behind l3iso's "netns"
// containers: a named network namespace per container and a veth pair that
// joins it to the host.
//
// For a container with key KEY (its name NAME, or TAG_NAME: see Key) the
// package makes
//
//   - the network namespace l3iso-KEY, bind-mounted at /run/netns/l3iso-KEY
//     exactly like `ip netns add` does, so iproute2 sees it;
//   - a veth pair whose host side HostIfName(KEY) ("l3i-KEY") stays in the
//     host namespace and whose peer is eth0 inside the container namespace.
//
// Inside the namespace lo and eth0 are up, the container addresses sit on
// eth0 (the IPv6 ones, and eth0's EUI-64 link-local address, with
// IFA_F_NODAD, so they are usable at once), and the default routes go to
// link-local gateways — 169.254.1.1 (onlink) and fe80::1 — that nobody owns:
// permanent neighbour entries map both to the MAC address of the host-side
// veth (or of the bridge, see Enslave). Frames to the gateway therefore land
// in the host stack without ARP, NDP or proxy ARP.
//
// On the host, every container address gets a /32 or /128 route through the
// host-side veth (protocol RouteProtocol) and a permanent neighbour entry that
// points at the container's eth0 MAC, so plain kernel routing (the "routed"
// delivery mode) reaches the container with no ARP or NDP either.
//
// Neither proxy_arp nor proxy_ndp is enabled on the host-side veth: the tests
// show TCP and UDP flowing both ways, IPv4 and IPv6, without them. What is
// needed is the gateway neighbour entry inside the container: without it the
// container's ARP for 169.254.1.1 goes unanswered, and proxy_arp=1 on the
// host veth does not help while the host does not forward (the kernel proxies
// ARP only on forwarding interfaces). The host-side neighbour entries are not
// strictly needed (the container answers ARP for its own address) but save a
// resolution round trip. Proxying would matter only for routed
// container-to-container traffic between addresses of one on-link prefix:
// give containers bare /32 and /128 addresses in routed mode, or use the
// bridge, where such containers reach each other over L2.
//
// The bridge baseline (BridgeName, EnsureBridge, Enslave, Release,
// DeleteBridge) is the classic Docker-style path (docs/DESIGN.md): host-side veths become
// ports of one Linux bridge and the container routes move onto the bridge.
//
// Call the functions from the host network namespace (not from inside Do).
// The package keeps no state of its own. Every name derives from the container
// key and Lookup, List, Delete and DeleteAll read the kernel, so a crashed
// process loses nothing. TC and BPF programs are attached by other packages
// to the interfaces made here.
package veth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/policy"
)

// Names and fixed addresses shared with the other l3iso packages.
const (
	// NetnsPrefix starts the name of every container network namespace.
	NetnsPrefix = "l3iso-"
	// NetnsDir is where named network namespaces are bind-mounted; it is the
	// directory iproute2 uses, so `ip netns list` shows l3iso containers.
	NetnsDir = "/run/netns"
	// HostIfPrefix starts the name of every host-side veth.
	HostIfPrefix = "l3i-"
	// PeerIfName is the name of the container side of the veth pair, inside
	// the container's network namespace.
	PeerIfName = "eth0"
	// MaxNameLen is the longest container name (policy.MaxNameLen).
	MaxNameLen = policy.MaxNameLen
	// DefaultMTU is the MTU of both veth ends when Spec.MTU is 0.
	DefaultMTU = 1500
	// RouteProtocol marks the host routes this package installs (rtm_protocol;
	// `ip route` shows "proto 76"), so they can be told from anybody else's.
	RouteProtocol netlink.RouteProtocol = 76

	// aliasPrefix + container name is stored as the interface alias
	// (IFLA_IFALIAS) of the host-side veth: it maps a host interface back to
	// its container, also when the interface name is a hashed one.
	aliasPrefix = "l3iso:"
	// maxIfNameLen is IFNAMSIZ-1.
	maxIfNameLen = 15
)

// Gateway addresses the container's default routes point at. The host never
// owns them; permanent neighbour entries inside the container resolve them to
// the host-side veth (or bridge) MAC address.
var (
	GatewayIPv4 = netip.MustParseAddr("169.254.1.1")
	GatewayIPv6 = netip.MustParseAddr("fe80::1")
)

// Errors callers can test for with errors.Is.
var (
	// ErrNotFound means the container (its namespace) or interface does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a kernel object Create needs already exists.
	ErrExists = errors.New("already exists")
	// ErrInvalid means a name, address or MTU was rejected before anything was made.
	ErrInvalid = errors.New("invalid argument")
	// ErrIncomplete means some, but not all, of a container's kernel objects exist.
	ErrIncomplete = errors.New("incomplete container")
)

// Spec describes a netns-mode container to create.
type Spec struct {
	// Container is the container's key (see Key): its name of 1 to
	// MaxNameLen characters of [a-z0-9-], after its installation's tag.
	Container string
	// Addrs are the container's addresses with their prefix length; the prefix
	// becomes an on-link route inside the container. Use a /32 or /128 (see
	// HostPrefix) for an address without an on-link subnet.
	Addrs []netip.Prefix
	// MTU of both veth ends; 0 means DefaultMTU.
	MTU int
	// SubnetsViaGateway routes the subnets of Addrs through the gateway
	// instead of on-link (see SetSubnetRoutes).
	SubnetsViaGateway bool
}

// Endpoint describes the kernel objects of one netns-mode container.
type Endpoint struct {
	// Container is the container name.
	Container string
	// NetnsPath is the bind mount of the container's network namespace,
	// /run/netns/l3iso-NAME.
	NetnsPath string
	// HostIf, HostIfIndex and HostMAC describe the host-side veth, in the
	// host network namespace.
	HostIf      string
	HostIfIndex int
	HostMAC     net.HardwareAddr
	// PeerIfIndex and PeerMAC describe eth0 inside the container namespace.
	PeerIfIndex int
	PeerMAC     net.HardwareAddr
	// Addrs are the container addresses configured on eth0.
	Addrs []netip.Prefix
	// Bridged reports whether the host-side veth is a port of a bridge
	// (see Enslave).
	Bridged bool
}

// Close releases the file descriptors the Endpoint holds. An Endpoint holds
// none today (it only names kernel objects); Close is safe to call more than
// once and exists so callers treat it like the package's other resources.
func (e *Endpoint) Close() error { return nil }

// Every function of this package that takes a container takes its key:
// the container's name, or, for an l3iso installation with a name tag
// (one per --bpffs, so that two installations on one host never share a
// name), TAG_NAME (Key). Keys without a tag are the names of an l3iso
// before tags: its containers keep them. A tag has no '_' and a name
// cannot have one, so the two kinds never collide.

// tagSep separates the tag from the container name in a key.
const tagSep = "_"

// Key returns the key of container name for an installation with name tag
// tag ("" = none).
func Key(tag, name string) string {
	if tag == "" {
		return name
	}
	return tag + tagSep + name
}

// SplitKey returns the tag and the container name of a key.
func SplitKey(key string) (tag, name string) {
	if t, n, ok := strings.Cut(key, tagSep); ok {
		return t, n
	}
	return "", key
}

// NetnsName returns the name of the container's network namespace as `ip
// netns` shows it: "l3iso-" + key (l3iso-NAME, l3iso-TAG_NAME).
func NetnsName(key string) string { return NetnsPrefix + key }

// NetnsPath returns the path of the container's namespace bind mount.
func NetnsPath(key string) string { return filepath.Join(NetnsDir, NetnsName(key)) }

// HostIfName returns the name of the container's host-side veth. It is
// "l3i-" + key when that fits in IFNAMSIZ-1 (15) characters. A longer key
// without a tag becomes "l3i-" + the first 2 characters + the first 9 hex
// digits of the SHA-256 of the whole name: two long names collide with
// odds of 1 in 2^36. A longer tagged one keeps "l3i-TAG_" and fills the
// rest with base32 digits of the SHA-256 of the key (6 for a 4-character
// tag: odds of 1 in 2^30). On a collision Create fails and names the
// container holding the interface.
func HostIfName(key string) string {
	if len(HostIfPrefix)+len(key) <= maxIfNameLen {
		return HostIfPrefix + key
	}
	sum := sha256.Sum256([]byte(key))
	tag, _ := SplitKey(key)
	if tag == "" {
		return HostIfPrefix + key[:2] + hex.EncodeToString(sum[:5])[:9]
	}
	prefix := HostIfPrefix + tag + tagSep
	digits := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))
	return prefix + digits[:max(maxIfNameLen-len(prefix), 0)]
}

// ValidateKey reports whether key is a valid container key: a valid name,
// optionally after a tag (1 to 8 characters of a-z and 0-9) and '_'.
func ValidateKey(key string) error {
	tag, name := SplitKey(key)
	if strings.Contains(key, tagSep) {
		if len(tag) == 0 || len(tag) > 8 {
			return fmt.Errorf("%w: container key %q: the tag before %q must be 1 to 8 characters long", ErrInvalid, key, tagSep)
		}
		for i := 0; i < len(tag); i++ {
			if c := tag[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
				return fmt.Errorf("%w: container key %q: the tag contains %q: use only a-z and 0-9", ErrInvalid, key, c)
			}
		}
	}
	return ValidateName(name)
}

// ValidateName reports whether container is a valid container name: the
// policy's rule (policy.ValidateName).
func ValidateName(container string) error {
	if err := policy.ValidateName(container); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// HostPrefix returns a as a single-address prefix (/32 or /128).
func HostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// ParseAddr parses a container address: "10.0.0.5/24" keeps its prefix, a
// bare "10.0.0.5" or "fd00::5" becomes a /32 or /128.
func ParseAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: address %q: %w", ErrInvalid, s, err)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: address %q: %w", ErrInvalid, s, err)
	}
	return HostPrefix(a), nil
}

// validateAddrs checks the container addresses and MTU of a Spec.
func validateAddrs(addrs []netip.Prefix, mtu int) error {
	seen := make(map[netip.Addr]bool, len(addrs))
	has6 := false
	for _, p := range addrs {
		a := p.Addr()
		switch {
		case !p.IsValid():
			return fmt.Errorf("%w: address %v is not a valid prefix", ErrInvalid, p)
		case a.Zone() != "":
			return fmt.Errorf("%w: address %v: zones are not allowed", ErrInvalid, p)
		case a.Is4In6():
			return fmt.Errorf("%w: address %v is IPv4-mapped: write it as %v", ErrInvalid, p, netip.PrefixFrom(a.Unmap(), p.Bits()-96))
		case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(),
			a.IsLinkLocalMulticast(), a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Errorf("%w: address %v cannot belong to a container (unspecified, loopback, multicast, broadcast or link-local)", ErrInvalid, p)
		case p.Bits() == 0:
			return fmt.Errorf("%w: address %v: a /0 prefix would take over the default route: use /%d for a single address", ErrInvalid, p, a.BitLen())
		case seen[a]:
			return fmt.Errorf("%w: address %v is listed twice", ErrInvalid, a)
		}
		seen[a] = true
		has6 = has6 || a.Is6()
	}
	if mtu < 68 || mtu > 65535 {
		return fmt.Errorf("%w: MTU %d out of range 68..65535", ErrInvalid, mtu)
	}
	if has6 && mtu < 1280 {
		return fmt.Errorf("%w: MTU %d is below the IPv6 minimum 1280 and the container has IPv6 addresses", ErrInvalid, mtu)
	}
	return nil
}

// createHook, when set by tests, runs after each Create step; an error it
// returns makes Create fail there, so every rollback path can be exercised.
var createHook func(step string) error

// Create steps, in order; the names appear in errors and in createHook calls.
const (
	stepNetns      = "create netns"
	stepVeth       = "create veth pair"
	stepPeer       = "bring up lo and eth0"
	stepAddrs      = "add container addresses"
	stepGateways   = "add gateway neighbours and default routes"
	stepHostRoutes = "add host routes and neighbours"
	stepAlias      = "mark the host veth as the container's"
)

// creation tracks what Create has made so far, to undo it on failure.
type creation struct {
	name, nsPath, hostIf string
	// peerName is the container side's name (PeerIfName, or the runtime's
	// choice for an adopted namespace: see Attach); nsDesc names the
	// namespace in errors.
	peerName, nsDesc string
	// skipLo leaves the namespace's lo as it is (an adopted namespace:
	// the runtime's to set up).
	skipLo           bool
	addrs            []netip.Prefix
	mtu              int
	viaGateway       bool
	hostMAC, peerMAC net.HardwareAddr

	host *netlink.Handle // host namespace
	ns   *netlink.Handle // container namespace
	nsFd int

	madeFile, mounted, madeVeth bool
	hostIndex, peerIndex        int
}

// Create makes the network namespace, veth pair, addresses, routes and
// neighbour entries of a netns-mode container (see the package comment).
// It is all-or-nothing: on failure everything it made is removed and the error
// says which step failed on which object. A namespace that already exists is
// an error wrapping ErrExists.
func Create(s Spec) (*Endpoint, error) {
	ep, err := create(s)
	if err != nil {
		return nil, fmt.Errorf("create container %q: %w", s.Container, err)
	}
	return ep, nil
}

func create(s Spec) (ep *Endpoint, err error) {
	if err := ValidateKey(s.Container); err != nil {
		return nil, err
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
		nsPath:     NetnsPath(s.Container),
		hostIf:     HostIfName(s.Container),
		addrs:      append([]netip.Prefix(nil), s.Addrs...),
		mtu:        mtu,
		viaGateway: s.SubnetsViaGateway,
		nsFd:       -1,
		peerName:   PeerIfName,
		nsDesc:     NetnsName(s.Container),
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if uerr := c.undo(); uerr != nil {
				err = fmt.Errorf("%w; cleaning up also failed: %w: remove the leftovers with `l3iso container del %s`", err, uerr, c.name)
			}
		}
		c.close()
	}()

	steps := []struct {
		name string
		fn   func() error
	}{
		{stepNetns, c.makeNetns},
		{stepVeth, c.makeVeth},
		{stepPeer, c.upPeer},
		{stepAddrs, c.addAddrs},
		{stepGateways, c.addGateways},
		{stepHostRoutes, c.addHostRoutes},
		{stepAlias, c.setAlias},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return nil, err
		}
		if createHook != nil {
			if err := createHook(st.name); err != nil {
				return nil, fmt.Errorf("%s: %w", st.name, err)
			}
		}
	}
	return c.endpoint(), nil
}

// endpoint describes what the creation made.
func (c *creation) endpoint() *Endpoint {
	return &Endpoint{
		Container:   c.name,
		NetnsPath:   c.nsPath,
		HostIf:      c.hostIf,
		HostIfIndex: c.hostIndex,
		HostMAC:     c.hostMAC,
		PeerIfIndex: c.peerIndex,
		PeerMAC:     c.peerMAC,
		Addrs:       c.addrs,
	}
}

// open picks both veth MACs and opens the host's netlink handle.
func (c *creation) open() (err error) {
	if c.hostMAC, err = randomMAC(); err != nil {
		return err
	}
	if c.peerMAC, err = randomMAC(); err != nil {
		return err
	}
	if c.host, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	return nil
}

// makeNetns creates the namespace and its bind mount the way `ip netns add`
// does, and opens a netlink handle inside it.
func (c *creation) makeNetns() error {
	if err := ensureNetnsDir(); err != nil {
		return err
	}
	f, err := os.OpenFile(c.nsPath, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("netns %s %w: run `l3iso container del %s` or `ip netns del %s`",
			NetnsName(c.name), ErrExists, c.name, NetnsName(c.name))
	}
	if err != nil {
		return fmt.Errorf("create netns mount point %s: %w", c.nsPath, err)
	}
	f.Close()
	c.madeFile = true

	return inThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, c.nsPath, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount new netns on %s: %w", c.nsPath, err)
		}
		c.mounted = true
		fd, err := unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open new netns: %w", err)
		}
		c.nsFd = fd
		// A netlink socket belongs to the namespace it was created in.
		if c.ns, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("open netlink socket in netns %s: %w", NetnsName(c.name), err)
		}
		return nil
	})
}

// makeVeth creates the veth pair with the peer directly inside the container
// namespace under its final name, so no rename can race.
func (c *creation) makeVeth() error {
	la := netlink.NewLinkAttrs()
	la.Name = c.hostIf
	la.MTU = c.mtu
	la.HardwareAddr = c.hostMAC
	la.Flags = net.FlagUp
	v := &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         c.peerName,
		PeerHardwareAddr: c.peerMAC,
		PeerNamespace:    netlink.NsFd(c.nsFd),
		PeerTxQLen:       -1,
	}
	err := c.host.LinkAdd(v)
	if errors.Is(err, unix.EEXIST) {
		if err := clearStaleHostIf(c.host, c.hostIf, c.name); err != nil {
			return err
		}
		v.Index = 0
		err = c.host.LinkAdd(v)
	}
	if err != nil {
		return fmt.Errorf("add veth pair %s (host) / %s (netns %s): %w", c.hostIf, c.peerName, c.nsDesc, err)
	}
	c.madeVeth = true
	if v.Index == 0 {
		return fmt.Errorf("add veth pair %s: the kernel did not report its interface index", c.hostIf)
	}
	c.hostIndex = v.Index
	// No link-local address (and so no DAD, router solicitations or MLD
	// reports) on the host side: the host needs no IPv6 address there.
	// Set before the peer comes up, i.e. before the carrier would trigger
	// address generation.
	if err := c.host.LinkSetIP6AddrGenMode(v, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("set addr_gen_mode none on %s: %w", c.hostIf, err)
	}
	return nil
}

// upPeer brings lo and eth0 up inside the container namespace.
func (c *creation) upPeer() error {
	eth0, err := c.ns.LinkByName(c.peerName)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", c.peerName, c.nsDesc, err)
	}
	c.peerIndex = eth0.Attrs().Index
	// No kernel-generated link-local address (and so no DAD for it): eth0
	// gets the same EUI-64 address from addAddrs, with IFA_F_NODAD. This
	// replaces net.ipv6.conf.eth0.accept_dad=0, because writing /proc/sys
	// in a fresh namespace costs ~50 µs with few namespaces but ~500 µs
	// with 1,000 of them (Linux 6.18), while netlink stays constant. Set
	// before eth0 comes up, i.e. before it has a carrier.
	if err := c.ns.LinkSetIP6AddrGenMode(eth0, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return fmt.Errorf("set addr_gen_mode none on %s in netns %s: %w", c.peerName, c.nsDesc, err)
	}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: 1}} // LOOPBACK_IFINDEX
	if !c.skipLo {
		if err := c.ns.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring up lo in netns %s: %w", c.nsDesc, err)
		}
	}
	if err := c.ns.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring up %s in netns %s: %w", c.peerName, c.nsDesc, err)
	}
	return nil
}

func (c *creation) peer() netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: c.peerName, Index: c.peerIndex}}
}

// addAddrs adds eth0's link-local address and the container addresses, the
// IPv6 ones without duplicate address detection so they work at once.
func (c *creation) addAddrs() error {
	ll := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(linkLocal(c.peerMAC), 64)), Flags: unix.IFA_F_NODAD}
	if err := c.ns.AddrAdd(c.peer(), ll); err != nil {
		if _, has6 := families(c.addrs); has6 || !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("add link-local address %v to %s in netns %s: %w (is IPv6 disabled in new namespaces? see net.ipv6.conf.default.disable_ipv6 and net.core.devconf_inherit_init_net)",
				ll.IPNet, c.peerName, c.nsDesc, err)
		}
		// IPv6 is disabled and the container has no IPv6 address: fine.
	}
	for _, p := range c.addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := c.ns.AddrAdd(c.peer(), a); err != nil {
			return fmt.Errorf("add address %v to %s in netns %s: %w", p, c.peerName, c.nsDesc, err)
		}
	}
	return nil
}

// addGateways installs, for each address family the container has, the
// permanent gateway neighbour (pointing at the host-side veth) and the default
// route through it.
func (c *creation) addGateways() error {
	has4, has6 := families(c.addrs)
	if has4 {
		if err := setGatewayNeigh(c.ns, c.peerIndex, GatewayIPv4, c.hostMAC); err != nil {
			return fmt.Errorf("in netns %s: %w", c.nsDesc, err)
		}
		r := &netlink.Route{
			LinkIndex: c.peerIndex,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        GatewayIPv4.AsSlice(),
			Flags:     int(netlink.FLAG_ONLINK),
		}
		if err := c.ns.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %v dev %s onlink in netns %s: %w", GatewayIPv4, c.peerName, c.nsDesc, err)
		}
	}
	if has6 {
		if err := setGatewayNeigh(c.ns, c.peerIndex, GatewayIPv6, c.hostMAC); err != nil {
			return fmt.Errorf("in netns %s: %w", c.nsDesc, err)
		}
		r := &netlink.Route{
			LinkIndex: c.peerIndex,
			Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			Gw:        GatewayIPv6.AsSlice(),
		}
		if err := c.ns.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %v dev %s in netns %s: %w", GatewayIPv6, c.peerName, c.nsDesc, err)
		}
	}
	if c.viaGateway {
		if err := subnetRoutes(c.ns, c.peerIndex, c.addrs, true); err != nil {
			return fmt.Errorf("in netns %s: %w", c.nsDesc, err)
		}
	}
	return nil
}

// addHostRoutes installs, per container address, a permanent neighbour entry
// and a /32 or /128 route on the host-side veth.
func (c *creation) addHostRoutes() error {
	for _, p := range c.addrs {
		if err := setNeigh(c.host, c.hostIndex, p.Addr(), c.peerMAC); err != nil {
			return fmt.Errorf("add host neighbour %v lladdr %v dev %s: %w", p.Addr(), c.peerMAC, c.hostIf, err)
		}
		if err := c.host.RouteAdd(hostRoute(p.Addr(), c.hostIndex)); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add host route %v dev %s: %w: the host already routes this address (another container owns it?): delete that route or pick another address",
					HostPrefix(p.Addr()), c.hostIf, err)
			}
			return fmt.Errorf("add host route %v dev %s: %w", HostPrefix(p.Addr()), c.hostIf, err)
		}
	}
	return nil
}

// setAlias names the container in the host veth's alias. It comes last:
// the alias is what makes Lookup take the veth for the container's, so a
// container whose add died before this point (eth0 down, addresses or
// routes missing) is incomplete and gets made again, never half used. The
// kernel ignores IFLA_IFALIAS in RTM_NEWLINK, so it cannot come with the
// veth itself.
func (c *creation) setAlias() error {
	l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.hostIf, Index: c.hostIndex}}
	if err := c.host.LinkSetAlias(l, aliasPrefix+c.name); err != nil {
		return fmt.Errorf("set alias of %s: %w", c.hostIf, err)
	}
	return nil
}

// undo removes what Create made, newest first. Deleting the host veth
// (synchronously, so a failed Create leaves nothing behind when it returns)
// also deletes its peer and every route and neighbour entry on it.
func (c *creation) undo() error {
	var errs []error
	if c.madeVeth {
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.hostIf, Index: c.hostIndex}}
		if err := c.host.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", c.hostIf, err))
		}
	}
	if c.ns != nil {
		c.ns.Close()
		c.ns = nil
	}
	if c.nsFd >= 0 {
		unix.Close(c.nsFd)
		c.nsFd = -1
	}
	if c.mounted {
		if err := unix.Unmount(c.nsPath, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", c.nsPath, err))
		}
	}
	if c.madeFile {
		if err := os.Remove(c.nsPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.nsPath, err))
		}
	}
	return errors.Join(errs...)
}

func (c *creation) close() {
	if c.ns != nil {
		c.ns.Close()
	}
	if c.nsFd >= 0 {
		unix.Close(c.nsFd)
	}
	if c.host != nil {
		c.host.Close()
	}
}

// clearStaleHostIf handles an existing interface with the host-side name of a
// container being created. If it belongs to an earlier container of the same
// name (its alias says so) it is a leftover — usually of a namespace the
// kernel is still tearing down after Delete — so wait briefly for it to go,
// then delete it. Anything else is an error.
func clearStaleHostIf(h *netlink.Handle, ifName, container string) error {
	l, err := h.LinkByName(ifName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up existing interface %s: %w", ifName, err)
	}
	owner, ok := ownerOf(l)
	if !ok && l.Type() == "veth" && gone(h, ifName, staleWait) {
		// A veth without its alias, made by an add that died before
		// its last step, whose namespace (and so the pair) is going.
		return nil
	}
	if !ok || owner != container || l.Type() != "veth" {
		who := "another program"
		if ok {
			who = fmt.Sprintf("container %q", owner)
		}
		return fmt.Errorf("host interface %s %w and belongs to %s: delete it with `ip link del %s` or pick another container name",
			ifName, ErrExists, who, ifName)
	}
	if gone(h, ifName, staleWait) {
		return nil
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete leftover veth %s of an earlier container %q: %w", ifName, container, err)
	}
	return nil
}

// staleWait bounds how long Create waits for the kernel to destroy a
// leftover veth of an earlier container with the same name.
const staleWait = 2 * time.Second

// gone polls until interface name no longer exists or wait passes.
func gone(h *netlink.Handle, name string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for sleep := time.Millisecond; ; sleep = min(2*sleep, 50*time.Millisecond) {
		if _, err := h.LinkByName(name); isNotFound(err) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(sleep)
	}
}

// Lookup describes an existing container from its kernel objects. It returns
// an error wrapping ErrNotFound if the container's namespace does not exist,
// and one wrapping ErrIncomplete if the namespace exists but not the veth.
func Lookup(container string) (*Endpoint, error) {
	ep, err := lookup(container)
	if err != nil {
		return nil, fmt.Errorf("look up container %q: %w", container, err)
	}
	return ep, nil
}

func lookup(container string) (*Endpoint, error) {
	if err := ValidateKey(container); err != nil {
		return nil, err
	}
	path := NetnsPath(container)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("netns %s %w", NetnsName(container), ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()
	hostIf := HostIfName(container)
	l, err := host.LinkByName(hostIf)
	if isNotFound(err) {
		return nil, fmt.Errorf("%w: netns %s exists but host interface %s does not: run `l3iso container del %s` and add it again",
			ErrIncomplete, NetnsName(container), hostIf, container)
	}
	if err != nil {
		return nil, fmt.Errorf("look up host interface %s: %w", hostIf, err)
	}
	if owner, ok := ownerOf(l); !ok || owner != container || l.Type() != "veth" {
		return nil, fmt.Errorf("%w: host interface %s is not the veth of container %q (type %s, alias %q)",
			ErrIncomplete, hostIf, container, l.Type(), l.Attrs().Alias)
	}
	ns, err := nsHandle(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	eth0, addrs, err := peerInfo(ns)
	if err != nil {
		return nil, fmt.Errorf("in netns %s: %w", NetnsName(container), err)
	}
	if l.Attrs().ParentIndex != eth0.Attrs().Index {
		return nil, fmt.Errorf("%w: host interface %s is not paired with %s in netns %s (its peer has index %d, %s has %d)",
			ErrIncomplete, hostIf, PeerIfName, NetnsName(container), l.Attrs().ParentIndex, PeerIfName, eth0.Attrs().Index)
	}
	return &Endpoint{
		Container:   container,
		NetnsPath:   path,
		HostIf:      hostIf,
		HostIfIndex: l.Attrs().Index,
		HostMAC:     l.Attrs().HardwareAddr,
		PeerIfIndex: eth0.Attrs().Index,
		PeerMAC:     eth0.Attrs().HardwareAddr,
		Addrs:       addrs,
		Bridged:     l.Attrs().MasterIndex != 0,
	}, nil
}

// peerInfo returns eth0 and its global addresses, read through a handle in
// the container namespace.
func peerInfo(ns *netlink.Handle) (netlink.Link, []netip.Prefix, error) {
	eth0, err := ns.LinkByName(PeerIfName)
	if err != nil {
		return nil, nil, fmt.Errorf("look up %s: %w", PeerIfName, err)
	}
	list, err := retryDump(func() ([]netlink.Addr, error) { return ns.AddrList(eth0, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses of %s: %w", PeerIfName, err)
	}
	var addrs []netip.Prefix
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		ones, _ := a.Mask.Size()
		addrs = append(addrs, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return eth0, addrs, nil
}

// List returns the keys of the containers that have an l3iso network
// namespace (of every installation: see SplitKey), sorted.
func List() ([]string, error) {
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var names []string
	for _, e := range entries {
		if c, ok := strings.CutPrefix(e.Name(), NetnsPrefix); ok && ValidateKey(c) == nil {
			names = append(names, c)
		}
	}
	return names, nil
}

// Delete removes a container: its namespace bind mount (the kernel then
// destroys the namespace and, with it, the veth pair and the host routes and
// neighbour entries on the host-side veth), the routes and neighbour entries
// on the bridge if the container was enslaved, and a host-side veth left over
// without its namespace. Deleting an absent container is not an error.
//
// The kernel destroys a released namespace asynchronously, a few
// milliseconds later (later still while a process keeps it alive); Create of
// the same name waits for that. If the namespace mount of an enslaved
// container was already removed by hand, its addresses are unknown and its
// bridge routes stay until DeleteBridge.
func Delete(container string) error {
	if err := ValidateKey(container); err != nil {
		return fmt.Errorf("delete container: %w", err)
	}
	if err := deleteOne(container); err != nil {
		return fmt.Errorf("delete container %q: %w", container, err)
	}
	return nil
}

func deleteOne(container string) error {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()
	path := NetnsPath(container)
	_, statErr := os.Stat(path)
	nsExists := statErr == nil

	hostIf := HostIfName(container)
	var hostLink netlink.Link
	if l, err := host.LinkByName(hostIf); err == nil {
		if owner, ok := ownerOf(l); ok && owner == container {
			hostLink = l
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("look up host interface %s: %w", hostIf, err)
	}

	var errs []error
	if hostLink != nil && hostLink.Attrs().MasterIndex != 0 && nsExists {
		// Routes and neighbours on the bridge outlive the veth.
		if err := unbridge(host, path, hostLink.Attrs().MasterIndex); err != nil {
			errs = append(errs, err)
		}
	}
	if nsExists || !errors.Is(statErr, fs.ErrNotExist) {
		if err := removeNetns(path); err != nil {
			errs = append(errs, err)
		}
	}
	if hostLink != nil && !nsExists {
		// A veth without a namespace mount: its namespace is being
		// destroyed, or some process holds it. Give the kernel a moment,
		// then delete the pair ourselves.
		if !gone(host, hostIf, 500*time.Millisecond) {
			if err := host.LinkDel(hostLink); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete leftover veth %s: %w", hostIf, err))
			}
		}
	}
	return errors.Join(errs...)
}

// unbridge deletes the host routes and neighbour entries of the container
// whose namespace is at nsPath from the bridge with index brIndex.
func unbridge(host *netlink.Handle, nsPath string, brIndex int) error {
	ns, err := nsHandle(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	_, addrs, err := peerInfo(ns)
	if err != nil {
		return fmt.Errorf("read container addresses from %s: %w", nsPath, err)
	}
	var errs []error
	for _, p := range addrs {
		if err := host.RouteDel(hostRoute(p.Addr(), brIndex)); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete host route %v from bridge: %w", HostPrefix(p.Addr()), err))
		}
		if err := delNeigh(host, brIndex, p.Addr()); err != nil {
			errs = append(errs, fmt.Errorf("delete host neighbour %v from bridge: %w", p.Addr(), err))
		}
	}
	return errors.Join(errs...)
}

// DeleteAll removes every l3iso container namespace, the bridge and any
// host-side veth (name prefix "l3i-") left over, for `l3iso down`. It
// releases all namespaces first and then waits for the kernel to destroy
// their veth pairs in one batch, which is much faster than deleting veths one
// by one; only veths that outlive that (their namespace held by a process)
// are deleted individually.
func DeleteAll() error {
	if err := deleteAll(func(string) bool { return true }, true); err != nil {
		return fmt.Errorf("delete all containers: %w", err)
	}
	return nil
}

// deleteAll is DeleteAll restricted to the containers match accepts; veths
// without an l3iso alias count only when match accepts "". Tests use it to
// stay clear of containers they did not make.
func deleteAll(match func(container string) bool, withBridge bool) error {
	var errs []error
	if withBridge {
		// No Release first: the containers go away too.
		if err := deleteBridge(false); err != nil {
			errs = append(errs, err)
		}
	}
	names, err := List()
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range names {
		if match(n) {
			if err := removeNetns(NetnsPath(n)); err != nil {
				errs = append(errs, fmt.Errorf("container %q: %w", n, err))
			}
		}
	}

	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("open netlink socket: %w", err))...)
	}
	defer host.Close()
	// Wait while the kernel makes progress destroying the released
	// namespaces; stop when nothing is left or nothing changed for a while.
	const idle, limit = 500 * time.Millisecond, 30 * time.Second
	start, lastChange, lastCount := time.Now(), time.Now(), -1
	for {
		left, err := leftoverVeths(host, match)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if len(left) == 0 {
			break
		}
		if len(left) != lastCount {
			lastCount, lastChange = len(left), time.Now()
		}
		if time.Since(lastChange) > idle || time.Since(start) > limit {
			for _, l := range left {
				if err := host.LinkDel(l); err != nil && !isNotFound(err) {
					errs = append(errs, fmt.Errorf("delete leftover veth %s: %w", l.Attrs().Name, err))
				}
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// DeleteStray deletes the host veths l3iso made in this network namespace
// (alias l3iso:NAME) whose container keep does not accept and has no
// namespace mount any more: what a namespace that an orphan socket keeps
// alive leaves after its container was deleted with Delete. The host
// routes and neighbour entries on such a veth go with it.
func DeleteStray(keep func(container string) bool) error {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer host.Close()
	left, err := leftoverVeths(host, func(owner string) bool {
		if owner == "" || keep(owner) {
			return false
		}
		_, err := os.Stat(NetnsPath(owner))
		return errors.Is(err, fs.ErrNotExist)
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range left {
		if err := host.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stray veth %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// leftoverVeths lists host veths named with HostIfPrefix whose container
// match accepts.
func leftoverVeths(h *netlink.Handle, match func(string) bool) ([]netlink.Link, error) {
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Type() != "veth" || !strings.HasPrefix(l.Attrs().Name, HostIfPrefix) {
			continue
		}
		owner, _ := ownerOf(l)
		if match(owner) {
			out = append(out, l)
		}
	}
	return out, nil
}

// ownerOf returns the container a host-side veth belongs to, from its alias.
func ownerOf(l netlink.Link) (string, bool) {
	return strings.CutPrefix(l.Attrs().Alias, aliasPrefix)
}

// removeNetns unmounts and removes a namespace bind mount, like `ip netns
// del`. A file that is not mounted is removed; a missing one is fine.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// hostRoute is the host route to container address a through ifIndex.
func hostRoute(a netip.Addr, ifIndex int) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: ifIndex,
		Dst:       ipNet(HostPrefix(a)),
		Protocol:  RouteProtocol,
	}
	if a.Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

// setNeigh adds or replaces a permanent neighbour entry.
func setNeigh(h *netlink.Handle, ifIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	return h.NeighSet(&netlink.Neigh{
		LinkIndex:    ifIndex,
		Family:       family(ip),
		State:        netlink.NUD_PERMANENT,
		IP:           ip.AsSlice(),
		HardwareAddr: mac,
	})
}

// setGatewayNeigh points a container's gateway address at mac.
func setGatewayNeigh(ns *netlink.Handle, ifIndex int, gw netip.Addr, mac net.HardwareAddr) error {
	if err := setNeigh(ns, ifIndex, gw, mac); err != nil {
		return fmt.Errorf("set gateway neighbour %v lladdr %v dev %s: %w", gw, mac, PeerIfName, err)
	}
	return nil
}

// delNeigh deletes a neighbour entry; a missing one is fine.
func delNeigh(h *netlink.Handle, ifIndex int, ip netip.Addr) error {
	err := h.NeighDel(&netlink.Neigh{LinkIndex: ifIndex, Family: family(ip), IP: ip.AsSlice()})
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func families(addrs []netip.Prefix) (has4, has6 bool) {
	for _, p := range addrs {
		has4 = has4 || p.Addr().Is4()
		has6 = has6 || p.Addr().Is6()
	}
	return has4, has6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// linkLocal returns the modified EUI-64 link-local address for mac
// (RFC 4291), the one the kernel would generate.
func linkLocal(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10] = mac[0]^0x02, mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// randomMAC returns a random locally administered unicast MAC address.
// Create picks both veth MACs itself, so it knows them without asking.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("generate MAC address: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// isNotFound reports whether err says a link, route or neighbour is absent.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// retryDump calls a netlink dump until it is not interrupted by concurrent
// changes (netlink.ErrDumpInterrupted), a bounded number of times.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		res, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 20 {
			continue
		}
		return res, err
	}
}
