package maps

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l3iso/l3iso/pkg/policy"
)

// dumpGen returns every entry of generation gen in the policy maps, as
// "map key=value" lines (hex), sorted.
func dumpGen(t *testing.T, s *Set, gen uint32) []string {
	t.Helper()
	var out []string
	for name, m := range map[string]*ebpf.Map{"conts": s.conts, "locals": s.locals, "owners": s.owners, "routes": s.routes, "mcasts": s.mcasts, "metas": s.metas} {
		keys, off := genKeys(t, m, gen)
		for _, k := range keys {
			v := make([]byte, m.ValueSize())
			if err := m.Lookup(k, &v); err != nil {
				t.Fatal(err)
			}
			// The generation in the key is the one asked for: leave it out,
			// so that two generations can be compared.
			kk := append(append([]byte{}, k[:off]...), k[off+4:]...)
			out = append(out, fmt.Sprintf("%s %x=%x", name, kk, v))
		}
	}
	sort.Strings(out)
	return out
}

// TestWriteSlot: a generation written by difference over what it held
// (WriteSlot) holds exactly what Insert writes into an empty one, through a
// sequence of policies that add, remove, modify and reorder containers,
// reuse ids, move an IP between whole and port-range ownership, and share
// subnets between containers that stay and containers that go.
func TestWriteSlot(t *testing.T) {
	s := newTestSet(t)
	ref := newTestSet(t)

	mode := func(c Container, m policy.Mode) Container { c.Spec.Mode = m; return c }
	host := func(c Container) Container { c.Spec.Loopback = policy.LoopbackHost; return c }
	mcast := func(c Container, g ...string) Container {
		for _, p := range g {
			c.Spec.Multicast = append(c.Spec.Multicast, netip.MustParsePrefix(p))
		}
		return c
	}
	cgid := func(c Container, id uint64) Container { c.CgroupID = id; return c }
	var many []Container
	for i := uint32(100); i < 2600; i++ { // enough to be written in parts
		a := netip.AddrFrom4([4]byte{10, 80, byte(i >> 8), byte(i)})
		many = append(many, container(i, fmt.Sprintf("m%04d", i), a.String()))
	}
	with := func(cs ...Container) []Container { return append(append([]Container{}, many...), cs...) }
	policies := [][]Container{
		with(container(1, "web", "10.77.0.1/24", "fd77::1"), container(2, "db", "10.77.0.9:5432/tcp"), container(3, "db2", "10.77.0.9:6000-6099/tcp"), container(4, "api", "10.77.0.2/24")),
		// unchanged
		with(container(1, "web", "10.77.0.1/24", "fd77::1"), container(2, "db", "10.77.0.9:5432/tcp"), container(3, "db2", "10.77.0.9:6000-6099/tcp"), container(4, "api", "10.77.0.2/24")),
		// web goes (api stays on its subnet), db2 goes (db keeps the IP's
		// ports), a new container takes web's id, api gains an address
		with(container(1, "new", "10.78.0.1"), container(2, "db", "10.77.0.9:5432/tcp"), container(4, "api", "10.77.0.2/24", "fd77::2")),
		// db goes: 10.77.0.9 becomes a whole IP of new2; api changes mode,
		// loopback and groups
		with(cgid(container(1, "new", "10.78.0.1"), 5000), container(5, "new2", "10.77.0.9"), mcast(host(container(4, "api", "10.77.0.2/24", "fd77::2")), "239.1.0.0/16", "ff15::1/128")),
		// addresses reordered; a netns container
		with(container(1, "new", "10.78.0.1"), container(5, "new2", "10.77.0.9"), container(4, "api", "fd77::2", "10.77.0.2/24"), mode(container(6, "ns", "10.79.0.1/24"), policy.ModeNetns)),
		// half of the many go, others change
		append(append([]Container{}, many[:1200]...), container(3000, "x", "10.90.0.1:80/tcp"), container(3001, "y", "10.90.0.1:81/tcp")),
		// back to the first
		with(container(1, "web", "10.77.0.1/24", "fd77::1"), container(2, "db", "10.77.0.9:5432/tcp"), container(3, "db2", "10.77.0.9:6000-6099/tcp"), container(4, "api", "10.77.0.2/24")),
		// nothing
		nil,
		with(container(7, "z", "10.77.0.5/24")),
	}
	// Generation 1 is active (with something else in it); generation 0 is
	// written by difference, policy after policy.
	if err := (Gen{s, 1}).Insert(container(9, "active", "10.99.0.1/24")); err != nil {
		t.Fatal(err)
	}
	want1 := dumpGen(t, s, 1)
	for i, cs := range policies {
		sl, err := readSlot(Gen{s, 0})
		if err != nil {
			t.Fatal(err)
		}
		if err := (Gen{s, 0}).Write(sl, slices.Values(cs)); err != nil {
			t.Fatalf("policy %d: %v", i, err)
		}
		if err := (Gen{ref, 0}).Insert(cs...); err != nil {
			t.Fatal(err)
		}
		got, want := dumpGen(t, s, 0), dumpGen(t, ref, 0)
		if d := diffLines(got, want); d != "" {
			t.Errorf("policy %d: generation 0 differs from a fresh Insert:\n%s", i, d)
		}
		if d := diffLines(dumpGen(t, s, 1), want1); d != "" {
			t.Errorf("policy %d: WriteSlot touched the active generation:\n%s", i, d)
		}
		active, sl2 := 0, (Gen{s, 0}).NewSlot()
		err = (Gen{s, 1}).Scan(sl2, func(m Meta) {
			if m.Name() != "active" || !m.Is(container(9, "active", "10.99.0.1/24")) {
				t.Errorf("policy %d: ScanMetas: active container %q is not as inserted", i, m.Name())
			}
			active++
		})
		if err != nil || active != 1 || sl2.len() != len(cs) {
			t.Errorf("policy %d: ScanMetas: %d active, %d in the slot (want %d), %v", i, active, sl2.len(), len(cs), err)
		}
		if err := deleteGen(Gen{ref, 0}, cs); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompactMeta: compactMeta and expandMeta round-trip, and compact
// forms are equal exactly when the containers are.
func TestCompactMeta(t *testing.T) {
	a := container(3, "web", "10.77.0.1/24", "[fd77::9]:80-90/udp")
	a.Spec.Multicast = []netip.Prefix{netip.MustParsePrefix("239.1.0.0/16")}
	b := a
	b.Spec.Addresses = append([]policy.Address{}, a.Spec.Addresses...)
	b.Spec.Addresses[1].PortHi = 91
	for _, c := range []Container{a, b, container(4, "x", "10.1.1.1")} {
		v, err := metaOf(c)
		if err != nil {
			t.Fatal(err)
		}
		cb := compactMeta(nil, &v)
		back, n := expandMeta(append(cb, 1, 2, 3))
		if n != len(cb) || back != v {
			t.Errorf("%s: round trip: %d of %d bytes, equal %v", c.Spec.Name, n, len(cb), back == v)
		}
		if got := decodeMeta(c.ID, &back); got.Spec.Name != c.Spec.Name || len(got.Spec.Addresses) != len(c.Spec.Addresses) {
			t.Errorf("%s: decodes to %+v", c.Spec.Name, got)
		}
	}
	va, _ := metaOf(a)
	vb, _ := metaOf(b)
	if bytes.Equal(compactMeta(nil, &va), compactMeta(nil, &vb)) {
		t.Error("containers that differ in a port compact alike")
	}
}

func diffLines(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, l := range got {
		g[l] = true
	}
	for _, l := range want {
		w[l] = true
	}
	var d []string
	for _, l := range got {
		if !w[l] {
			d = append(d, "+ "+l)
		}
	}
	for _, l := range want {
		if !g[l] {
			d = append(d, "- "+l)
		}
	}
	if len(d) > 20 {
		d = append(d[:20], fmt.Sprintf("… %d more", len(d)-20))
	}
	var b bytes.Buffer
	for _, l := range d {
		b.WriteString(l + "\n")
	}
	return b.String()
}
