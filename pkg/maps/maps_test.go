package maps

import (
	"errors"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/policy"
)

func TestPortPrefixes(t *testing.T) {
	for _, tc := range []struct {
		lo, hi uint16
		want   int // number of prefix blocks
	}{
		{5432, 5432, 1}, {0, 65535, 1}, {8000, 8099, 3}, {1, 65535, 16}, {6000, 6099, 4}, {65535, 65535, 1},
	} {
		blocks := portPrefixes(tc.lo, tc.hi)
		if len(blocks) != tc.want {
			t.Errorf("[%d,%d]: %d blocks %v, want %d", tc.lo, tc.hi, len(blocks), blocks, tc.want)
		}
		// The blocks cover exactly [lo, hi], in order, aligned.
		next := int(tc.lo)
		for _, b := range blocks {
			size := 1 << (16 - b[1])
			if b[0] != next || b[0]%size != 0 {
				t.Fatalf("[%d,%d]: block %v misplaced (want start %d)", tc.lo, tc.hi, b, next)
			}
			next += size
		}
		if next != int(tc.hi)+1 {
			t.Errorf("[%d,%d]: blocks end at %d", tc.lo, tc.hi, next-1)
		}
	}
}

func TestAddrRoundTrip(t *testing.T) {
	for _, s := range []string{"10.77.0.1", "fd77::1", "255.255.255.255", "::1", "127.0.0.1"} {
		a := netip.MustParseAddr(s)
		if got := fromAddr(toAddr(a)); got != a {
			t.Errorf("%s → %s", a, got)
		}
	}
	if Loopback4(1).String() != "127.128.0.1" || Loopback4(300).String() != "127.128.1.44" {
		t.Errorf("Loopback4: %s %s", Loopback4(1), Loopback4(300))
	}
	if !Loopback4Prefix.Contains(Loopback4(uint32(MaxContainers))) || !Loopback6Prefix.Contains(Loopback6(uint32(MaxContainers))) {
		t.Error("private loopbacks leave their ranges")
	}
}

// The loopback ranges are written in bpf/l3iso.h too: keep them in step.
func TestHeaderConstants(t *testing.T) {
	h, err := os.ReadFile("../../bpf/l3iso.h")
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) uint64 {
		m := regexp.MustCompile(`#define ` + name + ` (0x[0-9a-f]+)`).FindSubmatch(h)
		if m == nil {
			t.Fatalf("%s not in l3iso.h", name)
		}
		v, _ := strconv.ParseUint(string(m[1][2:]), 16, 64)
		return v
	}
	if b := Loopback4Prefix.Addr().As4(); get("L3_LO4_BASE") != uint64(b[0])<<24|uint64(b[1])<<16 {
		t.Error("L3_LO4_BASE differs from Loopback4Prefix")
	}
	b := Loopback6Prefix.Addr().As16()
	if get("L3_LO6_W0") != uint64(b[0])<<24|uint64(b[1])<<16|uint64(b[2])<<8|uint64(b[3]) ||
		get("L3_LO6_W1") != uint64(b[4])<<24|uint64(b[5])<<16 {
		t.Error("L3_LO6_W0/W1 differ from Loopback6Prefix")
	}
	if len(CounterNames) > int(sockL3CounterL3C_MAX) {
		t.Errorf("%d counter names, room for %d", len(CounterNames), sockL3CounterL3C_MAX)
	}
}

// newTestSet makes a private set of maps (pinned nowhere), closed when the
// test ends; the test needs root.
func newTestSet(t testing.TB) *Set {
	t.Helper()
	sockprobe.RequirePrivileged(t)
	rlimit.RemoveMemlock()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestInsertRemove writes containers into real maps and checks that Remove
// and DeleteGen leave nothing behind, the shared-IP marker lives as long as
// one owner of a port range does (Remove is told so), and the broadcast
// filter loses the bit of a subnet nobody is on; the filter of unowned
// IPs never says "unowned" of an address a container has.
func TestInsertRemove(t *testing.T) {
	s := newTestSet(t)
	// unowned reads l3_ofilter's bit of a (1: no container owns a, surely).
	unowned := func(a string) uint64 {
		var v sockL3OwnedFilter
		if err := s.ofilter.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		bit := ownedBit(netip.MustParseAddr(a))
		return v.W[bit/64] >> (bit % 64) & 1
	}
	addrs := []string{"10.77.0.1", "fd77::1", "10.77.0.9", "10.79.0.1"}
	for _, a := range addrs {
		if unowned(a) != 0 {
			t.Fatalf("a new l3_ofilter says no container owns %s: it must say nothing until written", a)
		}
	}
	mk := func(id uint32, name string, addrs ...string) Container {
		c := Container{ID: id, CgroupID: uint64(1000 + id), Spec: policy.Container{Name: name, Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated}}
		for _, a := range addrs {
			pa, err := policy.ParseAddress(a)
			if err != nil {
				t.Fatal(err)
			}
			c.Spec.Addresses = append(c.Spec.Addresses, pa)
		}
		return c
	}
	web := mk(1, "web", "10.77.0.1/24", "fd77::1")
	db := mk(2, "db", "10.77.0.9:5432/tcp")
	db2 := mk(3, "db2", "10.77.0.9:6000-6099/tcp")
	all := []Container{web, db, db2}
	if err := (Gen{s, 7}).Insert(all...); err != nil {
		t.Fatal(err)
	}
	got, err := (Gen{s, 7}).Containers()
	if err != nil || len(got) != 3 || got[2].Spec.Name != "web" || got[2].Spec.Addresses[0].String() != "10.77.0.1/24" {
		t.Fatalf("Containers: %+v, %v", got, err)
	}
	if id, partial, _ := (Gen{s, 7}).Owner(netip.MustParseAddr("10.77.0.9")); id != 0 || !partial {
		t.Errorf("10.77.0.9: owner %d partial %v, want the shared marker", id, partial)
	}
	if id, _, _ := (Gen{s, 7}).Owner(netip.MustParseAddr("10.77.0.1")); id != 1 {
		t.Errorf("10.77.0.1: owner %d, want 1", id)
	}
	// The broadcast filter has 10.77.0.255, set through the mmapped
	// config line, and the map update of the rest of the config keeps it.
	bcast := bloomBit(netip.MustParseAddr("10.77.0.255"))
	bloom := func() uint64 {
		var v sockL3Cfg
		if err := s.cfg.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v.BcastBloom[bcast/64] >> (bcast % 64) & 1
	}
	if err := s.SetConfig(Config{Level: 3}); err != nil {
		t.Fatal(err)
	}
	if bloom() != 1 {
		t.Error("the broadcast filter lacks 10.77.0.255 after Insert and SetConfig")
	}
	if err := s.ResetFilters(slices.Values(all)); err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]uint64{"10.77.0.1": 0, "fd77::1": 0, "10.77.0.9": 0, "10.79.0.1": 1, "fd79::1": 1} {
		if got := unowned(a); got != want {
			t.Errorf("l3_ofilter's bit of %s is %d after a reset to web, db, db2; want %d", a, got, want)
		}
	}
	if err := s.Switch(Gen{s, 7}); err != nil {
		t.Fatal(err)
	}
	if g, err := s.Active(); err != nil || g.n != 7 {
		t.Errorf("Active = %v, %v; want generation 7", g, err)
	}
	if c, err := s.Config(); err != nil || c.Level != 3 {
		t.Errorf("Config after SetActiveGen: %+v, %v", c, err)
	}
	if err := (Gen{s, 7}).Remove(db, Shared{IPs: []netip.Addr{netip.MustParseAddr("10.77.0.9")}}); err != nil { // db2 owns ports of it
		t.Fatal(err)
	}
	if _, partial, _ := (Gen{s, 7}).Owner(netip.MustParseAddr("10.77.0.9")); !partial {
		t.Error("removing db dropped the marker while db2 still owns ports of 10.77.0.9")
	}
	if err := (Gen{s, 7}).Remove(web, Shared{}); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetFilters(slices.Values([]Container{db2})); err != nil {
		t.Fatal(err)
	}
	if bloom() != 0 {
		t.Error("the broadcast filter still has 10.77.0.255 after its only container went")
	}
	for a, want := range map[string]uint64{"10.77.0.1": 1, "fd77::1": 1, "10.77.0.9": 0} {
		if got := unowned(a); got != want {
			t.Errorf("l3_ofilter's bit of %s is %d after a reset to db2; want %d", a, got, want)
		}
	}
	// An address goes live only after Insert cleared its bit.
	if err := (Gen{s, 7}).Insert(web); err != nil {
		t.Fatal(err)
	}
	if unowned("10.77.0.1") != 0 || unowned("fd77::1") != 0 {
		t.Error("Insert of web left l3_ofilter saying nobody owns its addresses")
	}
	if err := (Gen{s, 7}).Remove(web, Shared{}); err != nil {
		t.Fatal(err)
	}
	if err := deleteGen(Gen{s, 7}, []Container{db2}); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.Map{"conts": s.conts, "locals": s.locals, "owners": s.owners, "routes": s.routes, "metas": s.metas} {
		k := make([]byte, m.KeySize())
		err := m.NextKey(nil, &k)
		if err == nil {
			t.Errorf("map %s still has entries after removing every container", name)
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("map %s: %v", name, err)
		}
	}
}

// TestRepair: orphans of a dead command and other generations' entries go;
// the containers' own entries stay (or come back).
func TestRepair(t *testing.T) {
	s := newTestSet(t)
	mk := func(id uint32, name, addr string) Container {
		a, _ := policy.ParseAddress(addr)
		return Container{ID: id, CgroupID: uint64(1000 + id), Spec: policy.Container{Name: name, Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated, Addresses: []policy.Address{a}}}
	}
	web, ghost, old := mk(1, "web", "10.77.0.1/24"), mk(2, "ghost", "10.77.0.2"), mk(3, "old", "10.77.0.3")
	if err := (Gen{s, 5}).Insert(web, ghost); err != nil {
		t.Fatal(err)
	}
	if err := (Gen{s, 4}).Insert(old); err != nil {
		t.Fatal(err)
	}
	// The ghost's add died before its metadata and container entry.
	s.metas.Delete(sockL3MetaKey{Gen: 5, Id: 2})
	s.conts.Delete(sockL3ContKey{Gen: 5, Cgid: 1002})
	// And one of web's entries was lost.
	s.owners.Delete(sockL3OwnerKey{Prefixlen: 160, Gen: 5, Addr: toAddr(netip.MustParseAddr("10.77.0.1"))})

	if err := (Gen{s, 5}).Repair([]Container{web}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		gen  uint32
		addr string
		want uint32
	}{{5, "10.77.0.1", 1}, {5, "10.77.0.2", 0}, {4, "10.77.0.3", 0}} {
		if id, _, _ := (Gen{s, tc.gen}).Owner(netip.MustParseAddr(tc.addr)); id != tc.want {
			t.Errorf("gen %d %s: owner %d, want %d", tc.gen, tc.addr, id, tc.want)
		}
	}
	var v sockL3Local
	if err := s.locals.Lookup(sockL3LocalKey{Gen: 5, Id: 2, Addr: toAddr(netip.MustParseAddr("10.77.0.2"))}, &v); err == nil {
		t.Error("the ghost's local entry survived repair")
	}
	if got, _ := (Gen{s, 4}).Containers(); len(got) != 0 {
		t.Errorf("generation 4 survived repair: %+v", got)
	}
}

// deleteGen removes the entries of containers cs from generation g, by
// computing their keys (no scan), concurrently, in parts.
func deleteGen(g Gen, cs []Container) error {
	s := g.s
	e := newEntries(cs)
	for _, c := range cs {
		if err := e.add(g.n, c); err != nil {
			return err
		}
	}
	parts := runtime.GOMAXPROCS(0)
	var steps []func() error
	steps = append(steps, delParts(s.conts, "l3_conts", e.contK, parts)...)
	steps = append(steps, delParts(s.metas, "l3_metas", e.metaK, parts)...)
	steps = append(steps, delParts(s.mcasts, "l3_mcasts", e.mcastK, parts)...)
	steps = append(steps, delParts(s.routes, "l3_routes", e.routeK, parts)...)
	steps = append(steps, delParts(s.locals, "l3_locals", e.localK, parts)...)
	steps = append(steps, delParts(s.owners, "l3_owners", e.ownerK, parts)...)
	steps = append(steps, delParts(s.owners, "l3_owners", e.partialK, parts)...)
	steps = append(steps, delParts(s.locals, "l3_locals", e.bcastK, parts)...)
	return concurrently(steps)
}

// readSlot reads what generation g holds, as a Scan of the other one does.
func readSlot(g Gen) (*Slot, error) {
	sl := g.NewSlot()
	return sl, g.other().Scan(sl, func(Meta) {})
}
