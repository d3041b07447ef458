// Package control is l3iso's control plane: it turns operator requests
// (container add/del, apply, down, the CNI plugin's ADD/DEL/GC, the repair
// of what a crash left) into cgroups, map entries, host addresses and
// network namespaces, in the order that keeps docs/DESIGN.md's rules true
// at every instant — even when the process dies half way.
//
// Each command reads what it needs of the installation (the facts), plans
// (a pure planner turns the facts and the request into a script of steps:
// plan.go) and executes (one executor runs the steps of every command in
// one order, each with its own undo: executor.go). The ordering rules —
// rule 9 both ways, processes ending before their cgroup stops being a
// container, the generation switch of `apply` — are written once, in the
// order of the step kinds (plan.go).
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
	"slices"
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
	gen maps.Gen // the active generation
	// The containers of the active generation, by name, once read (all):
	// commands that change one container do without them (see Add).
	cur    []maps.Container
	loaded bool
	byName map[string]int // index into cur, built on demand

	loIndex, upIndex int  // resolved once per command
	deliveryReady    bool // ensureDelivery ran in this command

	tr *tracer // the steps of the command under way (L3ISO_TRACE)

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
	if c.gen, err = st.Maps.Active(); err != nil {
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
	gen, err := c.st.Maps.Active()
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
		cur, err := c.gen.Containers()
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
	k, found, err := c.gen.Container(id)
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
	f, err := c.repairFacts()
	if err != nil {
		return err
	}
	return c.run(planRepair(f), nil)
}

// repairFacts reads what a repair plans from: the containers, the cgroups
// that belong to none, and each container's cgroup.
func (c *Control) repairFacts() (repairFacts, error) {
	cur, err := c.all()
	if err != nil {
		return repairFacts{}, err
	}
	f := repairFacts{cur: cur, cgroups: make([]cgroupState, len(cur))}
	known := make(map[string]bool, len(cur))
	for _, k := range cur {
		known[k.Spec.Name] = true
	}
	dir := filepath.Join(c.st.Config.CgroupRoot, loader.ContainersDir)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return f, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.IsDir() && !known[e.Name()] {
			f.orphans = append(f.orphans, filepath.Join(dir, e.Name()))
		}
	}
	for i, k := range cur {
		path := c.CgroupPath(k.Spec.Name)
		if cgroup.Killed(path) {
			pop, err := cgroup.Populated(path)
			f.cgroups[i].killed = err == nil && !pop
		}
		if id, err := cgroup.ID(path); err == nil {
			f.cgroups[i].id = id
		}
	}
	return f, nil
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

// AddOptions are what an operator may allow Add beyond the plain case.
type AddOptions struct {
	// Force lets the container take addresses the host uses (a gateway, a
	// neighbour, an address it reaches through a route; see askHost) —
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
	k, _, err := c.add(spec, o, nil)
	return k, err
}

// add is AddWith, and Adopt with the runtime's namespace at.
func (c *Control) add(spec policy.Container, o AddOptions, at *Attachment) (maps.Container, *veth.Endpoint, error) {
	if spec.Mode == "" {
		spec.Mode = policy.ModeShared
	}
	if spec.Loopback == "" {
		spec.Loopback = policy.LoopbackIsolated
	}
	tr := trace("add")
	var s *script
	if f, ok := c.fastAddFacts(spec); ok {
		var err error
		if s, err = planAdd(spec, o, f); err != nil && !errors.Is(err, errFull) {
			return maps.Container{}, nil, err
		}
	}
	if s == nil {
		f, err := c.fullAddFacts(spec)
		if err != nil {
			return maps.Container{}, nil, err
		}
		if s, err = planAdd(spec, o, f); err != nil {
			return maps.Container{}, nil, err
		}
	}
	tr.step("check")
	s.attach = at
	if err := c.containersCgroup(s); err != nil {
		return maps.Container{}, nil, err
	}
	if err := c.run(s, tr); err != nil {
		return maps.Container{}, nil, err
	}
	return s.come[0], s.attached, nil
}

// fastAddFacts reads what the fast path of an add asks (see addFacts):
// the index for spec's name, l3_owners for its addresses, and — when
// neither has it — the host for each address and l3_locals for its
// subnets' broadcast addresses. ok is false when there is no fast path:
// every container is known already or must be read (no index, or the
// installation is dirty), or a read failed (the full path reads again).
func (c *Control) fastAddFacts(spec policy.Container) (f addFacts, ok bool) {
	x := c.st.Maps.Index()
	if c.loaded || x == nil || c.st.Config.Dirty {
		return f, false
	}
	id, err := x.Lookup(spec.Name)
	if err != nil {
		return f, false
	}
	// A cgroup of that name belongs to no container here (the dirty bit is
	// clear): the full check looks.
	_, err = os.Lstat(c.CgroupPath(spec.Name))
	if f.nameUsed = id != 0 || !errors.Is(err, os.ErrNotExist); f.nameUsed {
		return f, true // planAdd sends it to the full path
	}
	ips := make([]netip.Addr, 0, len(spec.Addresses))
	for _, a := range spec.Addresses {
		id, partial, err := c.gen.Owner(a.Addr)
		if err != nil {
			return f, false
		}
		f.owned = f.owned || id != 0 || partial
		ips = append(ips, a.Addr)
	}
	if f.owned {
		return f, true
	}
	if f.uses, err = lookupHostUses(ips); err != nil {
		return f, false
	}
	free, err := x.FreeIDs(1)
	if err != nil {
		return f, false // none free, or unreadable: the full path says which
	}
	f.free = free[0]
	for _, a := range spec.Addresses {
		if b, ok := a.Broadcast(); ok {
			used, err := c.gen.BroadcastInUse(b)
			if err != nil {
				return f, false
			}
			if used && !slices.Contains(f.shared, b) {
				f.shared = append(f.shared, b)
			}
		}
	}
	return f, true
}

// fullAddFacts reads every installed container, and what the host uses
// spec's addresses for (those l3iso did not configure).
func (c *Control) fullAddFacts(spec policy.Container) (addFacts, error) {
	cur, err := c.all()
	if err != nil {
		return addFacts{}, err
	}
	f := addFacts{all: cur, free: lowestFree(cur)}
	if f.all == nil {
		f.all = []maps.Container{}
	}
	f.uses, err = lookupHostUses(askHost(slices.Values(cur), []policy.Container{spec}).ips)
	return f, err
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
	var s *script
	if !c.loaded && c.st.Maps.Index() != nil {
		if s, err = planDel(k, grace, delFacts{}); err != nil && !errors.Is(err, errFull) {
			return cgroup.Stopped{}, nil, err
		}
	}
	if s == nil {
		if _, err := c.all(); err != nil {
			return cgroup.Stopped{}, nil, err
		}
		if s, err = planDel(k, grace, delFacts{rest: c.without(name), full: true}); err != nil {
			return cgroup.Stopped{}, nil, err
		}
	}
	err = c.run(s, nil)
	stopped := cgroup.Stopped{Grace: grace}
	if len(s.stopped) > 0 {
		stopped = s.stopped[0]
	}
	return stopped, s.stale, err
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
