package maps

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/policy"
)

// The index is user space's own bookkeeping, pinned beside the programs'
// maps (no program reads it), so that a command that changes one container
// does not read every container's metadata:
//
//	l3_names  hash: container name → id, for the containers of the active
//	          generation (during an apply, also those of the next one)
//	l3_ids    array: [0] the bitmap of ids in use (same containers);
//	          [1] the layout stamp: the hash of the embedded BPF object whose
//	          map layouts were last checked against these pins (OpenPinned
//	          skips the check, and the parsing of the object, when it matches)
//
// Invariant: the index holds at least the containers that l3_metas holds in
// the active generation, and during an apply in the next one — writers add
// to it before they write metadata and remove from it after they removed
// the metadata (or switched away from it) — and exactly those of the
// active generation when the installation is not dirty. The inactive
// generation's metadata, which an apply leaves for the next one to write
// over (slot.go), is not in it: those containers no longer exist. After a crash
// (dirty) the repair rewrites it exactly (ResetIndex). An installation made
// by an l3iso without the index gets one on the first changing command.
const (
	namesPin = "l3_names"
	idsPin   = "l3_ids"
)

// idWords is the length of the id bitmap, in 64-bit words (ids 0..MaxContainers).
const idWords = (MaxContainers + 1 + 63) / 64

type idBitmap [idWords]uint64

// Index is the open index (see above).
type Index struct {
	names *ebpf.Map // [NameLen]byte → uint32
	ids   *ebpf.Map // uint32 → idBitmap
}

func namesSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: namesPin, Type: ebpf.Hash, KeySize: uint32(NameLen), ValueSize: 4,
		MaxEntries: uint32(2 * MaxContainers), Flags: unix.BPF_F_NO_PREALLOC}
}

func idsSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: idsPin, Type: ebpf.Array, KeySize: 4, ValueSize: uint32(8 * idWords), MaxEntries: 2}
}

// openIndex opens the index pinned in dir; nil (no error) if it is not
// there or not of this version's shape.
func openIndex(dir string) *Index {
	x := &Index{}
	for _, p := range []struct {
		m    **ebpf.Map
		name string
		spec *ebpf.MapSpec
	}{{&x.ids, idsPin, idsSpec()}, {&x.names, namesPin, namesSpec()}} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, p.name), nil)
		if err != nil {
			x.close()
			return nil
		}
		*p.m = m
		if p.spec.Compatible(m) != nil {
			x.close()
			return nil
		}
	}
	return x
}

// close releases the index's file descriptors.
func (x *Index) close() {
	if x == nil {
		return
	}
	for _, m := range []**ebpf.Map{&x.names, &x.ids} {
		if *m != nil {
			(*m).Close()
			*m = nil
		}
	}
}

// nameKey is name as l3_names and l3_metas hold it: NUL-padded, or (a name
// of NameLen characters) not terminated. A name the policy refuses is none.
func nameKey(name string) ([NameLen]byte, error) {
	var k [NameLen]byte
	if err := policy.ValidateName(name); err != nil {
		return k, err
	}
	if len(name) > NameLen {
		return k, fmt.Errorf("container name %q is longer than the %d bytes l3_metas holds", name, NameLen)
	}
	copy(k[:], name)
	return k, nil
}

// Index returns the pinned index, or nil if the installation has none yet
// (BuildIndex makes it).
func (s *Set) Index() *Index { return s.index }

// BuildIndex makes the index hold exactly containers cs (the active
// generation's), creating and pinning it if the installation has none. The
// maps are filled before they are pinned, so an index that is pinned is
// complete. Call it with the installation locked exclusively. Maps that New
// made (`up` of a new installation) do not know where they end up pinned:
// for them it does nothing, and the first command that opens the pins
// exclusively builds the index.
func (s *Set) BuildIndex(cs []Container) error {
	if s.index != nil {
		return s.index.reset(cs)
	}
	if s.dir == "" {
		return nil
	}
	x := &Index{}
	var err error
	if x.ids, err = ebpf.NewMap(idsSpec()); err != nil {
		return fmt.Errorf("create map %s: %w", idsPin, err)
	}
	if x.names, err = ebpf.NewMap(namesSpec()); err != nil {
		x.close()
		return fmt.Errorf("create map %s: %w", namesPin, err)
	}
	if err := x.reset(cs); err != nil {
		x.close()
		return err
	}
	// ids first: the index counts as present once l3_names is pinned. A
	// leftover of a crash here is replaced.
	for _, p := range []struct {
		m    *ebpf.Map
		name string
	}{{x.ids, idsPin}, {x.names, namesPin}} {
		final := filepath.Join(s.dir, p.name)
		tmp := final + "_tmp" // bpffs refuses names with a dot
		os.Remove(tmp)
		if err := p.m.Pin(tmp); err != nil {
			x.close()
			return fmt.Errorf("pin map %s: %w", p.name, err)
		}
		if err := os.Rename(tmp, final); err != nil {
			os.Remove(tmp)
			x.close()
			return fmt.Errorf("pin map %s: %w", p.name, err)
		}
	}
	s.index = x
	return nil
}

// indexKey is container c's l3_names key, after checking its id.
func indexKey(c Container) ([NameLen]byte, error) {
	if c.ID == 0 || int(c.ID) > MaxContainers {
		return [NameLen]byte{}, fmt.Errorf("container %q: id %d out of range 1..%d", c.Spec.Name, c.ID, MaxContainers)
	}
	return nameKey(c.Spec.Name)
}

// reset makes the index hold exactly cs.
func (x *Index) reset(cs []Container) error {
	var bm idBitmap
	keep := make(map[[NameLen]byte]bool, len(cs))
	keys := make([][NameLen]byte, 0, len(cs))
	vals := make([]uint32, 0, len(cs))
	for _, c := range cs {
		k, err := indexKey(c)
		if err != nil {
			return err
		}
		keep[k] = true
		keys, vals = append(keys, k), append(vals, c.ID)
		bm[c.ID/64] |= 1 << (c.ID % 64)
	}
	if err := prune(x.names, namesPin, keys); err != nil {
		return err
	}
	if err := put(x.names, namesPin, keys, vals); err != nil {
		return err
	}
	return x.writeIDs(&bm)
}

func (x *Index) readIDs() (*idBitmap, error) {
	var bm idBitmap
	if err := x.ids.Lookup(uint32(0), &bm); err != nil {
		return nil, fmt.Errorf("read map %s: %w", idsPin, err)
	}
	return &bm, nil
}

func (x *Index) writeIDs(bm *idBitmap) error {
	if err := x.ids.Update(uint32(0), bm, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update map %s: %w", idsPin, err)
	}
	return nil
}

// Lookup returns the id of container name (0 if there is none).
func (x *Index) Lookup(name string) (uint32, error) {
	k, err := nameKey(name)
	if err != nil {
		return 0, nil // no container can have that name
	}
	var id uint32
	if err := x.names.Lookup(&k, &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("read map %s: %w", namesPin, err)
	}
	return id, nil
}

// FreeIDs returns the n lowest ids not in use.
func (x *Index) FreeIDs(n int) ([]uint32, error) {
	bm, err := x.readIDs()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for w := 0; w < idWords && len(out) < n; w++ {
		free := ^bm[w]
		if w == 0 {
			free &^= 1 // id 0 is the host
		}
		for free != 0 && len(out) < n {
			b := bits.TrailingZeros64(free)
			free &^= 1 << b
			id := w*64 + b
			if id > MaxContainers {
				break
			}
			out = append(out, uint32(id))
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("too many containers: l3iso supports %d; delete some first", MaxContainers)
	}
	return out, nil
}

// Add records containers cs (before their metadata is written).
func (x *Index) Add(cs ...Container) error {
	if len(cs) == 0 {
		return nil
	}
	bm, err := x.readIDs()
	if err != nil {
		return err
	}
	keys := make([][NameLen]byte, 0, len(cs))
	vals := make([]uint32, 0, len(cs))
	for _, c := range cs {
		k, err := indexKey(c)
		if err != nil {
			return err
		}
		keys, vals = append(keys, k), append(vals, c.ID)
		bm[c.ID/64] |= 1 << (c.ID % 64)
	}
	if err := x.writeIDs(bm); err != nil {
		return err
	}
	return put(x.names, namesPin, keys, vals)
}

// Remove forgets containers cs (after their metadata is gone).
func (x *Index) Remove(cs ...Container) error {
	if len(cs) == 0 {
		return nil
	}
	keys := make([][NameLen]byte, 0, len(cs))
	for _, c := range cs {
		if k, err := nameKey(c.Spec.Name); err == nil {
			keys = append(keys, k)
		}
	}
	if err := delBatch(x.names, namesPin, keys); err != nil {
		return err
	}
	bm, err := x.readIDs()
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.ID != 0 && int(c.ID) <= MaxContainers {
			bm[c.ID/64] &^= 1 << (c.ID % 64)
		}
	}
	return x.writeIDs(bm)
}

// layoutStamp identifies the embedded socket programs' map layouts: the
// hash of the object they come from.
func layoutStamp() idBitmap {
	var v idBitmap
	sum := sha256.Sum256(_SockBytes)
	for i := 0; i < 4; i++ {
		for j := 0; j < 8; j++ {
			v[i] |= uint64(sum[8*i+j]) << (8 * j)
		}
	}
	return v
}

// stamped reports whether the pins were checked against this binary's
// layouts before.
func (x *Index) stamped() bool {
	if x == nil {
		return false
	}
	var v idBitmap
	if err := x.ids.Lookup(uint32(1), &v); err != nil {
		return false
	}
	return v == layoutStamp()
}

// stamp records that the pins were checked against this binary's layouts.
func (x *Index) stamp() {
	if x == nil || x.stamped() {
		return
	}
	v := layoutStamp()
	x.ids.Update(uint32(1), &v, ebpf.UpdateAny) // only an optimisation
}
