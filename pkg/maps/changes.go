package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
)

// l3_changes is user space's record of the changes made to an installation
// (no program reads it), pinned beside the programs' maps like the index:
// how many changes l3iso commands made since `up` installed it, how many
// of them were applies that switched the policy (the apply generation), and
// when the last of each happened. It lives and dies with the pins: `down`
// removes it with them, and a reboot with the bpffs. Writers hold the
// installation's exclusive lock (pkg/audit records a change before the
// command releases it); readers (`l3iso metrics`) read the one value.
const changesPin = "l3_changes"

type changesVal struct {
	Count       uint64 // changes since up
	LastNs      uint64 // Unix time of the last, in ns
	Applies     uint64 // applies that switched the policy
	LastApplyNs uint64
}

func changesSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: changesPin, Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(unsafe.Sizeof(changesVal{})), MaxEntries: 1}
}

// Changes is an installation's record of changes (see l3_changes).
type Changes struct {
	Count     uint64    // changes since `up` installed it (up counts as one)
	Last      time.Time // the last change; zero if none was recorded
	Applies   uint64    // applies that switched the policy: the apply generation
	LastApply time.Time // zero if no apply was recorded
}

func unixNs(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns)).UTC()
}

// RecordChange counts one change, made at time at, in the record pinned in
// dir (an installation's maps directory), creating the record if the
// installation has none yet; apply says it was an apply that switched the
// policy. An installation that is gone (its maps directory removed by
// `down`) has nothing to count in: the zero Changes and no error.
func RecordChange(dir string, apply bool, at time.Time) (Changes, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return Changes{}, nil
	}
	pin := filepath.Join(dir, changesPin)
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		if m, err = ebpf.NewMap(changesSpec()); err == nil {
			if err = m.Pin(pin); err != nil {
				m.Close()
			}
		}
	}
	if err != nil {
		return Changes{}, fmt.Errorf("open map %s: %w", changesPin, err)
	}
	defer m.Close()
	if err := changesSpec().Compatible(m); err != nil {
		return Changes{}, fmt.Errorf("map %s: %w", changesPin, err)
	}
	var v changesVal
	if err := m.Lookup(uint32(0), &v); err != nil {
		return Changes{}, fmt.Errorf("read map %s: %w", changesPin, err)
	}
	v.Count++
	v.LastNs = uint64(at.UnixNano())
	if apply {
		v.Applies++
		v.LastApplyNs = v.LastNs
	}
	if err := m.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return Changes{}, fmt.Errorf("write map %s: %w", changesPin, err)
	}
	return decodeChanges(v), nil
}

// ReadChanges reads the record pinned in dir; the zero Changes if there is
// none (an installation no command changed since an l3iso without the
// record, or none at all).
func ReadChanges(dir string) (Changes, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, changesPin), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return Changes{}, nil
	}
	if err != nil {
		return Changes{}, fmt.Errorf("open map %s: %w", changesPin, err)
	}
	defer m.Close()
	var v changesVal
	if err := m.Lookup(uint32(0), &v); err != nil {
		return Changes{}, fmt.Errorf("read map %s: %w", changesPin, err)
	}
	return decodeChanges(v), nil
}

func decodeChanges(v changesVal) Changes {
	return Changes{Count: v.Count, Last: unixNs(v.LastNs), Applies: v.Applies, LastApply: unixNs(v.LastApplyNs)}
}

// MapUse is how full one pinned map is.
type MapUse struct {
	Name       string // the pin name (l3_owners)
	What       string // what its entries are, for people
	Entries    int
	MaxEntries int
}

// Occupancy counts the entries of the maps that fill up as containers,
// addresses and sockets come (by walking their keys: the kernel keeps no
// count a reader can ask for), against their capacity. The ownership maps
// hold both generations' entries during an apply, and the inactive
// generation's between applies (slot.go).
func (s *Set) Occupancy() ([]MapUse, error) {
	out := []MapUse{}
	for _, m := range []struct {
		name, what string
		m          *ebpf.Map
	}{
		{"l3_conts", "container cgroups (both generations)", s.conts},
		{"l3_metas", "container records (both generations)", s.metas},
		{"l3_owners", "address ownership entries (both generations)", s.owners},
		{"l3_locals", "own and derivative addresses (both generations)", s.locals},
		{"l3_delivs", "netns container addresses", s.delivs},
		{"l3_listen", "listener registry pages", s.listen},
		{"l3_binds", "shared containers' listening sockets", s.binds},
	} {
		n, err := countKeys(m.m)
		if err != nil {
			return nil, fmt.Errorf("count the entries of map %s: %w", m.name, err)
		}
		out = append(out, MapUse{Name: m.name, What: m.what, Entries: n, MaxEntries: int(m.m.MaxEntries())})
	}
	return out, nil
}

// countKeys walks m's keys. A key deleted under the walk makes a hash
// map's next key start over: the walk stops at the capacity.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil: the first key
	n := 0
	for n <= int(m.MaxEntries()) {
		if err := m.NextKey(cur, next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, err
		}
		n++
		copy(key, next)
		cur = key
	}
	return n, nil
}
