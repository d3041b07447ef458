// Package maps owns the layout of every BPF map l3iso pins. Everything else
// uses its typed API: containers and netip addresses in, never raw bytes.
//
// The layouts come from bpf/l3iso.h through bpf2go; this package turns a
// container of the policy into map entries and back. Policy maps are keyed by
// a generation number: a container operation writes into the active
// generation, a policy push builds the next one and flips the generation
// word of l3_config (see ARCHITECTURE.md, "Atomic pushes").
package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Limits shared with the BPF programs (bpf/l3iso.h).
const (
	MaxContainers = int(sockL3LimitsL3MAX_CONTAINERS)
	NameLen       = int(sockL3LimitsL3NAME_LEN)
	PathLen       = int(sockL3LimitsL3PATH_LEN)
)

// Set is the collection of maps the socket (and, later, TC) programs share.
type Set struct {
	cfg      *ebpf.Map // [0] = Config, the active generation, the broadcast filter
	conts    *ebpf.Map // cgroup id → container
	locals   *ebpf.Map // (container, address) → own/derivative kind
	owners   *ebpf.Map // LPM (address, proto, port) → owner
	routes   *ebpf.Map // LPM (container, subnet) → source address
	mcasts   *ebpf.Map // LPM (container, group) → allowed
	metas    *ebpf.Map // (gen, id) → the operator's view of a container
	counters *ebpf.Map // per-CPU counters per container id
	skStore  *ebpf.Map // per-socket flags
	delivs   *ebpf.Map // netns container address → its veth and MACs
	ports    *ebpf.Map // host-side veth ifindex → container id
	listen   *ebpf.Map // (group or broadcast, port, page) → listening containers
	lsum     *ebpf.Map // (group or broadcast, port) → the pages of Listen that hold anybody
	quota    *ebpf.Map // container id → its sockets' registrations, and the id's epoch
	binds    *ebpf.Map // (container, proto, kind, port, address) → its listening socket
	sports   *ebpf.Map // TCP and UDP shadow ports → container, application port
	hostUDP  *ebpf.Map // UDP port → the host's wildcard sockets on it
	uWild    *ebpf.Map // UDP port → the containers' wildcard sockets on it
	scratch  *ebpf.Map // per CPU: l3iso's own socket lookups under way
	socks    *ebpf.Map // l3_binds key → listening socket, for l3_sk_lookup
	events   *ebpf.Map // ring buffer: denials and drops (struct l3_event), for `monitor`
	eBucket  *ebpf.Map // per container and CPU: the events' rate limit
	ofilter  *ebpf.Map // IPs no container owns, surely (hotline.go)
	xuplinks *ebpf.Map // the extra uplinks' names (Config.ExtraUplinks)

	cfgMem []byte // l3_config's value, mmapped (hotline.go)
	ofMem  []byte // l3_ofilter's value, mmapped (hotline.go)

	dir   string // where the maps are pinned ("" for New's)
	index *Index // user space's index (index.go); nil until built
}

// The pin names under <bpffs>/maps. Changing one breaks upgrades.
func (s *Set) byName() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		"l3_config": &s.cfg, "l3_conts": &s.conts,
		"l3_locals": &s.locals, "l3_owners": &s.owners, "l3_routes": &s.routes,
		"l3_mcasts": &s.mcasts, "l3_metas": &s.metas, "l3_counters": &s.counters,
		"l3_skstore": &s.skStore, "l3_delivs": &s.delivs, "l3_ports": &s.ports,
		"l3_listen": &s.listen, "l3_lsum": &s.lsum,
		"l3_quota": &s.quota, "l3_binds": &s.binds, "l3_sports": &s.sports,
		"l3_hostudp": &s.hostUDP, "l3_uwild": &s.uWild, "l3_scratch": &s.scratch, "l3_socks": &s.socks,
		"l3_events": &s.events, "l3_ebucket": &s.eBucket, "l3_ofilter": &s.ofilter,
		"l3_xuplinks": &s.xuplinks,
	}
}

// Object is one of the BPF objects bpf2go builds from bpf/ into this
// package (gen.go). Their programs are the loader's (loader.SocketSpec,
// loader.TCSpec); this package uses the maps they declare.
type Object int

// The embedded objects.
const (
	SocketObject        Object = iota // bpf/sock.c: the socket programs; it declares every map
	TCObject                          // bpf/tc.c: the TC programs, over the same maps
	SocketVariantObject               // bpf/sock.c built with L3ISO_VARIANT: other instructions, for upgrade tests
	TCVariantObject                   // bpf/tc.c built with L3ISO_VARIANT
)

// LoadObject parses embedded object o.
func LoadObject(o Object) (*ebpf.CollectionSpec, error) {
	switch o {
	case SocketObject:
		return loadSock()
	case TCObject:
		return loadTc()
	case SocketVariantObject:
		return loadSockvariant()
	case TCVariantObject:
		return loadTcvariant()
	}
	return nil, fmt.Errorf("no embedded BPF object %d", int(o))
}

// mapSpecs is the spec that declares the maps: the socket programs'.
func mapSpecs() (*ebpf.CollectionSpec, error) {
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("load embedded socket programs: %w", err)
	}
	return spec, nil
}

// PinMissing creates and pins, in dir, the maps this binary has and the
// pinned installation lacks (maps an older l3iso did not know), and returns
// their names. Existing pins are left alone.
func PinMissing(dir string) ([]string, error) {
	spec, err := mapSpecs()
	if err != nil {
		return nil, err
	}
	var added []string
	for name := range (&Set{}).byName() {
		pin := filepath.Join(dir, name)
		if _, err := os.Stat(pin); err == nil || !errors.Is(err, os.ErrNotExist) {
			continue
		}
		ms, ok := spec.Maps[name]
		if !ok {
			return added, fmt.Errorf("embedded programs have no map %s: rebuild with `make generate`", name)
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return added, fmt.Errorf("create map %s: %w", name, err)
		}
		err = m.Pin(pin)
		m.Close()
		if err != nil {
			return added, fmt.Errorf("pin map %s: %w", name, err)
		}
		added = append(added, name)
	}
	return added, nil
}

// New creates fresh, unpinned maps from the embedded spec. Their active
// generation is the first (l3_config is all zeros).
func New() (*Set, error) {
	spec, err := mapSpecs()
	if err != nil {
		return nil, err
	}
	s := &Set{}
	for name, dst := range s.byName() {
		ms, ok := spec.Maps[name]
		if !ok {
			s.Close()
			return nil, fmt.Errorf("embedded programs have no map %s: rebuild with `make generate`", name)
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		*dst = m
	}
	return s, nil
}

// ErrIncompatible says the pins were made by an l3iso whose map layout
// differs from this binary's.
var ErrIncompatible = errors.New("pinned maps were made by an incompatible version of l3iso")

// OpenPinned opens the maps pinned in dir and checks that their layout is
// the one this binary was built with. A map whose pin is missing is taken
// from missing(name) when that returns one (the loader passes the map the
// running programs use): the Set owns it then.
//
// Checking the layouts needs the embedded object parsed, which costs more
// than the rest of a `container add`: once the pins passed the check, the
// index remembers which object they passed it against (index.go), and later
// opens by a binary with the same object skip it.
func OpenPinned(dir string, missing ...func(name string) *ebpf.Map) (*Set, error) {
	s := &Set{dir: dir}
	for name, dst := range s.byName() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		for _, f := range missing {
			if m == nil && errors.Is(err, os.ErrNotExist) {
				if m = f(name); m != nil {
					err = nil
				}
			}
		}
		if err != nil {
			s.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("map %s is not pinned in %s: %w", name, dir, os.ErrNotExist)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*dst = m
	}
	s.index = openIndex(dir)
	if s.index.stamped() {
		return s, nil
	}
	spec, err := mapSpecs()
	if err != nil {
		s.Close()
		return nil, err
	}
	for name, m := range s.byName() {
		if err := spec.Maps[name].Compatible(*m); err != nil {
			s.Close()
			return nil, fmt.Errorf("%w (map %s: %v): run `l3iso down` to remove the old installation (it deletes every container), then `l3iso up`", ErrIncompatible, name, err)
		}
	}
	s.index.stamp()
	return s, nil
}

// PinNames are the pin names of the maps, sorted.
func PinNames() []string {
	var out []string
	for name := range (&Set{}).byName() {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Pin pins every map into dir (which must exist).
func (s *Set) Pin(dir string) error {
	for name, m := range s.byName() {
		if err := (*m).Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	return nil
}

// Replacements maps the programs' map names to these maps, for loading
// programs against pinned state (ebpf.CollectionOptions.MapReplacements).
func (s *Set) Replacements() map[string]*ebpf.Map {
	r := map[string]*ebpf.Map{}
	for name, m := range s.byName() {
		r[name] = *m
	}
	return r
}

// EventReader opens a reader of l3_events, the ring buffer of denials and
// drops (events.go). One reader at a time (pkg/events locks).
func (s *Set) EventReader() (*ringbuf.Reader, error) { return ringbuf.NewReader(s.events) }

// Close releases the file descriptors (pins stay).
func (s *Set) Close() error {
	if s.ofMem != nil {
		unix.Munmap(s.ofMem)
		s.ofMem = nil
	}
	if s.cfgMem != nil {
		unix.Munmap(s.cfgMem)
		s.cfgMem = nil
	}
	s.index.close()
	s.index = nil
	for _, m := range s.byName() {
		if *m != nil {
			(*m).Close()
			*m = nil
		}
	}
	return nil
}

// ------------------------------------------------------------ addresses

func toAddr(a netip.Addr) sockL3Addr {
	b := a.As16() // IPv4 becomes IPv4-mapped
	var r sockL3Addr
	for i := range r.W {
		r.W[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return r
}

func fromAddr(r sockL3Addr) netip.Addr {
	var b [16]byte
	for i, w := range r.W {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

// bits16 is the prefix length of p in the 128-bit (mapped) form.
func bits16(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 96 + p.Bits()
	}
	return p.Bits()
}

func prefix16(addr netip.Addr, bits int) netip.Prefix {
	if addr.Is4() {
		return netip.PrefixFrom(addr, bits-96)
	}
	return netip.PrefixFrom(addr, bits)
}

// Loopback4 and Loopback6 are a container's private loopback addresses:
// 127.128.0.0/9 and fd6c:3369:736f::/48 plus its id (bpf/l3iso.h).
func Loopback4(id uint32) netip.Addr {
	v := uint32(0x7f800000) + id
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Loopback6 is the IPv6 private loopback address of container id.
func Loopback6(id uint32) netip.Addr {
	b := [16]byte{0xfd, 0x6c, 0x33, 0x69, 0x73, 0x6f}
	binary.BigEndian.PutUint32(b[12:], id)
	return netip.AddrFrom16(b)
}

// HostAddr4 and HostAddr6 are the host's own addresses toward shared
// containers (bpf/l3iso.h, L3_HOST4): a host socket that talks to a shared
// container's address from no address of its own uses them, which no
// container can bind, send from, or reach the host's loopback through.
// HostAddr6 is configured on lo while l3iso is up; HostAddr4 lies in
// 127.0.0.0/8, local on lo anyway.
var (
	HostAddr4 = netip.MustParseAddr("127.255.255.254")
	HostAddr6 = netip.MustParseAddr("fd6c:3369:736f::ffff:fffe")
)

// Loopback6Prefix is the range Loopback6 draws from.
var Loopback6Prefix = netip.MustParsePrefix("fd6c:3369:736f::/48")

// Loopback4Prefix is the range Loopback4 draws from.
var Loopback4Prefix = netip.MustParsePrefix("127.128.0.0/9")

// portPrefixes splits [lo, hi] into aligned prefix blocks: (start, bits).
func portPrefixes(lo, hi uint16) [][2]int {
	var out [][2]int
	start := int(lo)
	for start <= int(hi) {
		size := 1
		for size < 65536 && start%(size*2) == 0 && start+size*2-1 <= int(hi) {
			size *= 2
		}
		bits := 16
		for s := size; s > 1; s >>= 1 {
			bits--
		}
		out = append(out, [2]int{start, bits})
		start += size
	}
	return out
}
