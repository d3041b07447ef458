package maps

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
)

// A policy push alternates between two generations, Active and Inactive
// (see ARCHITECTURE.md, "Atomic pushes"). The generation an apply switches away
// from is not deleted: it stays as it was, unread by the programs, and the
// next apply writes its policy over it by difference — only the entries of
// containers that differ from what that generation holds are written, and
// only the entries nothing needs any more are deleted. An apply that
// changes a few of 10,000 containers writes a few containers' entries, not
// 60,000, and deletes nothing it does not have to.
//
// Slot is what the other generation holds, read from its metadata: the
// metadata of a generation describes exactly the entries it has (Insert,
// Remove and Write keep them together, and a repair after a crash
// deletes every generation but the active one).

// Slot is the content of the generation an apply writes next.
type Slot struct {
	gen    Gen
	chunks [][]byte // compact metadata (compactMeta), one after another
	off    []int64  // by container id: chunk<<32 | 1 + offset in it; 0: none
}

// slotChunk is the size of the slot's chunks: a chunk is allocated full
// size once, never grown (copied) as appends would.
const slotChunk = 256 << 10

// The layout of sockL3Meta that compactMeta relies on: a fixed head, then
// the address specs, then the multicast prefixes, then (should the struct
// grow) a fixed tail.
var (
	metaHead  = int(unsafe.Offsetof(sockL3Meta{}.Addrs))
	metaMcast = int(unsafe.Offsetof(sockL3Meta{}.Mcast))
	metaTail  = metaMcast + int(unsafe.Sizeof(sockL3Meta{}.Mcast))
	specSize  = int(unsafe.Sizeof(sockL3AddrSpec{}))
	groupSize = int(unsafe.Sizeof(sockL3Prefix{}))
)

func metaRaw(v *sockL3Meta) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func metaCounts(v *sockL3Meta) (addrs, groups int) {
	return min(int(v.Naddrs), len(v.Addrs)), min(int(v.Nmcast), len(v.Mcast))
}

// compactMeta appends v without its unused address and group slots (for a
// container with one address, 72 of 592 bytes). Two values compact to the
// same bytes exactly when decodeMeta makes the same container of them.
func compactMeta(b []byte, v *sockL3Meta) []byte {
	raw := metaRaw(v)
	na, ng := metaCounts(v)
	b = append(b, raw[:metaHead+na*specSize]...)
	b = append(b, raw[metaMcast:metaMcast+ng*groupSize]...)
	return append(b, raw[metaTail:]...)
}

// expandMeta is the inverse of compactMeta; it returns the value and the
// length of its compact form.
func expandMeta(b []byte) (v sockL3Meta, n int) {
	raw := metaRaw(&v)
	copy(raw[:metaHead], b)
	na, ng := metaCounts(&v)
	n = metaHead + na*specSize
	copy(raw[metaHead:], b[metaHead:n])
	copy(raw[metaMcast:], b[n:n+ng*groupSize])
	n += ng * groupSize
	copy(raw[metaTail:], b[n:])
	return v, n + len(raw) - metaTail
}

// NewSlot returns an empty slot for what generation g holds, for a Scan of
// the other generation to fill.
func (g Gen) NewSlot() *Slot {
	return &Slot{gen: g, off: make([]int64, MaxContainers+1)}
}

func (sl *Slot) put(id uint32, v *sockL3Meta) {
	if int(id) >= len(sl.off) {
		return // not a container id: never equal to one we write, and not ours to delete
	}
	last := len(sl.chunks) - 1
	if last < 0 || cap(sl.chunks[last])-len(sl.chunks[last]) < int(unsafe.Sizeof(*v)) {
		sl.chunks = append(sl.chunks, make([]byte, 0, slotChunk))
		last++
	}
	sl.off[id] = int64(last)<<32 | int64(len(sl.chunks[last])+1)
	sl.chunks[last] = compactMeta(sl.chunks[last], v)
}

// at returns the bytes from container id's compact metadata to the end of
// its chunk, nil if the slot has no container id.
func (sl *Slot) at(id uint32) []byte {
	if int(id) >= len(sl.off) || sl.off[id] == 0 {
		return nil
	}
	o := sl.off[id]
	return sl.chunks[o>>32][o&(1<<32-1)-1:]
}

// compact returns container id's compact metadata in the slot, nil if none.
func (sl *Slot) compact(id uint32) []byte {
	b := sl.at(id)
	if b == nil {
		return nil
	}
	na := min(int(b[unsafe.Offsetof(sockL3Meta{}.Naddrs)]), len(sockL3Meta{}.Addrs))
	ng := min(int(b[unsafe.Offsetof(sockL3Meta{}.Nmcast)]), len(sockL3Meta{}.Mcast))
	return b[:metaHead+na*specSize+ng*groupSize+int(unsafe.Sizeof(sockL3Meta{}))-metaTail]
}

// container decodes container id of the slot.
func (sl *Slot) container(id uint32) Container {
	v, _ := expandMeta(sl.at(id))
	return decodeMeta(id, &v)
}

// len is how many containers the slot holds.
func (sl *Slot) len() int {
	n := 0
	for _, o := range sl.off {
		if o != 0 {
			n++
		}
	}
	return n
}

// Meta is a view of one container's metadata in l3_metas, valid only
// during the ScanMetas callback it is passed to.
type Meta struct {
	id uint32
	v  *sockL3Meta
}

// ID is the container's id.
func (m Meta) ID() uint32 { return m.id }

// CgroupID is the container's cgroup id.
func (m Meta) CgroupID() uint64 { return m.v.Cgid }

// Name is the container's name, a view of the metadata: compare it, do
// not keep it.
func (m Meta) Name() string {
	n := 0
	for n < len(m.v.Name) && m.v.Name[n] != 0 {
		n++
	}
	if n == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Pointer(&m.v.Name[0])), n)
}

// Is reports whether the metadata is exactly container c's (with this id):
// what Insert would write for c. It allocates nothing. (Metadata written by
// another version of l3iso may describe c and still not be what this one
// writes: then it is not c, and c is written again.)
func (m Meta) Is(c Container) bool {
	if c.ID != m.id {
		return false
	}
	want, err := metaOf(c)
	if err != nil {
		return false
	}
	var a, b [600]byte
	return bytes.Equal(compactMeta(a[:0], &want), compactMeta(b[:0], m.v))
}

// Adopted reports whether the container is one the CNI plugin made for a
// runtime's network namespace (policy.Container.Adopted).
func (m Meta) Adopted() bool { return m.v.Pad&metaAdopted != 0 }

// Container decodes the metadata.
func (m Meta) Container() Container { return decodeMeta(m.id, m.v) }

// Scan calls visit with the metadata of each container of generation g, in
// no order, and puts what the other generation holds in other (if it is
// not nil: other.gen's NewSlot): one pass over l3_metas, decoding nothing.
func (g Gen) Scan(other *Slot, visit func(Meta)) error {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]sockL3MetaKey, 256)
		vals   = make([]sockL3Meta, 256)
	)
	if other != nil && other.gen.n == g.n {
		return fmt.Errorf("scan %s: the slot is for the same generation, not the other one", g)
	}
	for {
		n, err := g.s.metas.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			switch {
			case keys[i].Gen == g.n:
				visit(Meta{id: keys[i].Id, v: &vals[i]})
			case other != nil && keys[i].Gen == other.gen.n:
				other.put(keys[i].Id, &vals[i])
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read map l3_metas: %w", err)
		}
	}
}

// Write makes generation g, which no program reads, hold exactly
// containers cs: it writes the entries of the containers whose metadata
// there differs (or is missing), writes the shared markers cs need, and
// deletes the entries that only containers no longer there (or there in
// another version) had. have is what the generation holds (g.NewSlot,
// filled by a Scan of the active one); it is used up. It goes through cs
// three times.
func (g Gen) Write(have *Slot, cs iter.Seq[Container]) error {
	if have.gen.n != g.n {
		return fmt.Errorf("write %s: the slot holds %s", g, have.gen)
	}
	s, gen, sl := g.s, g.n, have
	if err := s.addFilters(cs); err != nil { // the filter covers the next generation too
		return err
	}
	// Which containers the slot has already, exactly.
	same := make([]bool, len(sl.off))
	var changed []Container
	var buf []byte
	for c := range cs {
		if have := sl.compact(c.ID); have != nil {
			want, err := metaOf(c)
			if err != nil {
				return err
			}
			buf = compactMeta(buf[:0], &want)
			if bytes.Equal(buf, have) {
				same[c.ID] = true
				continue
			}
		}
		changed = append(changed, c)
	}
	var stale []Container
	for id, o := range sl.off {
		if o != 0 && !same[id] {
			stale = append(stale, sl.container(uint32(id)))
		}
	}
	add, drop := newEntries(changed), newEntries(stale)
	for _, c := range changed {
		if err := add.add(gen, c); err != nil {
			return err
		}
	}
	for _, c := range stale {
		if err := drop.add(gen, c); err != nil {
			return err
		}
	}
	// The shared markers: every one cs needs is written (they are few: one
	// per IP shared by port ranges, one per subnet); one the slot has is
	// deleted only if cs needs it no more.
	partial, bcast := markersOf(gen, cs)
	partialV := make([]sockL3Owner, len(partial))
	for i := range partialV {
		partialV[i] = sockL3Owner{Flags: uint32(sockL3OwnerFlagsL3OF_PARTIAL)}
	}
	bcastV := make([]sockL3Local, len(bcast))
	for i := range bcastV {
		bcastV[i] = sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_BCAST)}
	}
	ownerK, ownerV := append(add.ownerK, partial...), append(add.ownerV, partialV...)
	localK, localV := append(add.localK, bcast...), append(add.localV, bcastV...)

	parts := runtime.GOMAXPROCS(0)
	var steps []func() error
	steps = append(steps, delParts(s.conts, "l3_conts", minus(drop.contK, add.contK), parts)...)
	steps = append(steps, delParts(s.metas, "l3_metas", minus(drop.metaK, add.metaK), parts)...)
	steps = append(steps, delParts(s.mcasts, "l3_mcasts", minus(drop.mcastK, add.mcastK), parts)...)
	steps = append(steps, delParts(s.routes, "l3_routes", minus(drop.routeK, add.routeK), parts)...)
	steps = append(steps, delParts(s.locals, "l3_locals", minus(append(drop.localK, drop.bcastK...), localK), parts)...)
	steps = append(steps, delParts(s.owners, "l3_owners", minus(append(drop.ownerK, drop.partialK...), ownerK), parts)...)
	steps = append(steps, putParts(s.owners, "l3_owners", ownerK, ownerV, parts)...)
	steps = append(steps, putParts(s.locals, "l3_locals", localK, localV, parts)...)
	steps = append(steps, putParts(s.routes, "l3_routes", add.routeK, add.routeV, parts)...)
	steps = append(steps, putParts(s.mcasts, "l3_mcasts", add.mcastK, add.mcastV, parts)...)
	steps = append(steps, putParts(s.metas, "l3_metas", add.metaK, add.metaV, parts)...)
	steps = append(steps, putParts(s.conts, "l3_conts", add.contK, add.contV, parts)...)
	// No program reads this generation: deletes and writes (of other keys)
	// run at the same time.
	return concurrently(steps)
}

// markersOf returns the shared markers containers cs need in generation
// gen: an owner marker per IP some of them own port ranges of, a local
// marker per broadcast address of their subnets (each once).
func markersOf(gen uint32, cs iter.Seq[Container]) (partial []sockL3OwnerKey, bcast []sockL3LocalKey) {
	var seenP map[sockL3OwnerKey]bool
	var seenB map[sockL3LocalKey]bool
	for c := range cs {
		for _, a := range c.Spec.Addresses {
			if !a.WholeIP() {
				k := sockL3OwnerKey{Prefixlen: 160, Gen: gen, Addr: toAddr(a.Addr)}
				if seenP == nil {
					seenP = map[sockL3OwnerKey]bool{}
				}
				if !seenP[k] {
					seenP[k] = true
					partial = append(partial, k)
				}
			}
			if b, ok := a.Broadcast(); ok {
				k := sockL3LocalKey{Gen: gen, Addr: toAddr(b)}
				if seenB == nil {
					seenB = map[sockL3LocalKey]bool{}
				}
				if !seenB[k] {
					seenB[k] = true
					bcast = append(bcast, k)
				}
			}
		}
	}
	return partial, bcast
}

// minus returns the keys of ks that are not in not.
func minus[K comparable](ks, not []K) []K {
	if len(ks) == 0 || len(not) == 0 {
		return ks
	}
	skip := make(map[K]bool, len(not))
	for _, k := range not {
		skip[k] = true
	}
	out := ks[:0:0]
	for _, k := range ks {
		if !skip[k] {
			out = append(out, k)
		}
	}
	return out
}
