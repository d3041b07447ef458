package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Listener is one entry of the broadcast/multicast registry (l3_listen),
// which the socket programs fill and empty themselves: container ID listens
// on Port at Addr (the address its wildcard bind was rewritten to), for
// every broadcast address it may receive (Group is the zero Addr) or for
// multicast group Group. Refs counts its sockets registered there.
type Listener struct {
	Group netip.Addr `json:"group,omitempty"`
	Port  uint16     `json:"port"`
	ID    uint32     `json:"id"`
	Addr  netip.Addr `json:"addr"`
	Refs  uint32     `json:"sockets"`
}

var bcastKey = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Listeners reads the registry.
func (s *Set) Listeners() ([]Listener, error) {
	var (
		out []Listener
		k   sockL3Lkey
		v   sockL3Lset
	)
	it := s.listen.Iterate()
	for it.Next(&k, &v) {
		g := fromAddr(k.Group)
		if g == bcastKey {
			g = netip.Addr{}
		}
		for _, e := range v.E {
			if e.Id != 0 {
				out = append(out, Listener{Group: g, Port: k.Port, ID: e.Id, Addr: fromAddr(e.Addr), Refs: e.Refs})
			}
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read map l3_listen: %w", err)
	}
	return out, nil
}

// PurgeListeners removes containers ids from the registries (l3_listen,
// l3_binds): their sockets are gone, and their release hook normally took
// their entries with it; what is left belongs to sockets that outlived
// their container (passed to a process elsewhere). A read of the pages the
// ids can be in finds those; only then is l3_purge (tc.c) loaded with
// load (the loader's: it loads programs against these maps), and run once
// per leftover entry: it changes the page under the registry's lock, as
// the socket hooks do, where a write from here would replace the whole
// page and could undo a registration of another container made meanwhile.
func (s *Set) PurgeListeners(load func() (*ebpf.Program, error), ids ...uint32) error {
	gone := make(map[uint32]bool, len(ids))
	pages := make(map[uint16]bool, len(ids))
	for _, id := range ids {
		if id != 0 && id <= uint32(MaxContainers) {
			gone[id] = true
			pages[listenPage(id)] = true
		}
	}
	if len(gone) == 0 {
		return nil
	}
	if err := s.purgeBinds(gone); err != nil {
		return err
	}
	var (
		k    sockL3Lkey
		v    sockL3Lset
		reqs []sockL3PurgeReq
	)
	it := s.listen.Iterate()
	for it.Next(&k, &v) {
		if !pages[k.Page] {
			continue
		}
		seen := map[uint32]bool{}
		for _, e := range v.E {
			if e.Id != 0 && gone[e.Id] && !seen[e.Id] {
				seen[e.Id] = true
				reqs = append(reqs, sockL3PurgeReq{Key: k, Id: e.Id})
			}
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read map l3_listen: %w", err)
	}
	if len(reqs) == 0 {
		return nil
	}
	prog, err := load()
	if err != nil {
		return fmt.Errorf("load the registry purge program: %w", err)
	}
	defer prog.Close()
	for _, r := range reqs {
		buf, err := binary.Append(nil, binary.NativeEndian, &r)
		if err != nil {
			return fmt.Errorf("encode a registry purge: %w", err)
		}
		if _, err := prog.Run(&ebpf.RunOptions{Data: buf}); err != nil {
			return fmt.Errorf("purge container %d from map l3_listen: %w", r.Id, err)
		}
	}
	return nil
}

// listenPage is the l3_listen page of container id (struct l3_lset).
func listenPage(id uint32) uint16 {
	return uint16((id - 1) / uint32(sockL3LpageLimitsL3LPAGE_IDS))
}

// Bind is one entry of l3_binds: a listening socket of a shared
// container, by what its application bound (bpf/binds.h). Addr is the
// address it bound, or the zero Addr for a wildcard socket (Family says
// which: 4 or 6); Port the port it asked for. The socket holds SPort at
// SAddr in the kernel (the wildcard and a shadow port, or its address);
// Sockets counts an SO_REUSEPORT group's members.
type Bind struct {
	ID      uint32     `json:"id"`
	Proto   string     `json:"proto"`
	Addr    netip.Addr `json:"addr,omitzero"`
	Family  int        `json:"family"`
	Port    uint16     `json:"port"`
	SAddr   netip.Addr `json:"kernel_addr,omitzero"`
	SPort   uint16     `json:"kernel_port"`
	Sockets uint32     `json:"sockets"`
}

// Listening reads l3_binds: the listening sockets of every shared container.
func (s *Set) Listening() ([]Bind, error) {
	var (
		out []Bind
		k   sockL3Bkey
		v   sockL3Bval
	)
	it := s.binds.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&uint8(sockL3BvalFlagsL3BV_DEAD) != 0 {
			continue
		}
		b := Bind{ID: k.Id, Proto: ProtoName(k.Proto), Port: k.Port, SPort: v.Sport, Sockets: v.Refs, Family: 6}
		switch sockL3BindKind(k.Kind) {
		case sockL3BindKindL3BK_EXACT:
			b.Addr = fromAddr(k.Addr)
			if b.Addr.Is4() {
				b.Family = 4
			}
		case sockL3BindKindL3BK_ANY4:
			b.Family = 4
		}
		if sa := fromAddr(v.Saddr); sa.IsValid() && !sa.IsUnspecified() {
			b.SAddr = sa
		}
		out = append(out, b)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read map l3_binds: %w", err)
	}
	return out, nil
}

// ProtoName names IP protocol p (IPPROTO_*) as people write it: tcp, udp,
// icmp, icmpv6, igmp; another by its number.
func ProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	case unix.IPPROTO_IGMP:
		return "igmp"
	}
	return fmt.Sprint(p)
}

// purgeBinds removes the l3_binds entries and shadow ports of containers
// gone (their sockets outlived them). l3_uwild keeps counting their UDP
// wildcard entries (user space cannot decrement it atomically beside the
// programs): a port counted too high only costs its datagrams a lookup. Their sockets' release hook does not
// touch them, nor what a later container of the same id enters: the id has
// a new epoch (InitCounters).
func (s *Set) purgeBinds(gone map[uint32]bool) error {
	var (
		k    sockL3Bkey
		v    sockL3Bval
		dead []sockL3Bkey
	)
	it := s.binds.Iterate()
	for it.Next(&k, &v) {
		if gone[k.Id] {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read map l3_binds: %w", err)
	}
	for i := range dead {
		if err := s.binds.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from map l3_binds: %w", err)
		}
	}
	var (
		idx uint32
		sp  sockL3Sport
	)
	it = s.sports.Iterate()
	var stale []uint32
	for it.Next(&idx, &sp) {
		if sp.Id != 0 && gone[sp.Id] {
			stale = append(stale, idx)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read map l3_sports: %w", err)
	}
	for _, i := range stale {
		if err := s.sports.Update(i, &sockL3Sport{}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("clear a shadow port in map l3_sports: %w", err)
		}
	}
	return nil
}
