package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/l3iso/l3iso/pkg/policy"
)

// Container is a container as the maps know it: its policy, plus the id the
// programs count it by and the cgroup that identifies its processes.
type Container struct {
	ID       uint32
	CgroupID uint64
	Spec     policy.Container
}

// Loopback4 returns the container's private IPv4 loopback address.
func (c Container) Loopback4() netip.Addr { return Loopback4(c.ID) }

// Loopback6 returns the container's private IPv6 loopback address.
func (c Container) Loopback6() netip.Addr { return Loopback6(c.ID) }

// Isolated reports whether the container's loopback is private.
func (c Container) Isolated() bool { return c.Spec.Loopback != policy.LoopbackHost }

// entries are the map writes that describe one container, in the order that
// keeps the programs consistent: ownership first, the cgroup → container
// mapping (which makes the container live) last.
type entries struct {
	ownerK []sockL3OwnerKey
	ownerV []sockL3Owner
	localK []sockL3LocalKey
	localV []sockL3Local
	routeK []sockL3RouteKey
	routeV []sockL3Route
	mcastK []sockL3McastKey
	mcastV []sockL3Mcast
	metaK  []sockL3MetaKey
	metaV  []sockL3Meta
	contK  []sockL3ContKey
	contV  []sockL3Cont
	// partial: the addr-level markers of IPs shared by port ranges. They
	// belong to no container and are written with every owner of a range.
	partialK []sockL3OwnerKey
	// bcast: (gen, id 0, broadcast address) markers in l3_locals — "the
	// broadcast address of some container's subnet", for l3_tc_group. Also
	// written with every container on the subnet.
	bcastK []sockL3LocalKey
}

// newEntries sizes the slices for cs, so that building 10,000 containers'
// entries does not spend its time growing slices.
func newEntries(cs []Container) *entries {
	n := 0
	for _, c := range cs {
		n += len(c.Spec.Addresses)
	}
	return &entries{
		ownerK: make([]sockL3OwnerKey, 0, n), ownerV: make([]sockL3Owner, 0, n),
		localK: make([]sockL3LocalKey, 0, 2*n+2*len(cs)), localV: make([]sockL3Local, 0, 2*n+2*len(cs)),
		metaK: make([]sockL3MetaKey, 0, len(cs)), metaV: make([]sockL3Meta, 0, len(cs)),
		contK: make([]sockL3ContKey, 0, len(cs)), contV: make([]sockL3Cont, 0, len(cs)),
	}
}

// metaAdopted, in l3_meta's pad byte, marks a container the CNI plugin
// made for a runtime's network namespace (policy.Container.Adopted).
// l3_metas is user space's alone (no program reads it), so the flag needs
// no change to bpf/: it is written and read here only.
const metaAdopted uint8 = 1

// metaOf is container c's l3_metas value. Its flags are those of c's
// l3_conts entry, less the loopback flag a netns container gets there.
func metaOf(c Container) (sockL3Meta, error) {
	var meta sockL3Meta
	if c.ID == 0 || int(c.ID) > MaxContainers {
		return meta, fmt.Errorf("container %q: id %d out of range 1..%d", c.Spec.Name, c.ID, MaxContainers)
	}
	if len(c.Spec.Addresses) > int(sockL3LimitsL3MAX_ADDRS) || len(c.Spec.Multicast) > int(sockL3LimitsL3MAX_MCAST) {
		return meta, fmt.Errorf("container %q: too many addresses or multicast groups", c.Spec.Name)
	}
	if _, err := nameKey(c.Spec.Name); err != nil {
		return meta, err
	}
	meta.Cgid, meta.Naddrs, meta.Nmcast = c.CgroupID, uint8(len(c.Spec.Addresses)), uint8(len(c.Spec.Multicast))
	for i := 0; i < len(c.Spec.Name); i++ {
		meta.Name[i] = int8(c.Spec.Name[i])
	}
	if !c.Isolated() {
		meta.Flags |= uint32(sockL3ContFlagsL3CF_LOOP_HOST)
	}
	if c.Spec.Mode == policy.ModeNetns {
		meta.Flags |= uint32(sockL3ContFlagsL3CF_NETNS)
		meta.Mode = uint8(sockL3ModeL3MODE_NETNS)
	}
	if c.Spec.Adopted {
		meta.Pad |= metaAdopted
	}
	for i, a := range c.Spec.Addresses {
		spec := sockL3AddrSpec{Addr: toAddr(a.Addr), Proto: uint8(a.Proto), PortLo: a.PortLo, PortHi: a.PortHi}
		if a.Subnet.IsValid() {
			spec.Flags |= uint8(sockL3SpecFlagsL3SF_PREFIX)
			spec.Prefixlen = uint8(bits16(a.Subnet))
		}
		meta.Addrs[i] = spec
		if a.WholeIP() {
			if a.Addr.Is4() {
				meta.Flags |= uint32(sockL3ContFlagsL3CF_HAS4)
			} else {
				meta.Flags |= uint32(sockL3ContFlagsL3CF_HAS6)
			}
			if a.Subnet.IsValid() {
				meta.Flags |= uint32(sockL3ContFlagsL3CF_SUBNETS)
			}
		}
	}
	for i, g := range c.Spec.Multicast {
		meta.Mcast[i] = sockL3Prefix{Addr: toAddr(g.Addr()), Prefixlen: uint8(bits16(g))}
	}
	return meta, nil
}

func (e *entries) add(gen uint32, c Container) error {
	meta, err := metaOf(c)
	if err != nil {
		return err
	}
	cont := sockL3Cont{Id: c.ID, Lo4: toAddr(c.Loopback4()), Lo6: toAddr(c.Loopback6()), Flags: meta.Flags}
	netns := c.Spec.Mode == policy.ModeNetns
	var have4, have6 bool
	for i, a := range c.Spec.Addresses {
		la := toAddr(a.Addr)
		if a.WholeIP() {
			e.ownerK = append(e.ownerK, sockL3OwnerKey{Prefixlen: 160, Gen: gen, Addr: la})
			o := sockL3Owner{Id: c.ID}
			if netns {
				o.Flags |= uint32(sockL3OwnerFlagsL3OF_NETNS)
			}
			e.ownerV = append(e.ownerV, o)
			e.localK = append(e.localK, sockL3LocalKey{Gen: gen, Id: c.ID, Addr: la})
			e.localV = append(e.localV, sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_WHOLE)})
			if a.Addr.Is4() && !have4 {
				have4, cont.Primary4 = true, la
			}
			if a.Addr.Is6() && !have6 {
				have6, cont.Primary6 = true, la
			}
			if a.Subnet.IsValid() && !slices.ContainsFunc(c.Spec.Addresses[:i], func(b policy.Address) bool { return b.Subnet == a.Subnet && b.WholeIP() }) {
				// The first address on a subnet is its source, as the
				// kernel makes a subnet's first address its preferred
				// source.
				e.routeK = append(e.routeK, sockL3RouteKey{
					Prefixlen: uint32(64 + bits16(a.Subnet)), Gen: gen, Id: c.ID, Addr: toAddr(a.Subnet.Addr()),
				})
				e.routeV = append(e.routeV, sockL3Route{Src: la})
			}
		} else {
			for _, pp := range portPrefixes(a.PortLo, a.PortHi) {
				protos := []policy.Proto{a.Proto}
				if a.Proto == policy.ProtoAny {
					protos = []policy.Proto{policy.ProtoTCP, policy.ProtoUDP}
				}
				for _, proto := range protos {
					e.ownerK = append(e.ownerK, sockL3OwnerKey{
						Prefixlen: uint32(168 + pp[1]), Gen: gen, Addr: la, Proto: uint8(proto),
						PortHi: uint8(pp[0] >> 8), PortLo: uint8(pp[0]),
					})
					e.ownerV = append(e.ownerV, sockL3Owner{Id: c.ID})
				}
			}
			e.partialK = append(e.partialK, sockL3OwnerKey{Prefixlen: 160, Gen: gen, Addr: la})
			e.localK = append(e.localK, sockL3LocalKey{Gen: gen, Id: c.ID, Addr: la})
			e.localV = append(e.localV, sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_PART)})
		}
		if b, ok := a.Broadcast(); ok {
			e.localK = append(e.localK, sockL3LocalKey{Gen: gen, Id: c.ID, Addr: toAddr(b)})
			e.localV = append(e.localV, sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_BCAST)})
			e.bcastK = append(e.bcastK, sockL3LocalKey{Gen: gen, Addr: toAddr(b)})
		}
	}
	if c.Isolated() && !netns {
		for _, lo := range []netip.Addr{c.Loopback4(), c.Loopback6()} {
			e.localK = append(e.localK, sockL3LocalKey{Gen: gen, Id: c.ID, Addr: toAddr(lo)})
			e.localV = append(e.localV, sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_LOOP)})
		}
	}
	for _, g := range c.Spec.Multicast {
		e.mcastK = append(e.mcastK, sockL3McastKey{Prefixlen: uint32(64 + bits16(g)), Gen: gen, Id: c.ID, Group: toAddr(g.Masked().Addr())})
		e.mcastV = append(e.mcastV, sockL3Mcast{Allowed: 1})
	}
	if netns {
		// Its 127.0.0.1 and ::1 are its namespace's own lo: the programs
		// must not remap them to the private loopback of shared mode,
		// which exists only on the host's lo. (The metadata keeps the
		// policy's setting.)
		cont.Flags |= uint32(sockL3ContFlagsL3CF_LOOP_HOST)
	}
	e.metaK = append(e.metaK, sockL3MetaKey{Gen: gen, Id: c.ID})
	e.metaV = append(e.metaV, meta)
	e.contK = append(e.contK, sockL3ContKey{Gen: gen, Cgid: c.CgroupID})
	e.contV = append(e.contV, cont)
	return nil
}

// put writes keys/values with one batch call where the map supports it.
func put[K, V any](m *ebpf.Map, name string, ks []K, vs []V) error {
	if len(ks) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(ks, vs, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("update map %s: %w", name, err)
	}
	for i := range ks {
		if err := m.Update(&ks[i], &vs[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
	}
	return nil
}

// del deletes keys; missing keys are fine.
func del[K any](m *ebpf.Map, name string, ks []K) error {
	for i := range ks {
		if err := m.Delete(&ks[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from map %s: %w", name, err)
		}
	}
	return nil
}

// Insert writes the containers into generation g, which the programs may
// be reading: ownership and derivative addresses go in first, the cgroup →
// container entries last, so a process never sees a container half
// described.
func (g Gen) Insert(cs ...Container) error {
	e := newEntries(cs)
	for _, c := range cs {
		if err := e.add(g.n, c); err != nil {
			return err
		}
	}
	if err := g.s.addFilters(slices.Values(cs)); err != nil {
		return err
	}
	s := g.s
	for _, step := range []func() error{
		func() error {
			return put(s.owners, "l3_owners", e.partialK, markers(len(e.partialK), sockL3Owner{Flags: uint32(sockL3OwnerFlagsL3OF_PARTIAL)}))
		},
		func() error {
			return put(s.locals, "l3_locals", e.bcastK, markers(len(e.bcastK), sockL3Local{Kind: uint32(sockL3LocalKindL3LOCAL_BCAST)}))
		},
		func() error { return put(s.owners, "l3_owners", e.ownerK, e.ownerV) },
		func() error { return put(s.locals, "l3_locals", e.localK, e.localV) },
		func() error { return put(s.routes, "l3_routes", e.routeK, e.routeV) },
		func() error { return put(s.mcasts, "l3_mcasts", e.mcastK, e.mcastV) },
		func() error { return put(s.metas, "l3_metas", e.metaK, e.metaV) },
		func() error { return put(s.conts, "l3_conts", e.contK, e.contV) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// markers is n copies of a shared marker's value.
func markers[V any](n int, v V) []V {
	out := make([]V, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// putParts cuts a put of more than a few thousand entries in parts.
func putParts[K, V any](m *ebpf.Map, name string, ks []K, vs []V, parts int) []func() error {
	return inParts(len(ks), parts, func(lo, hi int) error { return put(m, name, ks[lo:hi], vs[lo:hi]) })
}

// inParts cuts n items into at most parts steps of at least 2,048 items
// each (one step for fewer); step i does items [lo, hi).
func inParts(n, parts int, step func(lo, hi int) error) []func() error {
	if n == 0 {
		return nil
	}
	parts = max(1, min(parts, n/2048))
	out := make([]func() error, 0, parts)
	for i := 0; i < parts; i++ {
		lo, hi := i*n/parts, (i+1)*n/parts
		out = append(out, func() error { return step(lo, hi) })
	}
	return out
}

// concurrently runs the steps at the same time and returns their errors.
func concurrently(steps []func() error) error {
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = step()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Shared lists what a container shares with others that stay when it
// goes: the IPs they own port ranges of (the IP's marker in l3_owners), and
// the broadcast addresses of subnets they are on (the marker in l3_locals).
type Shared struct {
	IPs        []netip.Addr
	Broadcasts []netip.Addr
}

// Remove deletes container c from generation g, in the reverse order of
// Insert: the cgroup → container entry first, ownership last. keep lists
// the shared markers of c that other containers still need; the others of
// c's go. The filters keep c's bits (a broadcast address still set, an IP
// still not proven unowned): a stale bit only costs the programs a lookup,
// and ResetFilters recomputes them.
func (g Gen) Remove(c Container, keep Shared) error {
	s := g.s
	var e entries
	if err := e.add(g.n, c); err != nil {
		return err
	}
	var partial []sockL3OwnerKey
	for _, k := range e.partialK {
		if !slices.Contains(keep.IPs, fromAddr(k.Addr)) {
			partial = append(partial, k)
		}
	}
	var bcast []sockL3LocalKey
	for _, k := range e.bcastK {
		if !slices.Contains(keep.Broadcasts, fromAddr(k.Addr)) {
			bcast = append(bcast, k)
		}
	}
	for _, step := range []func() error{
		func() error { return del(s.conts, "l3_conts", e.contK) },
		func() error { return del(s.metas, "l3_metas", e.metaK) },
		func() error { return del(s.mcasts, "l3_mcasts", e.mcastK) },
		func() error { return del(s.routes, "l3_routes", e.routeK) },
		func() error { return del(s.locals, "l3_locals", e.localK) },
		func() error { return del(s.owners, "l3_owners", e.ownerK) },
		func() error { return del(s.owners, "l3_owners", partial) },
		func() error { return del(s.locals, "l3_locals", bcast) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// Repair makes the policy maps hold exactly the entries of containers cs in
// generation g: it rewrites those and deletes every other key — entries of
// the other generation, and orphans of a command that died between writing
// ownership and the metadata that explains it — and resets the broadcast
// filter to cs. It scans every map: run it only after an interrupted
// command.
func (g Gen) Repair(cs []Container) error {
	s := g.s
	e := newEntries(cs)
	for _, c := range cs {
		if err := e.add(g.n, c); err != nil {
			return err
		}
	}
	if err := g.Insert(cs...); err != nil {
		return err
	}
	if err := prune(s.conts, "l3_conts", e.contK); err != nil {
		return err
	}
	if err := prune(s.metas, "l3_metas", e.metaK); err != nil {
		return err
	}
	if err := prune(s.mcasts, "l3_mcasts", e.mcastK); err != nil {
		return err
	}
	if err := prune(s.routes, "l3_routes", e.routeK); err != nil {
		return err
	}
	if err := prune(s.locals, "l3_locals", append(e.localK, e.bcastK...)); err != nil {
		return err
	}
	if err := prune(s.owners, "l3_owners", append(e.ownerK, e.partialK...)); err != nil {
		return err
	}
	return s.ResetFilters(slices.Values(cs))
}

// prune deletes every key of m that is not in keep.
func prune[K comparable](m *ebpf.Map, name string, keep []K) error {
	want := make(map[K]bool, len(keep))
	for _, k := range keep {
		want[k] = true
	}
	return purge(m, name, func(k *K) bool { return !want[*k] })
}

// delParts cuts a delBatch of more than a few thousand keys in parts.
func delParts[K any](m *ebpf.Map, name string, ks []K, parts int) []func() error {
	return inParts(len(ks), parts, func(lo, hi int) error { return delBatch(m, name, ks[lo:hi]) })
}

// delBatch deletes keys with batch calls where the map has them; missing
// keys are fine.
func delBatch[K any](m *ebpf.Map, name string, ks []K) error {
	if len(ks) == 0 {
		return nil
	}
	if _, err := m.BatchDelete(ks, nil); err == nil {
		return nil
	}
	// A batch stops at the first missing key (or is unsupported): one by one.
	return del(m, name, ks)
}

// Containers reads the containers of generation g from l3_metas, by name.
// It reads in batches: one system call per thousand containers.
func (g Gen) Containers() ([]Container, error) {
	s, gen := g.s, g.n
	var (
		chunks [][]Container // one per batch: no slice of 10,000 grown step by step
		total  int
		cursor ebpf.MapBatchCursor
		keys   = make([]sockL3MetaKey, 1024)
		vals   = make([]sockL3Meta, 1024)
	)
	for {
		n, err := s.metas.BatchLookup(&cursor, keys, vals, nil)
		chunk := make([]Container, 0, n)
		for i := 0; i < n; i++ {
			if keys[i].Gen == gen {
				chunk = append(chunk, decodeMeta(keys[i].Id, &vals[i]))
			}
		}
		chunks, total = append(chunks, chunk), total+len(chunk)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read map l3_metas: %w", err)
		}
	}
	// Sort pointers, then copy each container once, in order.
	ptrs := make([]*Container, 0, total)
	for _, c := range chunks {
		for i := range c {
			ptrs = append(ptrs, &c[i])
		}
	}
	slices.SortFunc(ptrs, func(a, b *Container) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	out := make([]Container, len(ptrs))
	for i, p := range ptrs {
		out[i] = *p
	}
	return out, nil
}

func decodeMeta(id uint32, v *sockL3Meta) Container {
	n := 0
	for n < len(v.Name) && v.Name[n] != 0 {
		n++
	}
	name := unsafe.Slice((*byte)(unsafe.Pointer(&v.Name[0])), n) // int8 as bytes
	c := Container{ID: id, CgroupID: v.Cgid, Spec: policy.Container{
		Name: string(name), Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated,
	}}
	if v.Mode == uint8(sockL3ModeL3MODE_NETNS) {
		c.Spec.Mode = policy.ModeNetns
	}
	if v.Flags&uint32(sockL3ContFlagsL3CF_LOOP_HOST) != 0 {
		c.Spec.Loopback = policy.LoopbackHost
	}
	c.Spec.Adopted = v.Pad&metaAdopted != 0
	if v.Naddrs > 0 {
		c.Spec.Addresses = make([]policy.Address, 0, min(int(v.Naddrs), len(v.Addrs)))
	}
	for i := 0; i < int(v.Naddrs) && i < len(v.Addrs); i++ {
		sp := v.Addrs[i]
		a := policy.Address{Addr: fromAddr(sp.Addr), Proto: policy.Proto(sp.Proto), PortLo: sp.PortLo, PortHi: sp.PortHi}
		if sp.Flags&uint8(sockL3SpecFlagsL3SF_PREFIX) != 0 {
			a.Subnet = prefix16(a.Addr, int(sp.Prefixlen)).Masked()
		}
		c.Spec.Addresses = append(c.Spec.Addresses, a)
	}
	for i := 0; i < int(v.Nmcast) && i < len(v.Mcast); i++ {
		g := fromAddr(v.Mcast[i].Addr)
		c.Spec.Multicast = append(c.Spec.Multicast, prefix16(g, int(v.Mcast[i].Prefixlen)))
	}
	return c
}

// Purge deletes every entry of generation g from every policy map.
func (g Gen) Purge() error {
	s, gen := g.s, g.n
	if err := purge(s.conts, "l3_conts", func(k *sockL3ContKey) bool { return k.Gen == gen }); err != nil {
		return err
	}
	if err := purge(s.metas, "l3_metas", func(k *sockL3MetaKey) bool { return k.Gen == gen }); err != nil {
		return err
	}
	if err := purge(s.mcasts, "l3_mcasts", func(k *sockL3McastKey) bool { return k.Gen == gen }); err != nil {
		return err
	}
	if err := purge(s.routes, "l3_routes", func(k *sockL3RouteKey) bool { return k.Gen == gen }); err != nil {
		return err
	}
	if err := purge(s.locals, "l3_locals", func(k *sockL3LocalKey) bool { return k.Gen == gen }); err != nil {
		return err
	}
	return purge(s.owners, "l3_owners", func(k *sockL3OwnerKey) bool { return k.Gen == gen })
}

func purge[K any](m *ebpf.Map, name string, match func(*K) bool) error {
	var (
		keys []K
		prev any // nil: start at the first key
	)
	for {
		var next K
		if err := m.NextKey(prev, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			return fmt.Errorf("read map %s: %w", name, err)
		}
		if match(&next) {
			keys = append(keys, next)
		}
		prev = next
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchDelete(keys, nil); err == nil {
		return nil
	}
	return del(m, name, keys)
}

// Container returns container id of generation g, as its metadata
// describes it; ok is false if there is none.
func (g Gen) Container(id uint32) (c Container, ok bool, err error) {
	var v sockL3Meta
	if err := g.s.metas.Lookup(&sockL3MetaKey{Gen: g.n, Id: id}, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Container{}, false, nil
		}
		return Container{}, false, fmt.Errorf("read map l3_metas: %w", err)
	}
	return decodeMeta(id, &v), true, nil
}

// BroadcastInUse reports whether some container of generation g has a
// subnet whose broadcast address is b (its l3_locals marker exists).
func (g Gen) BroadcastInUse(b netip.Addr) (bool, error) {
	var v sockL3Local
	if err := g.s.locals.Lookup(&sockL3LocalKey{Gen: g.n, Addr: toAddr(b)}, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("read map l3_locals: %w", err)
	}
	return true, nil
}

// Owner returns the id of the container of generation g that owns addr
// (any port), 0 if none, and whether only port ranges of it are owned.
func (g Gen) Owner(addr netip.Addr) (id uint32, partial bool, err error) {
	var v sockL3Owner
	k := sockL3OwnerKey{Prefixlen: 184, Gen: g.n, Addr: toAddr(addr)}
	if err := g.s.owners.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("read map l3_owners: %w", err)
	}
	return v.Id, v.Flags&uint32(sockL3OwnerFlagsL3OF_PARTIAL) != 0, nil
}

// InitCounters zeroes the counters of containers ids (0: the host), so a
// new container does not inherit a deleted one's figures, and gives each id
// a new epoch with an empty socket quota (registry.h): sockets of a deleted
// container of that id never count against, or unregister, the new one's.
// It writes a batch of ids per system call.
func (s *Set) InitCounters(ids ...uint32) error {
	if len(ids) == 0 {
		return nil
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	const chunk = 1024
	zero := make([]sockL3Stats, min(len(ids), chunk)*n)
	for len(ids) > 0 {
		k := ids[:min(len(ids), chunk)]
		ids = ids[len(k):]
		if _, err := s.counters.BatchUpdate(k, zero[:len(k)*n], nil); err != nil {
			for _, id := range k { // no batch operations on this kernel
				if err := s.counters.Update(id, zero[:n], ebpf.UpdateAny); err != nil {
					return fmt.Errorf("reset counters of container %d: %w", id, err)
				}
			}
		}
		for _, id := range k {
			if err := s.newEpoch(id); err != nil {
				return err
			}
		}
	}
	return nil
}
