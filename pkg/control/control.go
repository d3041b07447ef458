// Package control is l3iso's control plane: it turns operator requests
// (container add/del, apply, down) into cgroups, map entries and host
// addresses, in the order that keeps docs/DESIGN.md's rules true at every
// instant — even when the process dies half way.
//
// Ordering rules:
//   - an address is owned in the maps before it is configured on the host,
//     and unconfigured before it leaves the maps (rule 9, both ways);
//   - a container's processes end (SIGTERM, then SIGKILL after a grace
//     period) before its cgroup stops being a container, so they never run
//     as unconfined host processes;
//   - `apply` writes the next policy generation beside the active one (over
//     the one before, by difference) and switches with one map write.
//
// Every mutating call first reconciles: it finishes what a crashed call left
// (missing host addresses, orphan cgroups, entries of an unused generation).
package control

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// ErrNotFound says a named container does not exist.
var ErrNotFound = errors.New("no such container")

// Control is an open installation plus the operations on it.
type Control struct {
	st  *loader.State
	gen uint32
	// The containers of the active generation, by name, once read (all):
	// commands that change one container do without them (see Add).
	cur    []maps.Container
	loaded bool
	byName map[string]int // index into cur, built on demand

	loIndex, upIndex int  // resolved once per command
	deliveryReady    bool // ensureDelivery ran in this command

	tr *tracer // the steps of the add under way (L3ISO_TRACE)

	// attaching is where the veth of the container Adopt adds goes;
	// attached is that veth once made (adopt.go).
	attaching *Attachment
	attached  *veth.Endpoint
	// reaped are the adopted containers FromState removed (ReapAdopted).
	reaped []string
}

// Open opens the installation pinned at bpffs. exclusive is for commands
// that change state; they also reconcile what a crash may have left, and
// give an installation made by an older l3iso its index (maps/index.go).
// The containers are read when a command needs them all, not here.
func Open(bpffs string, exclusive bool) (*Control, error) {
	st, err := loader.Open(bpffs, exclusive)
	if err != nil {
		return nil, err
	}
	c := &Control{st: st}
	if c.gen, err = st.Maps.ActiveGen(); err != nil {
		st.Close()
		return nil, err
	}
	switch {
	case exclusive && st.Config.Dirty:
		if err := c.reconcile(); err != nil {
			st.Close()
			return nil, fmt.Errorf("repair state left by an interrupted l3iso: %w", err)
		}
	case exclusive && st.Maps.Index() == nil:
		cs, err := c.all()
		if err == nil {
			err = st.Maps.BuildIndex(cs)
		}
		if err != nil {
			st.Close()
			return nil, err
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
	return c.setConfig(func(cfg *maps.Config) { cfg.Dirty = true })
}

// end clears the dirty mark after a command finished cleanly.
func (c *Control) end() error {
	if !c.st.Config.Dirty {
		return nil
	}
	return c.setConfig(func(cfg *maps.Config) { cfg.Dirty = false })
}

// setConfig changes l3_config as change says, and the State's copy.
func (c *Control) setConfig(change func(*maps.Config)) error {
	cfg := c.st.Config
	change(&cfg)
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
	if err := c.adoptNameTag(); err != nil {
		return nil, err
	}
	var err error
	if c.reaped, err = c.ReapAdopted(); err != nil {
		return nil, err
	}
	return c, c.end()
}

// Reaped names the containers the CNI plugin made whose network namespace
// was gone, which FromState (`up`) removed.
func (c *Control) Reaped() []string { return c.reaped }

// Close releases the installation.
func (c *Control) Close() error { return c.st.Close() }

// State is the underlying installation.
func (c *Control) State() *loader.State { return c.st }

func (c *Control) load() error {
	gen, err := c.st.Maps.ActiveGen()
	if err != nil {
		return err
	}
	c.gen, c.loaded = gen, false
	_, err = c.all()
	return err
}

// all returns the containers of the active generation, by name, reading
// them from l3_metas the first time.
func (c *Control) all() ([]maps.Container, error) {
	if !c.loaded {
		cur, err := c.st.Maps.Containers(c.gen)
		if err != nil {
			return nil, err
		}
		c.setCur(cur)
	}
	return c.cur, nil
}

// setCur replaces the known containers (sorted by name).
func (c *Control) setCur(cs []maps.Container) {
	c.cur, c.loaded, c.byName = cs, true, nil
}

// Containers lists the containers, by name.
func (c *Control) Containers() ([]maps.Container, error) { return c.all() }

// Find returns the container called name. With the index, that is two map
// lookups; without it (an installation an older l3iso made, read by a
// command that does not change it) every container is read.
func (c *Control) Find(name string) (maps.Container, error) {
	if !c.loaded {
		if k, ok, err := c.findIndexed(name); err != nil || ok {
			return k, err
		}
	}
	if _, err := c.all(); err != nil {
		return maps.Container{}, err
	}
	if c.byName == nil {
		c.byName = make(map[string]int, len(c.cur))
		for i, k := range c.cur {
			c.byName[k.Spec.Name] = i
		}
	}
	if i, ok := c.byName[name]; ok {
		return c.cur[i], nil
	}
	return maps.Container{}, notFound(name)
}

func notFound(name string) error {
	return fmt.Errorf("%w %q: see `l3iso container list`", ErrNotFound, name)
}

// findIndexed answers Find from the index where it can (ok): the container,
// or ErrNotFound. The index holds every container whose metadata exists
// (maps/index.go); a cgroup of that name without an index entry, which
// only an older l3iso writing to this installation could leave, sends the
// question to the full read.
func (c *Control) findIndexed(name string) (k maps.Container, ok bool, err error) {
	x := c.st.Maps.Index()
	if x == nil {
		return k, false, nil
	}
	id, err := x.Lookup(name)
	if err != nil {
		return k, false, err
	}
	if id == 0 {
		if _, err := os.Lstat(c.CgroupPath(name)); errors.Is(err, os.ErrNotExist) {
			return k, true, notFound(name)
		}
		return k, false, nil
	}
	k, found, err := c.st.Maps.Meta(c.gen, id)
	if err != nil || !found || k.Spec.Name != name {
		return maps.Container{}, false, err // stale (an apply under way): read all
	}
	return k, true, nil
}

// CgroupPath is the cgroup directory of container name.
func (c *Control) CgroupPath(name string) string { return c.st.ContainerCgroup(name) }

// reconcile rolls a crashed operation forward or back. l3_metas is the
// source of truth: a container is there (then everything it needs is made
// to exist) or it is not (then nothing of it may remain).
func (c *Control) reconcile() error {
	if _, err := c.all(); err != nil {
		return err
	}
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
	// take its new id. So too for a cgroup a command died removing after
	// it killed the processes (a del, or an apply that removed the
	// container, rolled back here): the kernel would kill whatever is
	// cloned into it (see cgroup.Killed). Unless processes joined it since
	// (through cgroup.procs, as `l3iso exec` does): those the repair does
	// not kill; a later repair finds the cgroup empty.
	for i, k := range c.cur {
		path := c.CgroupPath(k.Spec.Name)
		if cgroup.Killed(path) {
			if pop, err := cgroup.Populated(path); err == nil && !pop {
				if err := cgroup.Remove(path); err != nil {
					return err
				}
			}
		}
		id, err := cgroup.ID(path)
		if err == nil && id == k.CgroupID {
			continue
		}
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
	if err := c.st.Maps.BuildIndex(c.cur); err != nil {
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
	p := &policy.Policy{Containers: make([]policy.Container, 0, len(cs))}
	for _, k := range cs {
		p.Containers = append(p.Containers, k.Spec)
	}
	return p
}

// Policy returns the active policy.
func (c *Control) Policy() (*policy.Policy, error) {
	cs, err := c.all()
	if err != nil {
		return nil, err
	}
	return c.policyOf(cs), nil
}

func freeIDs(used []maps.Container, n int) ([]uint32, error) {
	taken := make([]bool, maps.MaxContainers+1)
	for _, k := range used {
		if int(k.ID) < len(taken) {
			taken[k.ID] = true
		}
	}
	return freeIn(taken, n)
}

// freeIn returns the n lowest ids (from 1) not taken.
func freeIn(taken []bool, n int) ([]uint32, error) {
	var out []uint32
	for id := uint32(1); len(out) < n && int(id) <= maps.MaxContainers; id++ {
		if int(id) >= len(taken) || !taken[id] {
			out = append(out, id)
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("too many containers: l3iso supports %d; delete some first", maps.MaxContainers)
	}
	return out, nil
}

// AddOptions are what an operator may allow Add beyond the plain case.
type AddOptions struct {
	// Force lets the container take addresses the host uses (a gateway, a
	// neighbour, an address it reaches through a route; see checkHost) —
	// never one of the host's own addresses.
	Force bool
}

// Add creates a container with the default options (see AddWith).
func (c *Control) Add(spec policy.Container) (maps.Container, error) {
	return c.AddWith(spec, AddOptions{})
}

// AddWith creates a container: its cgroup, its ownership in the maps, then
// its addresses on the host (rule 9). On any error everything it made is
// undone.
//
// Adding a container that conflicts with nothing costs the same next to
// 10,000 containers as next to none: it is checked against what could
// conflict with it (the index for its name, l3_owners for its addresses, the
// host for each address), not against every container. Every other case —
// a name in use, an address someone owns (a port range of a shared IP, or a
// conflict to report), a container invalid by itself — gets the full
// check, which words the error.
func (c *Control) AddWith(spec policy.Container, o AddOptions) (maps.Container, error) {
	if spec.Mode == "" {
		spec.Mode = policy.ModeShared
	}
	if spec.Loopback == "" {
		spec.Loopback = policy.LoopbackIsolated
	}
	if err := checkModes(spec); err != nil {
		return maps.Container{}, err
	}
	if !c.loaded {
		k, done, err := c.addAlone(spec, o)
		if done {
			return k, err
		}
	}
	return c.addChecked(spec, o)
}

// addAlone is Add for a container that conflicts with nothing (see Add);
// done is false, with nothing changed, when it cannot tell cheaply.
func (c *Control) addAlone(spec policy.Container, o AddOptions) (k maps.Container, done bool, err error) {
	x := c.st.Maps.Index()
	if x == nil || c.st.Config.Dirty {
		return k, false, nil
	}
	tr := trace("add")
	c.tr = tr
	defer func() { c.tr = nil }()
	alone := &policy.Policy{Containers: []policy.Container{spec}}
	if alone.Validate() != nil {
		return k, false, nil
	}
	if id, err := x.Lookup(spec.Name); err != nil || id != 0 {
		return k, false, err
	}
	// A cgroup of that name belongs to no container here (the dirty bit is
	// clear): let the full check look.
	path := c.CgroupPath(spec.Name)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		return k, false, nil
	}
	ips := make([]netip.Addr, 0, len(spec.Addresses))
	for _, a := range spec.Addresses {
		id, partial, err := c.st.Maps.Owner(c.gen, a.Addr)
		if err != nil {
			return k, false, err
		}
		if id != 0 || partial {
			return k, false, nil
		}
		ips = append(ips, a.Addr)
	}
	// Owned by no container, so none of them is l3iso's on the host: the
	// host must not use any (see checkHost).
	tr.step("check name, owners")
	uses, err := lookupHostUses(ips)
	if err != nil {
		return k, false, err
	}
	owner := make(map[netip.Addr]string, len(ips))
	for _, ip := range ips {
		owner[ip] = spec.Name
	}
	if err := hostUseError(ips, uses, owner, func(netip.Addr) bool { return o.Force }); err != nil {
		return k, true, err
	}
	tr.step("check host")
	ids, err := x.FreeIDs(1)
	if err != nil {
		return k, true, err
	}
	k = maps.Container{ID: ids[0], Spec: spec}
	// Its subnets' broadcast routes that the host has for other containers
	// already: an undo leaves them (and their markers) alone.
	var sharedBcast []netip.Addr
	for _, a := range spec.Addresses {
		if b, ok := a.Broadcast(); ok {
			used, err := c.st.Maps.BroadcastInUse(c.gen, b)
			if err != nil {
				return k, false, err
			}
			if used {
				sharedBcast = append(sharedBcast, b)
			}
		}
	}
	mine := desired([]maps.Container{k})
	for _, b := range sharedBcast {
		delete(mine, hostItem{kind: itemBcast4, ip: b, onLo: true})
	}
	err = c.create(&k,
		func() { c.st.Maps.Remove(c.gen, k, maps.Shared{Broadcasts: sharedBcast}) },
		func() error { return c.hostItems(true, items(desired([]maps.Container{k}))) },
		func() { c.hostItems(false, items(mine)) })
	if err != nil {
		return maps.Container{}, true, err
	}
	return k, true, nil
}

func items(m map[hostItem]bool) []hostItem {
	out := make([]hostItem, 0, len(m))
	for h := range m {
		out = append(out, h)
	}
	return out
}

// addChecked is Add with the full check: against every container.
func (c *Control) addChecked(spec policy.Container, o AddOptions) (maps.Container, error) {
	if _, err := c.all(); err != nil {
		return maps.Container{}, err
	}
	if _, err := c.Find(spec.Name); err == nil {
		return maps.Container{}, fmt.Errorf("container %q already exists: delete it first or choose another name", spec.Name)
	}
	p := c.policyOf(append(append([]maps.Container{}, c.cur...), maps.Container{Spec: spec}))
	if err := p.Validate(); err != nil {
		return maps.Container{}, err
	}
	if err := c.checkHost(slices.Values(c.cur), []policy.Container{spec}, o.Force); err != nil {
		return maps.Container{}, err
	}
	ids, err := freeIDs(c.cur, 1)
	if err != nil {
		return maps.Container{}, err
	}
	k := maps.Container{ID: ids[0], Spec: spec}
	cur := c.cur
	next := append(append([]maps.Container{}, cur...), k)
	err = c.create(&k,
		func() { c.removeFromMaps(k, cur) },
		func() error { return c.configureHost(cur, next) },
		func() { c.unconfigureHost(next, cur) })
	if err != nil {
		return maps.Container{}, err
	}
	next[len(next)-1] = k
	sort.Slice(next, func(i, j int) bool { return next[i].Spec.Name < next[j].Spec.Name })
	c.setCur(next)
	return k, nil
}

// create makes checked container k (its id chosen; create fills in its
// cgroup id): cgroup, index entry, counters, map entries (unmap undoes
// them), host addresses (configure; unconfigure undoes them), a netns
// container's namespace. On an error it undoes what it did and leaves the
// dirty bit set: the next command repairs whatever an undo could not.
func (c *Control) create(k *maps.Container, unmap func(), configure func() error, unconfigure func()) error {
	if err := c.begin(); err != nil {
		return err
	}
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	path := c.CgroupPath(k.Spec.Name)
	var err error
	c.tr.step("begin")
	if k.CgroupID, _, err = cgroup.Make(path); err != nil {
		return fail(err)
	}
	c.tr.step("cgroup")
	undo = append(undo, func() { cgroup.Remove(path) })
	if x := c.st.Maps.Index(); x != nil {
		// In the index before its metadata exists (maps/index.go).
		if err := x.Add(*k); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { x.Remove(*k) })
	}
	if err := c.st.Maps.InitCounters(k.ID); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { c.st.Maps.DeleteCounters(k.ID) })
	undo = append(undo, unmap)
	c.tr.step("index, counters")
	if err := c.st.Maps.Insert(c.gen, *k); err != nil {
		return fail(err)
	}
	c.tr.step("maps")
	undo = append(undo, unconfigure)
	if err := configure(); err != nil {
		return fail(err)
	}
	c.tr.step("host addresses")
	if isNetns(*k) {
		// Its namespace, veth and addresses: after the maps own them.
		if err := c.plumb(*k); err != nil {
			return fail(err)
		}
	}
	defer c.tr.step("end")
	return c.end()
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

// sole reports whether k shares nothing with other containers that its
// deletion would have to look at: no port range of an IP (others may have
// ranges of it) and no subnet (others may be on it).
func sole(k maps.Container) bool {
	for _, a := range k.Spec.Addresses {
		if !a.WholeIP() {
			return false
		}
		if _, ok := a.Broadcast(); ok {
			return false
		}
	}
	return true
}

// DefaultGrace is how long Del, Down and an Apply that removes containers
// wait, after SIGTERM, for a container's processes to exit before they
// kill them (cgroup.Stop).
const DefaultGrace = 10 * time.Second

// Del removes a container: stops its processes (SIGTERM, then SIGKILL
// for those still running after grace; see cgroup.Stop), unconfigures its
// addresses, then releases its ownership and removes its cgroup. A
// container that shares nothing (see sole) is removed without reading the
// others. It returns what it did to the processes.
func (c *Control) Del(name string, grace time.Duration) (cgroup.Stopped, error) {
	st, _, err := c.DelOutlived(name, grace)
	return st, err
}

// DelOutlived is Del, and also counts the sockets of the container that
// outlived its processes (a process elsewhere holds them: one was passed
// to it, or it left the container's cgroup), by address: after the
// delete they hold addresses nobody owns and receive nothing (Stale).
func (c *Control) DelOutlived(name string, grace time.Duration) (cgroup.Stopped, []Stale, error) {
	k, err := c.Find(name)
	if err != nil {
		return cgroup.Stopped{}, nil, err
	}
	alone := !c.loaded && sole(k) && c.st.Maps.Index() != nil
	var rest []maps.Container
	if !alone {
		if _, err := c.all(); err != nil {
			return cgroup.Stopped{}, nil, err
		}
		rest = c.without(name)
	}
	path := c.CgroupPath(name)
	if err := c.begin(); err != nil {
		return cgroup.Stopped{}, nil, err
	}
	// Its processes end while it is still a container (should this
	// command die during the grace period, it still is one), and its
	// cgroup goes with them: nothing can join it after.
	st, err := cgroup.Stop([]string{path}, grace)
	stopped := st[0]
	if err != nil {
		return stopped, nil, err
	}
	if stopped.Procs > 0 {
		if err := cgroup.Remove(path); err != nil {
			return stopped, nil, err
		}
	}
	// What outlived them, while its namespace and listeners are there.
	lose := newLosing()
	lose.loses(k, nil)
	outlived, countErr := lose.count(c, append(rest, k))
	if err := c.del(k, alone, rest); err != nil {
		return stopped, outlived, err
	}
	if countErr != nil {
		return stopped, nil, fmt.Errorf("container %q deleted, but %w", name, countErr)
	}
	return stopped, outlived, nil
}

// del is Del once k's processes are gone.
func (c *Control) del(k maps.Container, alone bool, rest []maps.Container) error {
	var err error
	path := c.CgroupPath(k.Spec.Name)
	if alone {
		// Every host item of k is its own: whole IPs, no subnet.
		err = c.hostItems(false, items(desired([]maps.Container{k})))
	} else {
		err = c.unconfigureHost(c.cur, rest)
	}
	if err != nil {
		return err
	}
	if isNetns(k) {
		// Its namespace and veth go while the maps still own its
		// addresses (rule 9, the other way).
		if err := c.unplumb(k, true); err != nil {
			return err
		}
	}
	if alone {
		err = c.st.Maps.Remove(c.gen, k, maps.Shared{})
	} else {
		err = c.removeFromMaps(k, rest)
	}
	if err != nil {
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
	if x := c.st.Maps.Index(); x != nil {
		// Out of the index once its metadata is gone (maps/index.go).
		if err := x.Remove(k); err != nil {
			return err
		}
	}
	if !alone {
		c.setCur(rest)
	}
	return c.end()
}

// removeFromMaps deletes k's entries from the active generation, keeping
// the markers that others (the containers that stay) share with it, and
// the broadcast filter of the others.
func (c *Control) removeFromMaps(k maps.Container, others []maps.Container) error {
	if err := c.st.Maps.Remove(c.gen, k, sharedWith(k, slices.Values(others))); err != nil {
		return err
	}
	for _, a := range k.Spec.Addresses {
		if _, ok := a.Broadcast(); ok {
			return c.st.Maps.ResetBcastFilter(others)
		}
	}
	return nil
}

// sharedWith is what k shares with others (k itself among them or not):
// the IPs they own port ranges of, the broadcast addresses of subnets they
// are on.
func sharedWith(k maps.Container, others iter.Seq[maps.Container]) maps.Shared {
	var sh maps.Shared
	for o := range others {
		if o.ID == k.ID {
			continue
		}
		for _, b := range o.Spec.Addresses {
			for _, a := range k.Spec.Addresses {
				if !a.WholeIP() && !b.WholeIP() && a.Addr == b.Addr && !slices.Contains(sh.IPs, a.Addr) {
					sh.IPs = append(sh.IPs, a.Addr)
				}
				ba, ok1 := a.Broadcast()
				bb, ok2 := b.Broadcast()
				if ok1 && ok2 && ba == bb && !slices.Contains(sh.Broadcasts, ba) {
					sh.Broadcasts = append(sh.Broadcasts, ba)
				}
			}
		}
	}
	return sh
}

// Down removes every container, stopping their processes with the
// default grace period (see DownGrace), then every link, pin and cgroup.
func (c *Control) Down() error {
	_, err := c.DownGrace(DefaultGrace)
	return err
}

// DownGrace removes every container — in one bulk apply of the empty
// policy, not one delete each, so every container's processes get their
// SIGTERM at once and the grace period runs once — then every link, pin
// and cgroup. It returns what it did to the processes.
func (c *Control) DownGrace(grace time.Duration) (cgroup.Stopped, error) {
	stopped := cgroup.Stopped{Grace: grace}
	cs, err := c.all()
	if err != nil {
		return stopped, err
	}
	if len(cs) > 0 {
		plan, err := c.Apply(&policy.Policy{}, ApplyOptions{Prune: true, AllowEmpty: true, Grace: grace, dropAdopted: true})
		for _, st := range plan.Stopped {
			stopped = stopped.Plus(st)
		}
		if err != nil {
			return stopped, fmt.Errorf("remove the containers: %w", err)
		}
	}
	// Veths of containers deleted before, kept by a namespace an orphan
	// socket holds (see veth.DeleteStray); not another installation's.
	if err := veth.DeleteStray(func(key string) bool { return !c.ours(key) }); err != nil {
		return stopped, err
	}
	if err := c.teardownDelivery(); err != nil {
		return stopped, err
	}
	if err := c.hostItems(false, []hostItem{hostAddrItem}); err != nil {
		return stopped, err
	}
	return stopped, c.st.Teardown()
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
