package control

import (
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

// hostAddrItem is the host's own IPv6 address toward shared containers
// (maps.HostAddr6), there while l3iso is up: `up` (its repair) adds it,
// `down` removes it.
var hostAddrItem = hostItem{kind: itemAddr6, ip: maps.HostAddr6, onLo: true, prefix: netip.PrefixFrom(maps.HostAddr6, 128)}

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

// hostUseError is the refusal of the first of ips the host uses (nil if
// none): owner names each one's container; waived says which uses other
// than the host's own may be taken.
func hostUseError(ips []netip.Addr, uses map[netip.Addr]hostUse, owner map[netip.Addr]string, waived func(netip.Addr) bool) error {
	for _, ip := range ips {
		u, ok := uses[ip]
		switch {
		case !ok:
		case u.own:
			return fmt.Errorf("address %s of container %q is already in use on this host: it %s; choose another address for the container (--force cannot take the host's own addresses)", ip, owner[ip], u.what)
		case !waived(ip):
			return fmt.Errorf("address %s of container %q is used by this host: it %s; choose another address, or pass --force to take it anyway (%s)", ip, owner[ip], u.what, u.loss)
		}
	}
	return nil
}
