package maps

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/policy"
)

// pinnedSet makes fresh maps pinned in a private bpffs and opens them the
// way a command does.
func pinnedSet(t *testing.T) (*Set, string) {
	t.Helper()
	sockprobe.RequirePrivileged(t)
	rlimit.RemoveMemlock()
	dir := filepath.Join(sockprobe.NewBPFFS(t), "maps")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(dir); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenPinned(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func container(id uint32, name string, addrs ...string) Container {
	c := Container{ID: id, CgroupID: uint64(1000 + id), Spec: policy.Container{Name: name, Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated}}
	for _, a := range addrs {
		pa, err := policy.ParseAddress(a)
		if err != nil {
			panic(err)
		}
		c.Spec.Addresses = append(c.Spec.Addresses, pa)
	}
	return c
}

// TestIndex: the index answers names and free ids, is built complete, and
// remembers the layout check.
func TestIndex(t *testing.T) {
	s, dir := pinnedSet(t)
	if s.Index() != nil {
		t.Fatal("fresh pins have an index")
	}
	web, db := container(1, "web", "10.77.0.1"), container(3, "db", "10.77.0.3")
	if err := s.BuildIndex([]Container{web, db}); err != nil {
		t.Fatal(err)
	}
	x := s.Index()
	if x == nil {
		t.Fatal("no index after BuildIndex")
	}
	lookup := func(name string) uint32 {
		t.Helper()
		id, err := x.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	free := func(n int) []uint32 {
		t.Helper()
		ids, err := x.FreeIDs(n)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if lookup("web") != 1 || lookup("db") != 3 || lookup("nope") != 0 || lookup("a-name-far-too-long-for-any-container") != 0 {
		t.Errorf("Lookup: web %d, db %d, nope %d", lookup("web"), lookup("db"), lookup("nope"))
	}
	if got := free(3); !slices.Equal(got, []uint32{2, 4, 5}) {
		t.Errorf("FreeIDs(3) = %v, want [2 4 5]", got)
	}
	api := container(2, "api", "10.77.0.2")
	if err := x.Add(api); err != nil {
		t.Fatal(err)
	}
	if lookup("api") != 2 || free(1)[0] != 4 {
		t.Errorf("after Add: api %d, first free %d", lookup("api"), free(1)[0])
	}
	if err := x.Remove(web, api); err != nil {
		t.Fatal(err)
	}
	if lookup("web") != 0 || lookup("api") != 0 || lookup("db") != 3 || free(1)[0] != 1 {
		t.Errorf("after Remove: web %d api %d db %d, first free %d", lookup("web"), lookup("api"), lookup("db"), free(1)[0])
	}
	// Ids up to the last one, and no more.
	if _, err := x.FreeIDs(MaxContainers); err == nil {
		t.Error("FreeIDs gave more ids than there are")
	}
	if got := free(MaxContainers - 1); got[len(got)-1] != uint32(MaxContainers) {
		t.Errorf("the last free id is %d, want %d", got[len(got)-1], MaxContainers)
	}
	// A rebuild is exact: stale names go.
	if err := x.Add(container(9, "stale", "10.77.0.9")); err != nil {
		t.Fatal(err)
	}
	if err := s.BuildIndex([]Container{web}); err != nil {
		t.Fatal(err)
	}
	if lookup("stale") != 0 || lookup("db") != 0 || lookup("web") != 1 || !slices.Equal(free(2), []uint32{2, 3}) {
		t.Errorf("after the rebuild: stale %d db %d web %d free %v", lookup("stale"), lookup("db"), lookup("web"), free(2))
	}

	// Reopened, the pins pass the layout check without the object being
	// parsed: the stamp is there; a wrong stamp makes OpenPinned check again.
	s2, err := OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Index() == nil || !s2.Index().stamped() || lookupIn(t, s2.Index(), "web") != 1 {
		t.Error("reopened: no index, or not stamped, or web missing")
	}
	var bogus idBitmap
	if err := s2.Index().ids.Update(uint32(1), &bogus, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s3, err := OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !s3.Index().stamped() {
		t.Error("OpenPinned did not stamp the pins again after checking them")
	}
	s3.Close()

	// An index of another shape is no index (the next exclusive open
	// builds one).
	os.Remove(filepath.Join(dir, namesPin))
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, namesPin)); err != nil {
		t.Fatal(err)
	}
	s4, err := OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s4.Close()
	if s4.Index() != nil {
		t.Error("an index of another shape was taken")
	}
	if err := s4.BuildIndex([]Container{db}); err != nil {
		t.Fatal(err)
	}
	if lookupIn(t, s4.Index(), "db") != 3 {
		t.Error("the rebuilt index lacks db")
	}
}

func lookupIn(t *testing.T, x *Index, name string) uint32 {
	t.Helper()
	id, err := x.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestInsertNextRemoveSole: InsertNext writes what Insert writes; Remove
// leaves the markers of a subnet others are on; DeleteGen empties a
// generation. (That a container sharing an IP by ports is never removed
// without the others known is the planner's: pkg/control, TestPlanDel.)
func TestInsertNextRemoveSole(t *testing.T) {
	s := newTestSet(t)
	var cs []Container
	for i := uint32(1); i <= 3000; i++ { // enough to be written in parts
		a := netip.AddrFrom4([4]byte{10, 80, byte(i >> 8), byte(i)})
		cs = append(cs, container(i, "c"+strings.ReplaceAll(a.String(), ".", "-"), a.String())) // a valid name (policy.ValidateName)
	}
	web := container(4001, "web", "10.77.0.1/24", "fd77::1")
	web2 := container(4002, "web2", "10.77.0.2/24")
	cs = append(cs, web, web2)
	if err := (Gen{s, 5}).Insert(cs...); err != nil {
		t.Fatal(err)
	}
	if err := (Gen{s, 6}).Write(Gen{s, 6}.NewSlot(), slices.Values(cs)); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.Map{"conts": s.conts, "locals": s.locals, "owners": s.owners, "routes": s.routes, "metas": s.metas} {
		n5, n6 := countGen(t, m, 5), countGen(t, m, 6)
		if n5 == 0 || n5 != n6 {
			t.Errorf("map %s: %d entries in generation 5 (Insert), %d in 6 (InsertNext)", name, n5, n6)
		}
	}
	got, err := (Gen{s, 6}).Containers()
	if err != nil || len(got) != len(cs) {
		t.Fatalf("Containers(6): %d, %v", len(got), err)
	}
	// web goes alone: the subnet's broadcast marker stays for web2.
	bcast := netip.MustParseAddr("10.77.0.255")
	if err := (Gen{s, 6}).Remove(web, Shared{Broadcasts: []netip.Addr{bcast}}); err != nil {
		t.Fatal(err)
	}
	if id, _, _ := (Gen{s, 6}).Owner(netip.MustParseAddr("10.77.0.1")); id != 0 {
		t.Errorf("10.77.0.1 still owned by %d after Remove", id)
	}
	if in, _ := (Gen{s, 6}).BroadcastInUse(bcast); !in {
		t.Error("Remove dropped the broadcast marker web2 needs")
	}
	if _, ok, _ := (Gen{s, 6}).Container(web.ID); ok {
		t.Error("web's metadata survived Remove")
	}
	if k, ok, _ := (Gen{s, 6}).Container(web2.ID); !ok || k.Spec.Name != "web2" {
		t.Error("Meta(web2) lost")
	}
	if err := deleteGen(Gen{s, 6}, cs); err != nil {
		t.Fatal(err)
	}
	if err := deleteGen(Gen{s, 5}, cs); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.Map{"conts": s.conts, "locals": s.locals, "owners": s.owners, "routes": s.routes, "metas": s.metas} {
		k := make([]byte, m.KeySize())
		if err := m.NextKey(nil, &k); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Errorf("map %s not empty after DeleteGen: %v", name, err)
		}
	}
}

// genKeys returns the keys of generation gen in a policy map, and where
// the generation is in them: every key has it in its first 4 bytes, or
// after a 4-byte prefix length in the LPM tries.
func genKeys(t *testing.T, m *ebpf.Map, gen uint32) (keys [][]byte, off int) {
	t.Helper()
	if m.Type() == ebpf.LPMTrie {
		off = 4
	}
	var prev []byte
	for {
		k := make([]byte, m.KeySize())
		var err error
		if prev == nil {
			err = m.NextKey(nil, &k)
		} else {
			err = m.NextKey(prev, &k)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return keys, off
		}
		if err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint32(k[off:]) == gen {
			keys = append(keys, k)
		}
		prev = k
	}
}

// countGen counts the entries of generation gen in a policy map.
func countGen(t *testing.T, m *ebpf.Map, gen uint32) int {
	t.Helper()
	keys, _ := genKeys(t, m, gen)
	return len(keys)
}

// TestLongName: a name of the policy's longest (32 characters) is stored,
// indexed and read back (l3_metas and l3_names hold it without a NUL); one
// the policy refuses is stored nowhere.
func TestLongName(t *testing.T) {
	if NameLen < policy.MaxNameLen {
		t.Fatalf("l3_metas holds names of %d bytes, the policy allows %d", NameLen, policy.MaxNameLen)
	}
	s, _ := pinnedSet(t)
	long := container(1, strings.Repeat("x", policy.MaxNameLen), "10.77.0.1")
	if err := s.BuildIndex([]Container{long}); err != nil {
		t.Fatal(err)
	}
	g := Gen{s, 0}
	if err := g.Insert(long); err != nil {
		t.Fatal(err)
	}
	got, err := g.Containers()
	if err != nil || len(got) != 1 || got[0].Spec.Name != long.Spec.Name {
		t.Fatalf("Containers: %+v, %v", got, err)
	}
	if id, err := s.Index().Lookup(long.Spec.Name); err != nil || id != 1 {
		t.Errorf("Lookup(%d characters) = %d, %v", len(long.Spec.Name), id, err)
	}
	for _, bad := range []string{strings.Repeat("x", policy.MaxNameLen+1), "-web", "Web"} {
		if err := g.Insert(container(2, bad, "10.77.0.2")); err == nil {
			t.Errorf("Insert took the name %q", bad)
		}
		if id, err := s.Index().Lookup(bad); err != nil || id != 0 {
			t.Errorf("Lookup(%q) = %d, %v", bad, id, err)
		}
	}
}
