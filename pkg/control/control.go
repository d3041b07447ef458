// Package control is l3iso's control plane: it turns operator requests
// (container add/del, apply, down) into cgroups, map entries and host
// addresses, in the order that keeps DESIGN.md's rules true at every
// instant — even when the process dies half way.
//
// Ordering rules:
//   - an address is owned in the maps before it is configured on the host,
//     and unconfigured before it leaves the maps (rule 9, both ways);
//   - a container's processes are killed before its cgroup stops being a
//     container, so they never run as unconfined host processes;
//   - `apply` builds the next policy generation beside the active one and
//     switches with one map write.
//
// Every mutating call first reconciles: it finishes what a crashed call left
// (missing host addresses, orphan cgroups, entries of an unused generation).
package control

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// ErrNotFound says a named container does not exist.
var ErrNotFound = errors.New("no such container")

// Control is an open installation plus the operations on it.
type Control struct {
	st  *loader.State
	gen uint32
	cur []maps.Container // containers of the active generation, by name

	loIndex, upIndex int  // resolved once per command
	deliveryReady    bool // ensureDelivery ran in this command
}

// Open opens the installation pinned at bpffs. exclusive is for commands
// that change state; they also reconcile what a crash may have left.
func Open(bpffs string, exclusive bool) (*Control, error) {
	st, err := loader.Open(bpffs, exclusive)
	if err != nil {
		return nil, err
	}
	c := &Control{st: st}
	if err := c.load(); err != nil {
		st.Close()
		return nil, err
	}
	if exclusive && st.Config.Dirty {
		if err := c.reconcile(); err != nil {
			st.Close()
			return nil, fmt.Errorf("repair state left by an interrupted l3iso: %w", err)
		}
	}
	return c, nil
}

// OpenForDown opens the installation for Down, exclusively and without the
// repair Open does: whatever an interrupted command left, Down removes it
// anyway, and a repair that cannot finish (programs of another version not
// pinned, an uplink that is gone) must not keep anyone from removing l3iso.
func OpenForDown(bpffs string) (*Control, error) {
	st, err := loader.Open(bpffs, true)
	if err != nil {
		return nil, err
	}
	c := &Control{st: st}
	if err := c.load(); err != nil {
		st.Close()
		return nil, err
	}
	return c, nil
}

// begin marks the installation dirty: should this process die before end,
// the next changing command reconciles.
func (c *Control) begin() error {
	if c.st.Config.Dirty {
		return nil
	}
	cfg := c.st.Config
	cfg.Dirty = true
	if err := c.st.Maps.SetConfig(cfg); err != nil {
		return err
	}
	c.st.Config = cfg
	return nil
}

// end clears the dirty mark after a command finished cleanly.
func (c *Control) end() error {
	if !c.st.Config.Dirty {
		return nil
	}
	cfg := c.st.Config
	cfg.Dirty = false
	if err := c.st.Maps.SetConfig(cfg); err != nil {
		return err
	}
	c.st.Config = cfg
	return nil
}

// FromState wraps a State that `loader.Up` returned (it holds the lock).
func FromState(st *loader.State) (*Control, error) {
	c := &Control{st: st}
	if err := c.load(); err != nil {
		return nil, err
	}
	if err := c.reconcile(); err != nil {
		return nil, err
	}
	return c, c.end()
}

// Close releases the installation.
func (c *Control) Close() error { return c.st.Close() }

// State is the underlying installation.
func (c *Control) State() *loader.State { return c.st }

func (c *Control) load() error {
	gen, err := c.st.Maps.ActiveGen()
	if err != nil {
		return err
	}
	cur, err := c.st.Maps.Containers(gen)
	if err != nil {
		return err
	}
	c.gen, c.cur = gen, cur
	return nil
}

// Containers lists the containers, by name.
func (c *Control) Containers() []maps.Container { return c.cur }

// Find returns the container called name.
func (c *Control) Find(name string) (maps.Container, error) {
	for _, k := range c.cur {
		if k.Spec.Name == name {
			return k, nil
		}
	}
	return maps.Container{}, fmt.Errorf("%w %q: see `l3iso container list`", ErrNotFound, name)
}

// CgroupPath is the cgroup directory of container name.
func (c *Control) CgroupPath(name string) string { return c.st.ContainerCgroup(name) }

// reconcile rolls a crashed operation forward or back. l3_metas is the
// source of truth: a container is there (then everything it needs is made
// to exist) or it is not (then nothing of it may remain).
func (c *Control) reconcile() error {
	// A cgroup without a container is an add that died before its
	// metadata was written, or a delete that died after: remove it.
	known := map[string]bool{}
	for _, k := range c.cur {
		known[k.Spec.Name] = true
	}
	dir := filepath.Join(c.st.Config.CgroupRoot, loader.ContainersDir)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() && !known[e.Name()] {
			if err := cgroup.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	// Containers whose cgroup vanished (removed by hand): recreate it and
	// take its new id.
	for i, k := range c.cur {
		id, err := cgroup.ID(c.CgroupPath(k.Spec.Name))
		if err == nil && id == k.CgroupID {
			continue
		}
		path := c.CgroupPath(k.Spec.Name)
		if err := cgroup.Create(path); err != nil {
			return err
		}
		if c.cur[i].CgroupID, err = cgroup.ID(path); err != nil {
			return err
		}
	}
	// Map entries: exactly those of the active generation's containers
	// (other generations' and orphaned entries go).
	if err := c.st.Maps.Repair(c.gen, c.cur); err != nil {
		return err
	}
	// Host state: what the policy needs and the host lacks is added;
	// l3iso's routes the policy does not need are removed.
	if err := c.repairHost(); err != nil {
		return err
	}
	// netns containers: namespaces, veths, TC links, delivery mode.
	if err := c.repairNetns(); err != nil {
		return err
	}
	return c.end()
}

func (c *Control) without(name string) []maps.Container {
	var out []maps.Container
	for _, k := range c.cur {
		if k.Spec.Name != name {
			out = append(out, k)
		}
	}
	return out
}

func (c *Control) policyOf(cs []maps.Container) *policy.Policy {
	p := &policy.Policy{}
	for _, k := range cs {
		p.Containers = append(p.Containers, k.Spec)
	}
	return p
}

// Policy returns the active policy.
func (c *Control) Policy() *policy.Policy { return c.policyOf(c.cur) }

func freeIDs(used []maps.Container, n int) ([]uint32, error) {
	taken := map[uint32]bool{}
	for _, k := range used {
		taken[k.ID] = true
	}
	var out []uint32
	for id := uint32(1); len(out) < n && int(id) <= maps.MaxContainers; id++ {
		if !taken[id] {
			out = append(out, id)
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("too many containers: l3iso supports %d; delete some first", maps.MaxContainers)
	}
	return out, nil
}

// Add creates a container: its cgroup, its ownership in the maps, then its
// addresses on the host (rule 9). On any error everything it made is undone.
func (c *Control) Add(spec policy.Container) (maps.Container, error) {
	if spec.Mode == "" {
		spec.Mode = policy.ModeShared
	}
	if spec.Loopback == "" {
		spec.Loopback = policy.LoopbackIsolated
	}
	if err := checkModes(spec); err != nil {
		return maps.Container{}, err
	}
	if _, err := c.Find(spec.Name); err == nil {
		return maps.Container{}, fmt.Errorf("container %q already exists: delete it first or choose another name", spec.Name)
	}
	p := c.policyOf(append(append([]maps.Container{}, c.cur...), maps.Container{Spec: spec}))
	if err := p.Validate(); err != nil {
		return maps.Container{}, err
	}
	if err := c.checkHostConflicts(c.cur, []policy.Container{spec}); err != nil {
		return maps.Container{}, err
	}
	ids, err := freeIDs(c.cur, 1)
	if err != nil {
		return maps.Container{}, err
	}
	k := maps.Container{ID: ids[0], Spec: spec}
	if err := c.begin(); err != nil {
		return maps.Container{}, err
	}

	var undo []func()
	fail := func(err error) (maps.Container, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return maps.Container{}, err
	}
	path := c.CgroupPath(spec.Name)
	if err := cgroup.Create(path); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { cgroup.Remove(path) })
	if k.CgroupID, err = cgroup.ID(path); err != nil {
		return fail(err)
	}
	if err := c.st.Maps.InitCounters(k.ID); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { c.st.Maps.DeleteCounters(k.ID) })
	undo = append(undo, func() { c.st.Maps.Remove(c.gen, k, c.cur) })
	if err := c.st.Maps.Insert(c.gen, k); err != nil {
		return fail(err)
	}
	next := append(append([]maps.Container{}, c.cur...), k)
	undo = append(undo, func() { c.unconfigureHost(next, c.cur) })
	if err := c.configureHost(c.cur, next); err != nil {
		return fail(err)
	}
	if isNetns(k) {
		// Its namespace, veth and addresses: after the maps own them.
		if err := c.plumb(k); err != nil {
			return fail(err)
		}
	}
	c.cur = next
	sort.Slice(c.cur, func(i, j int) bool { return c.cur[i].Spec.Name < c.cur[j].Spec.Name })
	return k, c.end()
}

// checkModes refuses what a container's mode cannot do. Both modes are
// available; policy.Validate has checked the rest (netns containers own
// whole IPs and have their own loopback).
func checkModes(spec policy.Container) error {
	switch spec.Mode {
	case policy.ModeShared, policy.ModeNetns:
		return nil
	}
	return fmt.Errorf("container %q: unknown mode %q: use shared or netns", spec.Name, spec.Mode)
}

// Del removes a container: kills its processes, unconfigures its addresses,
// then releases its ownership and removes its cgroup.
func (c *Control) Del(name string) error {
	k, err := c.Find(name)
	if err != nil {
		return err
	}
	rest := c.without(name)
	path := c.CgroupPath(name)
	if err := c.begin(); err != nil {
		return err
	}
	if pop, _ := cgroup.Populated(path); pop {
		if err := cgroup.Remove(path); err != nil {
			return err
		}
	}
	if err := c.unconfigureHost(c.cur, rest); err != nil {
		return err
	}
	if isNetns(k) {
		// Its namespace and veth go while the maps still own its
		// addresses (rule 9, the other way).
		if err := c.unplumb(k, true); err != nil {
			return err
		}
	}
	if err := c.st.Maps.Remove(c.gen, k, rest); err != nil {
		return err
	}
	if err := cgroup.Remove(path); err != nil {
		return err
	}
	if err := c.st.Maps.DeleteCounters(k.ID); err != nil {
		return err
	}
	// Its sockets' release hooks emptied the registry; purge what a
	// crash of ours or a race could leave.
	if err := c.st.Maps.PurgeListeners(k.ID); err != nil {
		return err
	}
	c.cur = rest
	return c.end()
}

// Down removes every container — in one bulk apply of the empty policy,
// not one delete each — then every link, pin and cgroup.
func (c *Control) Down() error {
	if len(c.cur) > 0 {
		if _, err := c.Apply(&policy.Policy{}, false); err != nil {
			return fmt.Errorf("remove the containers: %w", err)
		}
	}
	if err := c.teardownDelivery(); err != nil {
		return err
	}
	return c.st.Teardown()
}

// Stats returns the counters of container name ("" is the host: processes
// outside every container).
func (c *Control) Stats(name string) (maps.Counters, error) {
	if name == "" {
		return c.st.Maps.ReadCounters(0)
	}
	k, err := c.Find(name)
	if err != nil {
		return nil, err
	}
	return c.st.Maps.ReadCounters(k.ID)
}

// OwnerOf names the container owning addr ("" if none).
func (c *Control) OwnerOf(addr netip.Addr) string {
	for _, k := range c.cur {
		for _, a := range k.Spec.Addresses {
			if a.Addr == addr {
				return k.Spec.Name
			}
		}
	}
	return ""
}
