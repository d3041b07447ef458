package control

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// What l3iso configures on the host for shared-mode containers, all tagged
// with RouteProtocol:
//   - IPv4 addresses: a `local` route in table local on lo (AnyIP): the IP
//     is bindable and reachable (ARP is answered on every interface), yet
//     on no interface, so the host never picks it as a source;
//   - IPv4 subnet broadcasts: a `broadcast` route, so datagrams to it are
//     delivered to sockets;
//   - IPv6 addresses (IPv6 bind needs a configured address) and private
//     IPv6 loopbacks: /128 addresses without DAD on lo (or the uplink).
type hostItem struct {
	kind   int // itemLocal4, itemBcast4, itemAddr6
	ip     netip.Addr
	onLo   bool
	prefix netip.Prefix // itemAddr6
}

const (
	itemLocal4 = iota
	itemBcast4
	itemAddr6
)

func (h hostItem) String() string {
	switch h.kind {
	case itemLocal4:
		return "local " + h.ip.String()
	case itemBcast4:
		return "broadcast " + h.ip.String()
	}
	return h.prefix.String()
}

// desired is everything the given containers need on the host. An IP
// shared by several containers (port ranges, one subnet) appears once.
func desired(cs []maps.Container) map[hostItem]bool {
	n := 0
	for _, k := range cs {
		n += len(k.Spec.Addresses) + 1
	}
	out := make(map[hostItem]bool, n)
	for _, k := range cs {
		eachItem(k, func(h hostItem) { out[h] = true })
	}
	return out
}

// eachItem calls f with each item container k needs on the host.
func eachItem(k maps.Container, f func(hostItem)) {
	if k.Spec.Mode == policy.ModeNetns {
		return // configured inside the container's namespace
	}
	for _, a := range k.Spec.Addresses {
		if a.Addr.Is4() {
			f(hostItem{kind: itemLocal4, ip: a.Addr, onLo: true})
			if b, ok := a.Broadcast(); ok {
				// On lo: what the host sends to it enters through lo,
				// where l3_tc_group copies it to the listeners.
				f(hostItem{kind: itemBcast4, ip: b, onLo: true})
			}
		} else {
			f(hostItem{kind: itemAddr6, ip: a.Addr, prefix: netip.PrefixFrom(a.Addr, 128)})
		}
	}
	if k.Isolated() {
		lo6 := k.Loopback6()
		f(hostItem{kind: itemAddr6, ip: lo6, onLo: true, prefix: netip.PrefixFrom(lo6, 128)})
	}
}

// sameItems reports whether a container needs the same host items before
// (o) and after (k) an apply.
func sameItems(o, k maps.Container) bool {
	return o.ID == k.ID && o.Spec.Mode == k.Spec.Mode && o.Isolated() == k.Isolated() &&
		slices.Equal(o.Spec.Addresses, k.Spec.Addresses)
}

// hostDiff is what changes on the host when the containers before (those
// that go, and the old version of those that change) become after (those
// that come, and the new version of those that change), while the
// containers same keep their items: what to remove and what to add. It
// equals diffItems of desired(before+same) and desired(after+same), without
// a map of every container's items: same is only scanned for the items in
// question.
func hostDiff(before, after []maps.Container, same iter.Seq[maps.Container]) (remove, add []hostItem) {
	b, a := desired(before), desired(after)
	if len(b) == 0 && len(a) == 0 {
		return nil, nil
	}
	for k := range same {
		eachItem(k, func(h hostItem) {
			delete(b, h)
			delete(a, h)
		})
	}
	return diffItems(b, a), diffItems(a, b)
}

// loIfindex is lo's: the kernel gives it index 1 in every network
// namespace (LOOPBACK_IFINDEX).
const loIfindex = 1

// ifindexes resolves lo and the uplink once per command.
func (c *Control) ifindexes() (lo, up int, err error) {
	if c.loIndex == 0 {
		c.loIndex = loIfindex
		c.upIndex = c.loIndex
		if c.st.Config.UplinkIfindex != 0 {
			u, err := netlink.LinkByIndex(int(c.st.Config.UplinkIfindex))
			if err != nil {
				return 0, 0, fmt.Errorf("uplink %s (index %d) is gone: %w; run `l3iso up --uplink IF` with the uplink to use now", c.st.Config.Uplink, c.st.Config.UplinkIfindex, err)
			}
			c.upIndex = u.Attrs().Index
		}
	}
	return c.loIndex, c.upIndex, nil
}

// apply configures (add) or removes the items.
func (c *Control) hostItems(add bool, items []hostItem) error {
	if len(items) == 0 {
		return nil
	}
	lo, up, err := c.ifindexes()
	if err != nil {
		return err
	}
	b, err := newNLBatch()
	if err != nil {
		return err
	}
	defer b.Close()
	sort.Slice(items, func(i, j int) bool { return items[i].ip.Less(items[j].ip) })
	for _, h := range items {
		dev := up
		if h.onLo {
			dev = lo
		}
		switch h.kind {
		case itemLocal4:
			err = b.route(add, h.ip, unix.RTN_LOCAL, lo)
		case itemBcast4:
			err = b.route(add, h.ip, unix.RTN_BROADCAST, dev)
		default:
			err = b.address(add, h.prefix, dev)
		}
		if err != nil {
			return err
		}
	}
	if err := b.done(); err != nil {
		if add {
			return fmt.Errorf("configure container addresses on the host: %w", err)
		}
		return fmt.Errorf("remove container addresses from the host: %w", err)
	}
	return nil
}

func diffItems(from, minus map[hostItem]bool) []hostItem {
	var out []hostItem
	for h := range from {
		if !minus[h] {
			out = append(out, h)
		}
	}
	return out
}

// configureHost adds what newer needs and older did not have. The maps
// already own it (rule 9).
func (c *Control) configureHost(older, newer []maps.Container) error {
	return c.hostItems(true, diffItems(desired(newer), desired(older)))
}

// unconfigureHost removes what older needed and newer does not, while the
// maps still own it.
func (c *Control) unconfigureHost(older, newer []maps.Container) error {
	return c.hostItems(false, diffItems(desired(older), desired(newer)))
}

// checkHostConflicts refuses addresses that are already local on the host
// and not l3iso's: taking them would break a running service. cur are the
// installed containers (what l3iso configured is theirs), adding the
// containers whose addresses are to be checked.
func (c *Control) checkHostConflicts(cur iter.Seq[maps.Container], adding []policy.Container) error {
	owner := map[netip.Addr]string{} // the last container that has it
	for _, spec := range adding {
		// netns containers too: the host routes their addresses to their
		// veth, which a local address would override.
		for _, a := range spec.Addresses {
			owner[a.Addr] = spec.Name
		}
	}
	if len(owner) == 0 {
		return nil
	}
	// Those l3iso configured already are its own.
	for k := range cur {
		eachItem(k, func(h hostItem) { delete(owner, h.ip) })
	}
	check := make([]netip.Addr, 0, len(owner))
	seen := make(map[netip.Addr]bool, len(owner))
	for _, spec := range adding { // in the policy's order: the first error is the first address
		for _, a := range spec.Addresses {
			if _, ok := owner[a.Addr]; ok && !seen[a.Addr] {
				seen[a.Addr] = true
				check = append(check, a.Addr)
			}
		}
	}
	local, err := localAddrs(check)
	if err != nil {
		return err
	}
	for _, ip := range check {
		if local[ip] {
			return fmt.Errorf("address %s of container %q is already in use on this host (%s), by someone other than l3iso: remove it from the host or choose another address", ip, owner[ip], whereLocal(ip))
		}
	}
	return nil
}

// localAddrs reports which of ips are local on the host (configured on an
// interface or covered by a local route): a route lookup each for a few, one
// dump of the local table for many.
func localAddrs(ips []netip.Addr) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	if len(ips) <= 16 {
		types, err := routeTypes(ips)
		if err != nil {
			return nil, err
		}
		for ip, typ := range types {
			if typ == unix.RTN_LOCAL {
				out[ip] = true
			}
		}
		return out, nil
	}
	want := map[netip.Addr]bool{}
	for _, ip := range ips {
		want[ip] = true
	}
	var prefixes []netip.Prefix
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list local routes: %w", err)
		}
		for _, r := range routes {
			if r.Type != unix.RTN_LOCAL || r.Dst == nil {
				continue
			}
			ip, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok {
				continue
			}
			bits, _ := r.Dst.Mask.Size()
			prefixes = append(prefixes, netip.PrefixFrom(ip.Unmap(), bits))
		}
	}
	for _, p := range prefixes {
		if p.IsSingleIP() {
			if want[p.Addr()] {
				out[p.Addr()] = true
			}
			continue
		}
		for _, ip := range ips { // few wide local routes (127.0.0.0/8): fine
			if p.Contains(ip) {
				out[ip] = true
			}
		}
	}
	return out, nil
}

// whereLocal says where a local address comes from, for error messages.
func whereLocal(ip netip.Addr) string {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err == nil {
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
				if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
					return fmt.Sprintf("configured on %s: ip addr del %s dev %s", l.Attrs().Name, a.IPNet, l.Attrs().Name)
				}
			}
		}
	}
	return "a local route covers it: see ip route show table local"
}

// sameSpec reports whether two containers are exactly alike (multicast in
// the same order too: policy.Diff may still find no change where this
// finds one, never the other way round).
func sameSpec(a, b policy.Container) bool {
	return a.Name == b.Name && a.Mode == b.Mode && a.Loopback == b.Loopback &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Multicast, b.Multicast)
}
