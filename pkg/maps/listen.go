package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
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
	it := s.Listen.Iterate()
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

// PurgeListeners removes containers ids from the registry (their sockets
// are gone: their release hook normally did it already) and deletes entries
// nobody listens in any more, in one pass over the registry. The entry is
// read and written under its spin lock (BPF_F_LOCK).
func (s *Set) PurgeListeners(ids ...uint32) error {
	gone := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		if id != 0 {
			gone[id] = true
		}
	}
	if len(gone) == 0 {
		return nil
	}
	var (
		k    sockL3Lkey
		v    sockL3Lset
		keys []sockL3Lkey
	)
	it := s.Listen.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read map l3_listen: %w", err)
	}
	for _, k := range keys {
		if err := s.Listen.LookupWithFlags(&k, &v, ebpf.LookupLock); err != nil {
			continue // deleted meanwhile
		}
		changed, used := false, false
		for i := range v.E {
			if gone[v.E[i].Id] {
				v.E[i] = sockL3Lent{}
				changed = true
			}
			used = used || v.E[i].Id != 0
		}
		if !used {
			// Nobody left. A socket registering right now would lose its
			// entry: a hook that raced with a container's deletion.
			if err := s.Listen.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from map l3_listen: %w", err)
			}
			continue
		}
		if changed {
			if err := s.Listen.Update(&k, &v, ebpf.UpdateExist|ebpf.UpdateLock); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("update map l3_listen: %w", err)
			}
		}
	}
	return nil
}
