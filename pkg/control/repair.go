package control

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
)

// Check reports what is wrong with the installation, read from the kernel
// and never from l3iso's own record of it: its links, pins and TCX
// attachments (loader.State.Check, and each netns container's veth), each
// container's cgroup and namespace, the host addresses and routes the
// containers need, and a command that died half way. `l3iso status`
// shows the problems; `l3iso up` repairs every one.
func (c *Control) Check() ([]loader.Problem, error) {
	out, err := c.st.Check()
	if err != nil {
		return nil, err
	}
	if c.st.Config.Dirty {
		out = append(out, loader.Problem{Object: "l3iso", Issue: "a changing command was interrupted: what it did is half done"})
	}
	cs, err := c.all()
	if err != nil {
		return nil, err
	}
	for _, k := range cs {
		if id, err := cgroup.ID(c.CgroupPath(k.Spec.Name)); err != nil || id != k.CgroupID {
			out = append(out, loader.Problem{Object: "container " + k.Spec.Name, Issue: "its cgroup " + c.CgroupPath(k.Spec.Name) + " is missing or was made anew: its rules hold for no process"})
		}
		if !isNetns(k) {
			continue
		}
		if k.Spec.Adopted {
			out = append(out, c.checkAdopted(k)...)
			continue
		}
		if _, err := os.Stat(c.NetnsPath(k.Spec.Name)); err != nil {
			out = append(out, loader.Problem{Object: "container " + k.Spec.Name, Issue: "its network namespace " + c.NetnsName(k.Spec.Name) + " is missing"})
			continue
		}
		out = append(out, c.st.CheckVethTC(c.HostIfName(k.Spec.Name))...)
	}
	h, err := c.hostGaps()
	if err != nil {
		return nil, err
	}
	return append(out, h.problems()...), nil
}

// CheckState is Check on an installation loader.OpenForUp opened, before
// `up` changes anything.
func CheckState(st *loader.State) ([]loader.Problem, error) {
	c := &Control{st: st}
	var err error
	if c.gen, err = st.Maps.Active(); err != nil {
		return nil, err
	}
	out, err := c.Check()
	return append(st.Repinned(), out...), err
}

// hostGap is how the host differs from what the active policy needs.
type hostGap struct {
	missing []hostItem  // needed, and not on the host (or not where it belongs)
	moved   []movedAddr // l3iso's IPv6 addresses on an interface they do not belong on
	stray   []hostItem  // l3iso's routes that no container needs
	v6off   []string    // interfaces that need IPv6 addresses and have IPv6 disabled
	owner   map[netip.Addr]string
	upGone  error // the uplink is gone: nothing can be put on it
}

// movedAddr is an address l3iso configured (IFA_PROTO RouteProtocol) on
// interface ifindex, which is no longer where it belongs: an uplink l3iso
// used before `up --uplink` switched it.
type movedAddr struct {
	prefix  netip.Prefix
	ifindex int
}

func (g hostGap) problems() []loader.Problem {
	var out []loader.Problem
	if g.upGone != nil {
		out = append(out, loader.Problem{Object: "uplink", Issue: g.upGone.Error()})
	}
	for _, name := range g.v6off {
		out = append(out, loader.Problem{Object: "interface " + name, Issue: fmt.Sprintf("IPv6 is disabled (net.ipv6.conf.%s.disable_ipv6 = 1): the containers' IPv6 addresses on it are gone", name)})
	}
	for _, h := range g.missing {
		who := ""
		if n := g.owner[h.ip]; n != "" {
			who = " (container " + n + ")"
		}
		switch h.kind {
		case itemLocal4:
			out = append(out, loader.Problem{Object: "address " + h.ip.String() + who, Issue: "its local route (table local, proto 76) is missing: the host no longer delivers to it"})
		case itemBcast4:
			out = append(out, loader.Problem{Object: "broadcast " + h.ip.String() + who, Issue: "its broadcast route (table local, proto 76) is missing"})
		default:
			out = append(out, loader.Problem{Object: "address " + h.ip.String() + who, Issue: "missing from the host: it cannot be bound"})
		}
	}
	for _, m := range g.moved {
		out = append(out, loader.Problem{Object: "address " + m.prefix.Addr().String(), Issue: fmt.Sprintf("on %s, which is not where it belongs", ifName(m.ifindex))})
	}
	return out
}

func ifName(index int) string {
	if n := loader.IfName(index); n != "" {
		return n
	}
	return fmt.Sprintf("interface index %d", index)
}

// hostGaps compares the host with what the active policy needs.
func (c *Control) hostGaps() (hostGap, error) {
	g := hostGap{owner: map[netip.Addr]string{}}
	want := desired(c.cur)
	want[hostAddrItem] = true // the host's own, while l3iso is up
	for _, k := range c.cur {
		eachItem(k, func(h hostItem) { g.owner[h.ip] = k.Spec.Name })
	}
	have := map[hostItem]bool{}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return g, fmt.Errorf("list l3iso's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		h := hostItem{kind: itemLocal4, ip: ip.Unmap(), onLo: true}
		if r.Type == unix.RTN_BROADCAST {
			h = hostItem{kind: itemBcast4, ip: ip.Unmap(), onLo: true}
		}
		if want[h] {
			have[h] = true
		} else if !want[hostItem{kind: h.kind, ip: h.ip}] {
			g.stray = append(g.stray, h)
		} else {
			have[hostItem{kind: h.kind, ip: h.ip}] = true
		}
	}
	lo, up, err := c.ifindexes()
	if err != nil {
		g.upGone = err
		lo, up = loIfindex, 0
	}
	addrs, err := addrs6()
	if err != nil {
		return g, err
	}
	on := map[netip.Addr]map[int]bool{}
	for _, a := range addrs {
		if on[a.ip] == nil {
			on[a.ip] = map[int]bool{}
		}
		on[a.ip][a.ifindex] = true
	}
	needs6 := map[int]bool{}
	for h := range want {
		if h.kind != itemAddr6 {
			if !have[h] {
				g.missing = append(g.missing, h)
			}
			continue
		}
		dev := up
		if h.onLo {
			dev = lo
		}
		needs6[dev] = true
		if !on[h.ip][dev] && dev != 0 {
			g.missing = append(g.missing, h)
		}
	}
	for _, a := range addrs {
		h := hostItem{kind: itemAddr6, ip: a.ip, prefix: netip.PrefixFrom(a.ip, 128)}
		dev := up
		if !want[h] {
			h.onLo, dev = true, lo
			if !want[h] {
				continue // not l3iso's to move
			}
		}
		if a.proto == uint8(RouteProtocol) && a.ifindex != dev {
			g.moved = append(g.moved, movedAddr{h.prefix, a.ifindex})
		}
	}
	for dev := range needs6 {
		if dev == 0 {
			continue
		}
		name := "lo"
		if dev != lo {
			name = c.st.Config.Uplink
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"); err == nil && strings.TrimSpace(string(b)) == "1" {
			g.v6off = append(g.v6off, name)
		}
	}
	sort.Strings(g.v6off)
	sort.Slice(g.missing, func(i, j int) bool { return g.missing[i].ip.Less(g.missing[j].ip) })
	return g, nil
}

// repairHost configures whatever the active policy needs and the host lacks
// (after a crash, or after someone removed it by hand — deleted a route,
// or flipped disable_ipv6, which removes every IPv6 address of the
// interface), moves l3iso's IPv6 addresses to the interface they belong on
// (after `up --uplink` switched it: added there first, so they stay local
// throughout), and removes l3iso's routes the policy no longer has.
func (c *Control) repairHost() error {
	g, err := c.hostGaps()
	if err != nil {
		return err
	}
	if g.upGone != nil {
		return g.upGone
	}
	for _, name := range g.v6off {
		path := "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"
		if err := os.WriteFile(path, []byte("0"), 0); err != nil {
			return fmt.Errorf("enable IPv6 on %s again (the containers' IPv6 addresses live there): %w", name, err)
		}
	}
	if err := c.hostItems(false, g.stray); err != nil {
		return err
	}
	if err := c.hostItems(true, g.missing); err != nil {
		return err
	}
	if len(g.moved) == 0 {
		return nil
	}
	b, err := newNLBatch()
	if err != nil {
		return err
	}
	defer b.Close()
	for _, m := range g.moved {
		if err := b.address(false, m.prefix, m.ifindex); err != nil {
			return err
		}
	}
	if err := b.done(); err != nil {
		return fmt.Errorf("remove container addresses from the uplink l3iso used before: %w", err)
	}
	return nil
}

// addr6 is an IPv6 address of the host, with the protocol that configured
// it (IFA_PROTO: RouteProtocol for l3iso's).
type addr6 struct {
	ip      netip.Addr
	ifindex int
	proto   uint8
}

// addrs6 lists the host's IPv6 addresses with their IFA_PROTO (which the
// netlink package does not read).
func addrs6() ([]addr6, error) {
	var msgs [][]byte
	var err error
	for i := 0; i < 20; i++ {
		req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfAddrmsg(unix.AF_INET6))
		if msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR); !errors.Is(err, nl.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list IPv6 addresses: %w", err)
	}
	out := make([]addr6, 0, len(msgs))
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			continue
		}
		msg := nl.DeserializeIfAddrmsg(m)
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
		if err != nil {
			continue
		}
		a := addr6{ifindex: int(msg.Index)}
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFA_ADDRESS:
				if ip, ok := netip.AddrFromSlice(at.Value); ok {
					a.ip = ip
				}
			case ifaProto:
				if len(at.Value) > 0 {
					a.proto = at.Value[0]
				}
			}
		}
		if a.ip.IsValid() {
			out = append(out, a)
		}
	}
	return out, nil
}
