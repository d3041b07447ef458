package control

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockdiag"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Stale counts the live sockets of one container that hold an address it
// does not own (any more): nothing reaches them there — the maps steer no
// connection or datagram to them and the backstop drops what the kernel
// would deliver — and nothing says so to the process that holds them.
// `apply` and `container del` report those of the addresses they remove,
// `status` every one it finds.
//
// A socket holds an address when the kernel has it as its local address (a
// UDP socket bound to it, a TCP connection — an accepted one has the
// address its client connected to —, a listener bound to it at port 0), or
// when it is a shared container's listener that the kernel holds on the
// wildcard and a shadow port, entered in l3_binds by the address its
// application bound (maps.Bind). Live: a process holds it, through a file;
// a TCP socket in TIME_WAIT or closing after its last descriptor went is
// none. A socket is counted once, however many descriptors refer to it.
type Stale struct {
	// Container is the container the sockets belong to ("" when none is
	// known: a process outside every container made them, or a container
	// deleted since).
	Container string `json:"container"`
	// Gone says that the container itself was removed (apply, del): its
	// sockets outlived its processes, passed to a process elsewhere.
	Gone bool `json:"gone,omitempty"`
	// Addr is the address. An unspecified one (0.0.0.0, ::) is the
	// wildcard: listeners of a removed container, which heard all its
	// addresses.
	Addr netip.Addr `json:"addr"`
	// OwnedBy is the container that owns Addr now, if one does (status).
	OwnedBy string `json:"owned_by,omitempty"`
	// Sockets is TCPListening + TCPConnected + UDP.
	Sockets      int `json:"sockets"`
	TCPListening int `json:"tcp_listening"`
	TCPConnected int `json:"tcp_connected"` // TCP sockets that do not listen: connections
	UDP          int `json:"udp"`
}

// String says it for people, in the present or, for a plan (planned),
// the conditional: "web: 3 sockets (1 TCP listener, 1 TCP connection, 1
// UDP socket) still hold 10.77.0.5, which it no longer owns: they receive
// nothing; restart what holds them".
func (s Stale) String(planned bool) string {
	var kinds []string
	for _, k := range []struct {
		n         int
		one, many string
	}{{s.TCPListening, "TCP listener", "TCP listeners"}, {s.TCPConnected, "TCP connection", "TCP connections"}, {s.UDP, "UDP socket", "UDP sockets"}} {
		if k.n > 0 {
			kinds = append(kinds, cgroup.Plural(k.n, k.one, k.many))
		}
	}
	what := s.Addr.String()
	switch {
	case s.Addr.IsUnspecified():
		what = "the wildcard (" + what + ")"
	case maps.Loopback4Prefix.Contains(s.Addr):
		what = "its loopback 127.0.0.1 (" + what + ")"
	case maps.Loopback6Prefix.Contains(s.Addr):
		what = "its loopback ::1 (" + what + ")"
	}
	// One socket or several: "it receives ... holds it", "they receive
	// ... holds them".
	hold, it, them, receive := "holds", "it", "it", "receives"
	if s.Sockets != 1 {
		hold, it, them, receive = "hold", "they", "them", "receive"
	}
	name := s.Container
	if name == "" {
		name = "(no container)"
	}
	head := fmt.Sprintf("%s: %s (%s)", name, cgroup.Plural(s.Sockets, "socket", "sockets"), strings.Join(kinds, ", "))
	switch {
	case s.Gone && planned:
		return fmt.Sprintf("%s outlived the container's processes (a process elsewhere holds %s) and %s %s: once it is removed nothing will reach %s; close what holds %s", head, them, hold, what, them, them)
	case s.Gone:
		return fmt.Sprintf("%s outlived the container (a process elsewhere holds %s) and still %s %s: nothing reaches %s; close what holds %s", head, them, hold, what, them, them)
	case planned:
		return fmt.Sprintf("%s %s %s, which it would no longer own: %s would receive nothing; restart what holds %s", head, hold, what, it, them)
	case s.Container == "":
		return fmt.Sprintf("%s still %s %s, which container %s owns: %s %s nothing; close what holds %s", head, hold, what, s.OwnedBy, it, receive, them)
	case s.OwnedBy != "":
		return fmt.Sprintf("%s still %s %s, which it no longer owns (container %s does): %s %s nothing; restart what holds %s", head, hold, what, s.OwnedBy, it, receive, them)
	default:
		return fmt.Sprintf("%s still %s %s, which it no longer owns: %s %s nothing; restart what holds %s", head, hold, what, it, receive, them)
	}
}

// hold is one socket's hold on an address.
type hold struct {
	id     uint32 // its container; 0: none known
	proto  uint8  // unix.IPPROTO_TCP, unix.IPPROTO_UDP
	local  netip.AddrPort
	listen bool   // a TCP listener
	n      int    // sockets: an l3_binds entry's SO_REUSEPORT group counts each
	inode  uint32 // a kernel socket's, to count it once; 0 for l3_binds
}

// holds lists what binds and socks hold. From binds, the l3_binds entries,
// only shadow sockets: a socket the kernel holds at its address (UDP bound
// to it, a port-0 listener) is in socks too. From socks, the kernel's
// sockets, the live ones with a local address (a shadow socket's is the
// wildcard; so is an unbound one's). of gives the container of a kernel
// socket's cgroup (0: none).
func holds(binds []maps.Bind, socks []sockdiag.Socket, of func(cgroup uint64) uint32) []hold {
	out := make([]hold, 0, len(binds))
	for _, b := range binds {
		if b.SAddr.IsValid() {
			continue
		}
		h := hold{id: b.ID, listen: b.Proto == "tcp", n: int(b.Sockets), proto: unix.IPPROTO_UDP}
		if b.Proto == "tcp" {
			h.proto = unix.IPPROTO_TCP
		}
		a := b.Addr
		if !a.IsValid() { // a wildcard socket
			a = netip.IPv6Unspecified()
			if b.Family == 4 {
				a = netip.IPv4Unspecified()
			}
		}
		h.local = netip.AddrPortFrom(a, b.Port)
		out = append(out, h)
	}
	for _, s := range socks {
		if !s.Live() || !s.Local.Addr().IsValid() || s.Local.Addr().IsUnspecified() {
			continue
		}
		out = append(out, hold{id: of(s.Cgroup), proto: s.Proto, local: s.Local,
			listen: s.Proto == unix.IPPROTO_TCP && s.State == sockdiag.StateListen, n: 1, inode: s.Inode})
	}
	return out
}

// staleKey is what Stale counts by.
type staleKey struct {
	id   uint32
	addr netip.Addr
}

// tally counts hs by container and address, for each hold that keep
// accepts (and says whose it is: keep may attribute a hold of no known
// container), each kernel socket once.
func tally(hs []hold, keep func(h hold) (id uint32, ok bool)) map[staleKey]*Stale {
	out := map[staleKey]*Stale{}
	seen := map[uint32]bool{}
	for _, h := range hs {
		id, ok := keep(h)
		if !ok {
			continue
		}
		if h.inode != 0 {
			if seen[h.inode] {
				continue
			}
			seen[h.inode] = true
		}
		k := staleKey{id, h.local.Addr()}
		s := out[k]
		if s == nil {
			s = &Stale{Addr: k.addr}
			out[k] = s
		}
		switch {
		case h.listen:
			s.TCPListening += h.n
		case h.proto == unix.IPPROTO_TCP:
			s.TCPConnected += h.n
		default:
			s.UDP += h.n
		}
		s.Sockets += h.n
	}
	return out
}

// countHolding counts, for each address of lost — each lost by the
// containers it maps to —, the sockets of those containers among hs that
// hold it, by container (see Stale). A socket of no known container (its
// cgroup is gone: a sub-cgroup removed since, or the container's own once
// del removed it) is attributed to the container that lost its address
// when only one did: while that one owned it, no other process could bind
// it. hs is what the socket tables hold, read once for all the addresses
// (holds): the count is O(sockets), not O(sockets × addresses).
func countHolding(lost map[netip.Addr][]uint32, hs []hold) map[staleKey]*Stale {
	return tally(hs, func(h hold) (uint32, bool) {
		losers := lost[h.local.Addr()]
		switch {
		case h.id == 0 && len(losers) == 1:
			return losers[0], true
		case h.id != 0 && slices.Contains(losers, h.id):
			return h.id, true
		}
		return 0, false
	})
}

// sorted returns m's entries by container name (the unknown last), then
// address.
func sorted(m map[staleKey]*Stale) []Stale {
	out := make([]Stale, 0, len(m))
	for _, s := range m {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Stale) int {
		if (a.Container == "") != (b.Container == "") {
			return cmp.Compare(len(b.Container), len(a.Container)) // the unknown last
		}
		return cmp.Or(strings.Compare(a.Container, b.Container), a.Addr.Compare(b.Addr))
	})
	return out
}

// cgroupOwners maps cgroup ids to the containers cs: their own cgroups,
// and the cgroups below them — a socket made in a sub-cgroup (a runtime's
// container inside an l3iso container) is its container's too —, found by
// id (cgroup.PathByID), once per id. A cgroup that is gone, or no
// container's, is 0.
func (c *Control) cgroupOwners(cs []maps.Container) func(uint64) uint32 {
	ids := make(map[uint64]uint32, len(cs))
	byName := make(map[string]uint32, len(cs))
	for _, k := range cs {
		ids[k.CgroupID] = k.ID
		byName[k.Spec.Name] = k.ID
	}
	root := filepath.Join(c.st.Config.CgroupRoot, loader.ContainersDir) + string(filepath.Separator)
	return func(cg uint64) uint32 {
		id, ok := ids[cg]
		if !ok {
			if p, err := cgroup.PathByID(root, cg); err == nil {
				if rel, ok := strings.CutPrefix(p, root); ok {
					top, _, _ := strings.Cut(rel, string(filepath.Separator))
					id = byName[top]
				}
			}
			ids[cg] = id
		}
		return id
	}
}

// netnsSockets lists the sockets of netns container k's namespace,
// attributed to it (its own stack: what is there is its own). A namespace
// that is gone has none.
func (c *Control) netnsSockets(k maps.Container) ([]hold, error) {
	var conn *sockdiag.Conn
	err := veth.DoAt(c.NetnsPath(k.Spec.Name), func() error {
		var err error
		conn, err = sockdiag.Open()
		return err
	})
	if errors.Is(err, veth.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the sockets of container %q: %w", k.Spec.Name, err)
	}
	defer conn.Close()
	socks, err := conn.List()
	if err != nil {
		return nil, fmt.Errorf("read the sockets of container %q: %w", k.Spec.Name, err)
	}
	return holds(nil, socks, func(uint64) uint32 { return k.ID }), nil
}

// hostHolds is what the sockets of l3iso's network namespace (the host's
// and the shared containers') hold, attributed through their cgroups to
// the containers cs.
func (c *Control) hostHolds(cs []maps.Container) ([]hold, error) {
	binds, err := c.st.Maps.Listening()
	if err != nil {
		return nil, err
	}
	socks, err := sockdiag.List()
	if err != nil {
		return nil, fmt.Errorf("read the host's sockets: %w", err)
	}
	return holds(binds, socks, c.cgroupOwners(cs)), nil
}

// losing is what an apply or a del takes from containers: each address
// with the containers that lose it; and the sockets of the namespaces of
// netns containers among them, read while each namespace exists.
type losing struct {
	lost    map[netip.Addr][]uint32
	names   map[uint32]string // the containers that lose something
	gone    map[uint32]bool   // those that go
	netns   []hold
	pending map[uint32]maps.Container // netns containers whose sockets are not read yet
	err     error                     // of a read of a namespace's sockets
}

func newLosing() *losing {
	return &losing{lost: map[netip.Addr][]uint32{}, names: map[uint32]string{}, gone: map[uint32]bool{}, pending: map[uint32]maps.Container{}}
}

// loses records that container k loses the addresses it has and next (its
// next version; nil: it goes) has not. A container that goes loses its
// private loopbacks and its wildcard too: its wildcard listeners heard
// every address it had.
func (l *losing) loses(k maps.Container, next *maps.Container) {
	var lost []netip.Addr
	if next == nil {
		l.gone[k.ID] = true
		lost = append(lost, netip.IPv4Unspecified(), netip.IPv6Unspecified(), k.Loopback4(), k.Loopback6())
	}
	for _, a := range k.Spec.Addresses {
		if next == nil || !slices.ContainsFunc(next.Spec.Addresses, func(b policy.Address) bool { return b.Addr == a.Addr }) {
			lost = append(lost, a.Addr)
		}
	}
	for _, a := range lost {
		if !slices.Contains(l.lost[a], k.ID) {
			l.lost[a] = append(l.lost[a], k.ID)
		}
	}
	if len(lost) > 0 {
		l.names[k.ID] = k.Spec.Name
		if isNetns(k) {
			l.pending[k.ID] = k
		}
	}
}

// readNetns reads the sockets of netns container k's namespace now, if k
// loses anything: before the namespace goes. A failure is count's.
func (l *losing) readNetns(c *Control, k maps.Container) {
	if _, ok := l.pending[k.ID]; !ok {
		return
	}
	delete(l.pending, k.ID)
	hs, err := c.netnsSockets(k)
	l.netns = append(l.netns, hs...)
	l.err = errors.Join(l.err, err)
}

// count counts the live sockets that hold what was lost: those of l3iso's
// network namespace, attributed through the containers cs (see
// cgroupOwners), and those of the netns containers' namespaces (read now
// if readNetns did not).
func (l *losing) count(c *Control, cs []maps.Container) ([]Stale, error) {
	if len(l.names) == 0 {
		return nil, nil
	}
	for _, k := range l.pending {
		l.readNetns(c, k)
	}
	if l.err != nil {
		return nil, l.err
	}
	hs, err := c.hostHolds(cs)
	if err != nil {
		return nil, err
	}
	counted := countHolding(l.lost, append(hs, l.netns...))
	for k, s := range counted {
		s.Container, s.Gone = l.names[k.id], l.gone[k.id]
	}
	return sorted(counted), nil
}

// countPlanned is count for a plan: a container to be removed whose
// processes run is left out (its sockets normally end with them).
func (l *losing) countPlanned(c *Control, cs []maps.Container, running map[string]int) ([]Stale, error) {
	out, err := l.count(c, cs)
	return slices.DeleteFunc(out, func(s Stale) bool { return s.Gone && running[s.Container] > 0 }), err
}

// Stale lists every live socket that holds an address its container does
// not own (any more), or — a socket of no container (the host's, or one a
// deleted container left) — an address a container owns now: in l3iso's
// network namespace and in every netns container's. Loopback, link-local,
// multicast and broadcast addresses a container may use are no such
// address. A socket of no container on an address no container owns is
// not listed: l3iso cannot tell a container's leftover from a host
// socket bound to an address the host does not have (IP_FREEBIND).
func (c *Control) Stale() ([]Stale, error) {
	cs, err := c.all()
	if err != nil {
		return nil, err
	}
	hs, err := c.hostHolds(cs)
	if err != nil {
		return nil, err
	}
	for _, k := range cs {
		if isNetns(k) {
			nh, err := c.netnsSockets(k)
			if err != nil {
				return nil, err
			}
			hs = append(hs, nh...)
		}
	}
	byID := make(map[uint32]*maps.Container, len(cs))
	byAddr := map[netip.Addr][]*maps.Container{} // by address and subnet broadcast
	for i := range cs {
		k := &cs[i]
		byID[k.ID] = k
		for _, o := range k.Spec.Addresses {
			byAddr[o.Addr] = append(byAddr[o.Addr], k)
			if b, ok := o.Broadcast(); ok {
				byAddr[b] = append(byAddr[b], k)
			}
		}
	}
	ownerOf := func(h hold) string {
		for _, k := range byAddr[h.local.Addr()] {
			if owns(*k, h) {
				return k.Spec.Name
			}
		}
		return ""
	}
	owners := map[staleKey]string{}
	counted := tally(hs, func(h hold) (uint32, bool) {
		if !ownable(h.local.Addr()) {
			return 0, false
		}
		k := byID[h.id]
		if k != nil && owns(*k, h) {
			return 0, false
		}
		owner := ownerOf(h)
		if k == nil && owner == "" {
			return 0, false
		}
		owners[staleKey{h.id, h.local.Addr()}] = owner
		return h.id, true
	})
	for key, s := range counted {
		if k := byID[key.id]; k != nil {
			s.Container = k.Spec.Name
		}
		s.OwnedBy = owners[key]
	}
	return sorted(counted), nil
}

// ownable reports whether a is an address a container can own: not the
// wildcard, loopback (a shared container's private loopback included),
// link-local, multicast or the limited broadcast.
func ownable(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && !maps.Loopback6Prefix.Contains(a)
}

// owns reports whether k owns what h holds: the IP (for a listener or a
// UDP socket, at its port and protocol; a connection's local port may be
// any the kernel chose), or a subnet's broadcast address.
func owns(k maps.Container, h hold) bool {
	a := h.local.Addr()
	for _, o := range k.Spec.Addresses {
		if b, ok := o.Broadcast(); ok && b == a {
			return true
		}
		if o.Addr != a {
			continue
		}
		if o.WholeIP() || (!h.listen && h.proto == unix.IPPROTO_TCP) {
			return true
		}
		if uint8(o.Proto) == h.proto && o.PortLo <= h.local.Port() && h.local.Port() <= o.PortHi {
			return true
		}
	}
	return false
}

// losing is what the apply sv plans takes from the installed containers:
// every address of those that go, the addresses of those that change that
// their next version lacks.
func (sv *survey) losing() *losing {
	l := newLosing()
	for j, k := range sv.olds {
		if sv.gone[j] {
			l.loses(k, nil)
		}
	}
	for i, o := range sv.old {
		if o >= 0 {
			next := sv.next(i)
			l.loses(sv.olds[o], &next)
		}
	}
	return l
}
