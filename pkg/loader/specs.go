package loader

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/l3iso/l3iso/pkg/maps"
)

// The program collections l3iso loads. bpf2go embeds the objects in
// pkg/maps (its generated types are the maps' layouts: maps.Object); the
// programs are the loader's.

// SocketSpec returns the collection spec of the socket programs
// (bpf/sock.c): the cgroup programs, attached once at the cgroup root, and
// sk_lookup. It declares every map.
func SocketSpec() (*ebpf.CollectionSpec, error) {
	spec, err := maps.LoadObject(maps.SocketObject)
	if err != nil {
		return nil, fmt.Errorf("load embedded socket programs: %w", err)
	}
	return spec, nil
}

// TCSpec returns the collection spec of the TC programs (bpf/tc.c). It
// declares the same maps as SocketSpec: load it against the pinned ones.
func TCSpec() (*ebpf.CollectionSpec, error) {
	spec, err := maps.LoadObject(maps.TCObject)
	if err != nil {
		return nil, fmt.Errorf("load embedded TC programs: %w", err)
	}
	return spec, nil
}

// VariantSpec returns the L3ISO_VARIANT build of the socket programs:
// the same behaviour in other instructions, which upgrade tests install
// as the older binary `up` must upgrade in place.
func VariantSpec() (*ebpf.CollectionSpec, error) { return maps.LoadObject(maps.SocketVariantObject) }

// TCVariantSpec returns the L3ISO_VARIANT build of the TC programs, for
// the same upgrade tests.
func TCVariantSpec() (*ebpf.CollectionSpec, error) { return maps.LoadObject(maps.TCVariantObject) }

// socketSpec is the program collection `up` installs (a test swaps in an
// "older binary").
var socketSpec = SocketSpec

// tcSpec is the TC program collection `up` installs (a test swaps in an
// "older binary").
var tcSpec = TCSpec

// PurgeListeners removes containers ids from the listener registries
// (maps.Set.PurgeListeners), loading l3_purge (bpf/tc.c) against the
// pinned maps if there is anything to purge.
func (st *State) PurgeListeners(ids ...uint32) error {
	return st.Maps.PurgeListeners(st.purgeProgram, ids...)
}

// purgeProgram loads l3_purge against the installation's maps.
func (st *State) purgeProgram() (*ebpf.Program, error) {
	spec, err := TCSpec()
	if err != nil {
		return nil, err
	}
	var objs struct {
		Purge *ebpf.Program `ebpf:"l3_purge"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: st.Maps.Replacements()}); err != nil {
		return nil, err
	}
	return objs.Purge, nil
}
