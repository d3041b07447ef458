package maps

import (
	"encoding/binary"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
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
	return mmapValue(s.cfg, unsafe.Sizeof(sockL3Cfg{}), &s.cfgMem,
		"l3_config", " (an l3_config pinned by an older l3iso is not mmapable: run `l3iso down`, then `l3iso up`)")
}

// ofHot maps l3_ofilter's value once per Set.
func (s *Set) ofHot() ([]byte, error) {
	return mmapValue(s.ofilter, unsafe.Sizeof(sockL3OwnedFilter{}), &s.ofMem, "l3_ofilter", "")
}

// mmapValue maps the value (size bytes) of mmapable array m, of one
// entry, into *mem once.
func mmapValue(m *ebpf.Map, size uintptr, mem *[]byte, name, hint string) ([]byte, error) {
	if *mem != nil {
		return *mem, nil
	}
	n := (int(size) + os.Getpagesize() - 1) &^ (os.Getpagesize() - 1)
	b, err := unix.Mmap(m.FD(), 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s into memory: %w%s", name, err, hint)
	}
	*mem = b
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

// addFilters sets the bits of cs's broadcast addresses in the broadcast
// filter, and clears the bits of their IPs in l3_ofilter; call it before
// their l3_locals and l3_owners entries go in, so neither filter ever
// hides a live one.
func (s *Set) addFilters(cs iter.Seq[Container]) error { return s.writeFilters(cs, false) }

// ResetFilters makes both filters exactly those of cs, the containers
// of the only generation left (after a policy switch, a delete, a
// repair): bits of broadcast addresses no container has any more are
// cleared, and bits of IPs none owns any more are set.
func (s *Set) ResetFilters(cs iter.Seq[Container]) error { return s.writeFilters(cs, true) }

func (s *Set) writeFilters(cs iter.Seq[Container], reset bool) error {
	b, err := s.hot()
	if err != nil {
		return err
	}
	of, err := s.ofHot()
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
	owned := ownedOf(cs)
	for i, w := range owned {
		p := word64(of, uintptr(8*i))
		if reset {
			atomic.StoreUint64(p, ^w)
		} else if w != 0 {
			atomic.AndUint64(p, ^w)
		}
	}
	return nil
}

// ownedBit is the bit of IP a in l3_ofilter, as bpf/maps.h surely_unowned
// computes it from the address's 16-byte form (IPv4 mapped) read as four
// native-order words.
func ownedBit(a netip.Addr) uint32 {
	b := a.As16()
	h := binary.NativeEndian.Uint32(b[0:]) ^ binary.NativeEndian.Uint32(b[4:]) ^
		binary.NativeEndian.Uint32(b[8:]) ^ binary.NativeEndian.Uint32(b[12:])
	return (h * uint32(sockL3OfilterBitsL3OFILTER_MUL)) >> 16
}

// ownedOf is the set of bits of the IPs cs's containers own (any port).
func ownedOf(cs iter.Seq[Container]) *[len(sockL3OwnedFilter{}.W)]uint64 {
	f := new([len(sockL3OwnedFilter{}.W)]uint64)
	for c := range cs {
		for _, a := range c.Spec.Addresses {
			bit := ownedBit(a.Addr)
			f[bit/64] |= 1 << (bit % 64)
		}
	}
	return f
}
