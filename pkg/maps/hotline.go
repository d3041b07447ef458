package maps

import (
	"encoding/binary"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The first cache line of l3_config[0] is what every program reads on every
// call: the active generation and the broadcast filter (bpf/l3iso.h, struct
// l3_cfg). The map is mmapable; these words are written through the mapping
// with atomic stores, so a program never sees half a generation number.
// Offsets are those of the generated sockL3Cfg.
var (
	offGen   = unsafe.Offsetof(sockL3Cfg{}.Gen)
	offBloom = unsafe.Offsetof(sockL3Cfg{}.BcastBloom)
)

// hot maps l3_config's value page once per Set.
func (s *Set) hot() ([]byte, error) {
	if s.cfgMem != nil {
		return s.cfgMem, nil
	}
	size := (int(unsafe.Sizeof(sockL3Cfg{})) + os.Getpagesize() - 1) &^ (os.Getpagesize() - 1)
	b, err := unix.Mmap(s.cfg.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map l3_config into memory: %w (an l3_config pinned by an older l3iso is not mmapable: run `l3iso down`, then `l3iso up`)", err)
	}
	s.cfgMem = b
	return b, nil
}

func word32(b []byte, off uintptr) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
func word64(b []byte, off uintptr) *uint64 { return (*uint64)(unsafe.Pointer(&b[off])) }

// Gen is one of the two policy generations of a Set (slot.go): the handle
// through which everything keyed by generation is read and written.
type Gen struct {
	s *Set
	n uint32
}

// Active returns the generation the programs use now.
func (s *Set) Active() (Gen, error) {
	b, err := s.hot()
	if err != nil {
		return Gen{}, err
	}
	return Gen{s, atomic.LoadUint32(word32(b, offGen))}, nil
}

// Inactive returns the generation the programs do not use: the one an
// apply writes, then switches to.
func (s *Set) Inactive() (Gen, error) {
	g, err := s.Active()
	return g.other(), err
}

// other is the generation an apply switches to from g, and back: g with
// its top bit flipped. (An l3iso from before this scheme writes generation
// g+1 and deletes g: never the other one, which it would otherwise write
// over without knowing what it holds.)
func (g Gen) other() Gen { return Gen{g.s, g.n ^ 1<<31} }

// String names the generation: "generation N".
func (g Gen) String() string { return fmt.Sprintf("generation %d", g.n) }

// Switch makes g the active generation: every program switches to it with
// one atomic 4-byte store.
func (s *Set) Switch(g Gen) error {
	b, err := s.hot()
	if err != nil {
		return fmt.Errorf("switch to policy %s: %w", g, err)
	}
	atomic.StoreUint32(word32(b, offGen), g.n)
	return nil
}

// bloomBit is the filter bit of IPv4 address a, as bpf/maps.h maybe_bcast4
// computes it from the address loaded from the packet (network order, read
// in native order).
func bloomBit(a netip.Addr) uint32 {
	b := a.As4()
	return (binary.NativeEndian.Uint32(b[:]) * uint32(sockL3BloomL3BLOOM_MUL)) >> 24
}

// bloomOf is the filter of the containers' subnet broadcast addresses.
func bloomOf(cs iter.Seq[Container]) (f [len(sockL3Cfg{}.BcastBloom)]uint64) {
	for c := range cs {
		for _, a := range c.Spec.Addresses {
			if b, ok := a.Broadcast(); ok && b.Is4() {
				bit := bloomBit(b)
				f[bit/64] |= 1 << (bit % 64)
			}
		}
	}
	return f
}

// addBcast sets the filter bits of cs's broadcast addresses; call it before
// their l3_locals markers go in, so the filter never hides a live one.
func (s *Set) addBcast(cs iter.Seq[Container]) error { return s.writeBloom(cs, false) }

// ResetBcastFilter makes the filter exactly that of cs, the containers of
// the only generation left (after a policy switch, a delete, a repair):
// bits of broadcast addresses no container has any more are cleared.
func (s *Set) ResetBcastFilter(cs iter.Seq[Container]) error { return s.writeBloom(cs, true) }

func (s *Set) writeBloom(cs iter.Seq[Container], reset bool) error {
	b, err := s.hot()
	if err != nil {
		return err
	}
	for i, w := range bloomOf(cs) {
		p := word64(b, offBloom+uintptr(8*i))
		if reset {
			atomic.StoreUint64(p, w)
		} else if w != 0 {
			atomic.OrUint64(p, w)
		}
	}
	return nil
}
