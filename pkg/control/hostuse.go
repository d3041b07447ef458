package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// What the host uses an address for, found with a few rtnetlink requests
// per address — never a walk of l3iso's own routes or addresses, which
// grow with the containers (see lookupHostUses).

// hostUse says what an address is on this host, for an error message.
type hostUse struct {
	// what completes "address A of container X ...": "is one of the
	// host's own addresses (on eth0)".
	what string
	// loss says what taking it anyway would cost the host.
	loss string
	// own: the host answers the address as its own (a local, broadcast or
	// anycast route). l3iso would replace the host's route and, on delete,
	// remove it: --force cannot take such an address.
	own bool
}

// route is the part of a routing table entry the checks read: the entry
// that `ip route get fibmatch A` shows.
type route struct {
	dst      netip.Prefix
	table    uint32
	protocol uint8
	typ      uint8
	hops     []nexthop
}

type nexthop struct {
	gw      netip.Addr // invalid when on-link
	ifindex int
}

// lookupHostUses tells, for each of ips, what the host uses it for; an
// address it does not use is left out. Per address: one route lookup
// (RTM_GETROUTE with RTM_F_FIB_MATCH: the routing entry, policy rules
// included), and for one on an on-link subnet a neighbour lookup (ARP/NDP)
// and the gateways of the routes through that interface (one filtered dump
// per interface). Lookups are sent in batches on one socket. l3iso's own
// routes (RouteProtocol) count as no use: whether a container may take
// such an address is the ownership check's business.
//
// The rules:
//   - a local, broadcast or anycast route: the host's own (see hostUse.own);
//   - reached through a gateway, or on a point-to-point link: someone out
//     there has it — except a private address (RFC 1918, 100.64.0.0/10,
//     fc00::/7) that only the default route covers: those are the usual
//     container ranges, which the host routes nowhere in particular;
//   - on an on-link subnet: the gateway of a route, or a neighbour the host
//     knows (an entry neither FAILED nor INCOMPLETE) — unused addresses
//     there stay free (IP aliases on the host's LAN);
//   - no route, or an unreachable, blackhole or prohibit one: no use.
func lookupHostUses(ips []netip.Addr) (map[netip.Addr]hostUse, error) {
	out := map[netip.Addr]hostUse{}
	if len(ips) == 0 {
		return out, nil
	}
	q, err := newRTQuery()
	if err != nil {
		return nil, err
	}
	defer q.Close()
	reqs := make([]rtReq, len(ips))
	for i, ip := range ips {
		body := []byte{family(ip), uint8(ip.BitLen()), 0, 0, 0, 0, 0, 0}
		body = append(body, u32(unix.RTM_F_FIB_MATCH)...)
		body = append(body, attr(unix.RTA_DST, ip.AsSlice())...)
		reqs[i] = rtReq{typ: unix.RTM_GETROUTE, body: body}
	}
	resps, err := q.get(reqs)
	if err != nil {
		return nil, fmt.Errorf("look up the host's routes: %w", err)
	}
	links := linkNames{q: q, m: map[int]linkInfo{}}
	type onLink struct {
		ip      netip.Addr
		r       route
		ifindex int
	}
	var local []onLink
	for i, ip := range ips {
		resp := resps[i]
		switch resp.err {
		case 0:
		case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EINVAL, unix.EACCES, unix.EAGAIN:
			continue // no route, or unreachable, blackhole, prohibit
		default:
			return nil, fmt.Errorf("look up the route to %s: %w", ip, resp.err)
		}
		r, ok := parseRoute(resp.data)
		if !ok || r.protocol == RouteProtocol {
			continue
		}
		switch r.typ {
		case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST, unix.RTN_MULTICAST:
			out[ip] = hostUse{what: ownUse(ip, r, links), own: true}
			continue
		case unix.RTN_UNICAST:
		default:
			continue
		}
		if r.dst.Bits() == 0 {
			// The default route: only global addresses are out there.
			if !isPrivate(ip) {
				out[ip] = hostUse{what: "is reached through " + describeRoute(r, links) + ", so it belongs to a machine out there (private ranges such as 10.0.0.0/8 and fd00::/8 are free)", loss: lostMachine}
			}
			continue
		}
		if len(r.hops) == 0 {
			continue
		}
		h := r.hops[0]
		switch {
		case h.gw.IsValid():
			out[ip] = hostUse{what: "is reached through " + describeRoute(r, links) + ", so it belongs to a machine out there", loss: lostMachine}
		case links.pointToPoint(h.ifindex):
			out[ip] = hostUse{what: fmt.Sprintf("is on point-to-point link %s (route %s), whose peer may use it", links.name(h.ifindex), r.dst), loss: lostMachine}
		default:
			local = append(local, onLink{ip, r, h.ifindex})
		}
	}
	if len(local) == 0 {
		return out, nil
	}
	// On an on-link subnet: whose gateway, whose neighbour?
	gateways := map[[2]int]map[netip.Addr]string{} // (family, ifindex) → gateway → route
	for _, l := range local {
		key := [2]int{int(family(l.ip)), l.ifindex}
		gws, ok := gateways[key]
		if !ok {
			if gws, err = q.gatewaysVia(family(l.ip), l.ifindex, links); err != nil {
				return nil, err
			}
			gateways[key] = gws
		}
		if desc, ok := gws[l.ip]; ok {
			out[l.ip] = hostUse{what: "is the gateway of " + desc, loss: "the host would lose that route"}
		}
	}
	reqs = reqs[:0]
	var asked []onLink
	for _, l := range local {
		if _, ok := out[l.ip]; ok {
			continue
		}
		body := make([]byte, 12) // struct ndmsg
		body[0] = family(l.ip)
		binary.NativeEndian.PutUint32(body[4:], uint32(l.ifindex))
		body = append(body, attr(unix.NDA_DST, l.ip.AsSlice())...)
		reqs = append(reqs, rtReq{typ: unix.RTM_GETNEIGH, body: body})
		asked = append(asked, l)
	}
	if resps, err = q.get(reqs); err != nil {
		return nil, fmt.Errorf("look up the host's neighbours: %w", err)
	}
	for i, l := range asked {
		switch resps[i].err {
		case 0:
		case unix.ENOENT:
			continue // not a neighbour
		default:
			return nil, fmt.Errorf("look up neighbour %s on %s: %w", l.ip, links.name(l.ifindex), resps[i].err)
		}
		if desc, ok := knownNeighbour(resps[i].data); ok {
			out[l.ip] = hostUse{what: fmt.Sprintf("is a neighbour this host knows on %s (%s), so another machine has it", links.name(l.ifindex), desc), loss: lostMachine}
		}
	}
	return out, nil
}

// lostMachine is what taking an address another machine has costs.
const lostMachine = "the host would no longer reach that machine"

// ownUse words an address the host answers as its own.
func ownUse(ip netip.Addr, r route, links linkNames) string {
	dev := "lo"
	if len(r.hops) > 0 {
		dev = links.name(r.hops[0].ifindex)
	}
	switch {
	case r.typ == unix.RTN_BROADCAST:
		return fmt.Sprintf("is the broadcast address of a subnet on %s", dev)
	case r.typ == unix.RTN_LOCAL && r.dst.IsSingleIP():
		return fmt.Sprintf("is one of the host's own addresses (on %s)", dev)
	case r.typ == unix.RTN_LOCAL:
		return fmt.Sprintf("is one of the host's own addresses (local route %s on %s)", r.dst, dev)
	}
	return fmt.Sprintf("is answered by the host itself (%s route %s on %s)", routeTypeName(r.typ), r.dst, dev)
}

// describeRoute words a route through a gateway: "the default route via
// 10.0.0.1 on eth0", "route 172.16.0.0/12 via 10.0.0.3 on eth0 (table 100)".
func describeRoute(r route, links linkNames) string {
	s := routeName(r)
	if len(r.hops) > 0 {
		h := r.hops[0]
		if h.gw.IsValid() {
			s += " via " + h.gw.String()
		}
		s += " on " + links.name(h.ifindex)
		if len(r.hops) > 1 {
			s += " (and " + cgroup.Plural(len(r.hops)-1, "more next hop", "more next hops") + ")"
		}
	}
	return s + tableNote(r)
}

// routeName is "the default route" or "route 172.16.0.0/12".
func routeName(r route) string {
	if r.dst.Bits() == 0 {
		return "the default route"
	}
	return "route " + r.dst.String()
}

// tableNote names a table other than main.
func tableNote(r route) string {
	if r.table != unix.RT_TABLE_MAIN && r.table != 0 {
		return fmt.Sprintf(" (table %d)", r.table)
	}
	return ""
}

func routeTypeName(t uint8) string {
	switch t {
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	}
	return fmt.Sprintf("type-%d", t)
}

// cgnat is RFC 6598's shared address space, private in practice.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPrivate: RFC 1918, 100.64.0.0/10 and fc00::/7.
func isPrivate(ip netip.Addr) bool { return ip.IsPrivate() || cgnat.Contains(ip) }

func family(ip netip.Addr) uint8 {
	if ip.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// parseRoute reads an RTM_NEWROUTE message.
func parseRoute(b []byte) (route, bool) {
	if len(b) < 12 {
		return route{}, false
	}
	r := route{table: uint32(b[4]), protocol: b[5], typ: b[7]}
	dstLen := int(b[1])
	var dst netip.Addr
	var oif int
	var gw netip.Addr
	for _, a := range parseAttrs(b[12:]) {
		switch a.typ {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(a.val)
		case unix.RTA_OIF:
			if len(a.val) >= 4 {
				oif = int(binary.NativeEndian.Uint32(a.val))
			}
		case unix.RTA_GATEWAY:
			gw, _ = netip.AddrFromSlice(a.val)
		case unix.RTA_VIA:
			gw = parseVia(a.val)
		case unix.RTA_TABLE:
			if len(a.val) >= 4 {
				r.table = binary.NativeEndian.Uint32(a.val)
			}
		case unix.RTA_MULTIPATH:
			r.hops = append(r.hops, parseMultipath(a.val)...)
		}
	}
	if !dst.IsValid() { // the default route has no RTA_DST
		dst = netip.IPv4Unspecified()
		if b[0] == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
	}
	r.dst = netip.PrefixFrom(dst.Unmap(), dstLen)
	if len(r.hops) == 0 && (oif != 0 || gw.IsValid()) {
		r.hops = []nexthop{{gw: gw.Unmap(), ifindex: oif}}
	}
	return r, true
}

// parseVia reads RTA_VIA (struct rtvia: family, address).
func parseVia(b []byte) netip.Addr {
	if len(b) < 2 {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(b[2:])
	return ip.Unmap()
}

// parseMultipath reads RTA_MULTIPATH: struct rtnexthop entries, each with
// its own attributes.
func parseMultipath(b []byte) []nexthop {
	var out []nexthop
	for len(b) >= 8 {
		n := int(binary.NativeEndian.Uint16(b[0:]))
		if n < 8 || n > len(b) {
			break
		}
		h := nexthop{ifindex: int(int32(binary.NativeEndian.Uint32(b[4:])))}
		for _, a := range parseAttrs(b[8:n]) {
			switch a.typ {
			case unix.RTA_GATEWAY:
				h.gw, _ = netip.AddrFromSlice(a.val)
				h.gw = h.gw.Unmap()
			case unix.RTA_VIA:
				h.gw = parseVia(a.val)
			}
		}
		out = append(out, h)
		b = b[align4(n):]
	}
	return out
}

// knownNeighbour reads an RTM_NEWNEIGH message: a neighbour entry in a
// state that says someone answers there (not FAILED, INCOMPLETE or NONE),
// worded "52:54:00:12:34:56, REACHABLE".
func knownNeighbour(b []byte) (string, bool) {
	if len(b) < 12 {
		return "", false
	}
	state := binary.NativeEndian.Uint16(b[8:])
	const known = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT | unix.NUD_NOARP
	if state&known == 0 {
		return "", false
	}
	var names []string
	for _, s := range []struct {
		bit  uint16
		name string
	}{{unix.NUD_REACHABLE, "REACHABLE"}, {unix.NUD_STALE, "STALE"}, {unix.NUD_DELAY, "DELAY"}, {unix.NUD_PROBE, "PROBE"}, {unix.NUD_PERMANENT, "PERMANENT"}, {unix.NUD_NOARP, "NOARP"}} {
		if state&s.bit != 0 {
			names = append(names, s.name)
		}
	}
	desc := strings.Join(names, ",")
	for _, a := range parseAttrs(b[12:]) {
		if a.typ == unix.NDA_LLADDR && len(a.val) > 0 {
			desc = net.HardwareAddr(a.val).String() + ", " + desc
		}
	}
	return desc, true
}

type rtAttrib struct {
	typ uint16
	val []byte
}

// parseAttrs splits netlink attributes (nested flag bits cleared).
func parseAttrs(b []byte) []rtAttrib {
	var out []rtAttrib
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b[0:]))
		if n < 4 || n > len(b) {
			break
		}
		out = append(out, rtAttrib{typ: binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), val: b[4:n]})
		if align4(n) >= len(b) {
			break
		}
		b = b[align4(n):]
	}
	return out
}

// linkNames resolves interface indexes, once each per lookup, on the
// lookup's socket.
type linkNames struct {
	q *rtQuery
	m map[int]linkInfo
}

type linkInfo struct {
	name  string
	flags uint32
}

func (l linkNames) link(ifindex int) linkInfo {
	if k, ok := l.m[ifindex]; ok {
		return k
	}
	k := linkInfo{name: fmt.Sprintf("interface %d", ifindex)}
	body := make([]byte, 16) // struct ifinfomsg
	binary.NativeEndian.PutUint32(body[4:], uint32(ifindex))
	if resps, err := l.q.get([]rtReq{{typ: unix.RTM_GETLINK, body: body}}); err == nil && resps[0].err == 0 && len(resps[0].data) >= 16 {
		k.flags = binary.NativeEndian.Uint32(resps[0].data[8:])
		for _, a := range parseAttrs(resps[0].data[16:]) {
			if a.typ == unix.IFLA_IFNAME {
				k.name = strings.TrimRight(string(a.val), "\x00")
			}
		}
	}
	l.m[ifindex] = k
	return k
}

func (l linkNames) name(ifindex int) string { return l.link(ifindex).name }

func (l linkNames) pointToPoint(ifindex int) bool {
	return l.link(ifindex).flags&unix.IFF_POINTOPOINT != 0
}

// rtQuery is an rtnetlink socket for lookups, with strict checking (so
// dumps filter in the kernel).
type rtQuery struct{ fd int }

type rtReq struct {
	typ  uint16
	body []byte
}

// rtResp is the answer to one rtReq: a message's payload, or an error.
type rtResp struct {
	data []byte
	err  unix.Errno
}

func newRTQuery() (*rtQuery, error) {
	fd, err := openRtnetlink(true)
	if err != nil {
		return nil, err
	}
	return &rtQuery{fd: fd}, nil
}

func (q *rtQuery) Close() { unix.Close(q.fd) }

// rtGetBatch bounds the requests per sendmsg: their answers queue in the
// socket's receive buffer until read.
const rtGetBatch = 128

// get sends requests that each get one answer (not dumps), rtGetBatch per
// sendmsg, and returns the answers in order.
func (q *rtQuery) get(reqs []rtReq) ([]rtResp, error) {
	out := make([]rtResp, len(reqs))
	for start := 0; start < len(reqs); start += rtGetBatch {
		end := min(start+rtGetBatch, len(reqs))
		var buf []byte
		for i := start; i < end; i++ {
			buf = appendMsg(buf, reqs[i].typ, unix.NLM_F_REQUEST, uint32(i+1), reqs[i].body)
		}
		if err := unix.Sendto(q.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("rtnetlink send: %w", err)
		}
		pending := end - start
		err := nlReceive(q.fd, func(m syscall.NetlinkMessage) bool {
			i := int(m.Header.Seq) - 1
			if i < start || i >= end {
				return false
			}
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					out[i].err = unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data)))
				}
			default:
				out[i].data = append([]byte(nil), m.Data...)
			}
			pending--
			return pending == 0
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dump runs one dump request and returns the payloads of its messages.
func (q *rtQuery) dump(typ uint16, body []byte) ([][]byte, error) {
	const seq = 1 << 30
	buf := appendMsg(nil, typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, body)
	if err := unix.Sendto(q.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("rtnetlink send: %w", err)
	}
	var out [][]byte
	var dumpErr error
	err := nlReceive(q.fd, func(m syscall.NetlinkMessage) bool {
		if m.Header.Seq != seq {
			return false
		}
		switch m.Header.Type {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if e := unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data))); e != 0 {
					dumpErr = e
				}
			}
			return true
		}
		out = append(out, append([]byte(nil), m.Data...))
		return false
	})
	if err == nil {
		err = dumpErr
	}
	return out, err
}

// gatewaysVia returns the gateways of the unicast routes through interface
// ifindex, each with its route worded ("the default route via eth0").
// The kernel filters the dump (strict checking: type and interface), and
// only the tables that policy rules look up are asked, not table local,
// where l3iso's own routes are.
func (q *rtQuery) gatewaysVia(fam uint8, ifindex int, links linkNames) (map[netip.Addr]string, error) {
	tables, err := q.ruleTables(fam)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for _, t := range tables {
		body := []byte{fam, 0, 0, 0, 0, 0, 0, unix.RTN_UNICAST, 0, 0, 0, 0}
		body = append(body, attr(unix.RTA_TABLE, u32(t))...)
		body = append(body, attr(unix.RTA_OIF, u32(uint32(ifindex)))...)
		msgs, err := q.dump(unix.RTM_GETROUTE, body)
		if errors.Is(err, unix.ENOENT) {
			continue // a table no route was ever added to
		}
		if err != nil {
			return nil, fmt.Errorf("list the routes via %s: %w", links.name(ifindex), err)
		}
		for _, m := range msgs {
			r, ok := parseRoute(m)
			if !ok {
				continue
			}
			for _, h := range r.hops {
				if h.gw.IsValid() && h.ifindex == ifindex {
					if _, dup := out[h.gw]; !dup || r.dst.Bits() == 0 {
						out[h.gw] = routeName(r) + " via " + links.name(ifindex) + tableNote(r)
					}
				}
			}
		}
	}
	return out, nil
}

// ruleTables lists the routing tables that the policy rules of a family
// look up (main and default without any rule of the operator), table local
// left out: it holds local and broadcast routes only, no gateway, and
// l3iso's own routes.
func (q *rtQuery) ruleTables(fam uint8) ([]uint32, error) {
	msgs, err := q.dump(unix.RTM_GETRULE, []byte{fam, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	if err != nil {
		return nil, fmt.Errorf("list the routing rules: %w", err)
	}
	seen := map[uint32]bool{}
	var out []uint32
	for _, m := range msgs {
		if len(m) < 12 {
			continue
		}
		t := uint32(m[4]) // struct fib_rule_hdr: family, dst_len, src_len, tos, table, ...
		for _, a := range parseAttrs(m[12:]) {
			if a.typ == unix.FRA_TABLE && len(a.val) >= 4 {
				t = binary.NativeEndian.Uint32(a.val)
			}
		}
		if t != 0 && t != unix.RT_TABLE_LOCAL && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, nil
}
