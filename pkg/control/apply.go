package control

import (
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Plan is what Apply would change.
type Plan struct {
	Changes []policy.Change
	// Running counts, when the plan was made, the processes of each
	// container it removes (those without any are left out).
	Running map[string]int
	// Stopped is what the apply did to the processes of each container it
	// removed (those without any are left out).
	Stopped map[string]cgroup.Stopped
	// Stale counts the live sockets that still hold an address the apply
	// removed from a container, by container and address: after the switch
	// (a plan: when it was made).
	Stale []Stale
}

// Empty reports whether the policy is already in force.
func (p Plan) Empty() bool { return len(p.Changes) == 0 }

// ApplyOptions are what an operator may allow Apply beyond the plain case.
type ApplyOptions struct {
	// DryRun only plans: it checks everything and changes nothing.
	DryRun bool
	// Prune lets Apply remove containers that have running processes
	// (stopped as Del stops them); without it such an apply is refused.
	Prune bool
	// AllowEmpty lets Apply make the installed containers none; without
	// it a policy with no containers is refused (an empty or truncated
	// file is more often a mistake than a wish).
	AllowEmpty bool
	// Force lets containers take addresses the host uses (a gateway, a
	// neighbour, an address it reaches through a route; see checkHost) —
	// never one of the host's own addresses.
	Force bool
	// Grace is how long processes get between SIGTERM and SIGKILL (see
	// cgroup.Stop); 0 kills them at once.
	Grace time.Duration
	// dropAdopted removes the containers the CNI plugin made too (Down);
	// any other apply carries them over as they are (adopt.go).
	dropAdopted bool
}

// Apply makes the installed containers exactly those of p. Every check runs
// before anything changes; then the next generation is written beside the
// active one and switched to with one map write, so no bind and no packet
// sees a mix of the old and the new policy. With o.DryRun it only plans.
//
// The containers it removes have their processes stopped all at once, so
// the grace period runs once, not once per container. It refuses (and a
// dry run reports, with the plan) an empty policy without o.AllowEmpty and
// the removal of a container with running processes without o.Prune.
func (c *Control) Apply(p *policy.Policy, o ApplyOptions) (Plan, error) {
	tr := trace("apply")
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	for _, spec := range p.Containers {
		if err := checkModes(spec); err != nil {
			return Plan{}, err
		}
	}
	fileContainers := len(p.Containers)
	if !o.dropAdopted {
		var err error
		if p, err = c.withAdopted(p); err != nil {
			return Plan{}, err
		}
	}
	tr.step("validate")
	sv, err := c.survey(p)
	if err != nil {
		return Plan{}, err
	}
	tr.step("read containers")
	pc := p.Containers
	// The plan: Diff of the containers that are not exactly as installed
	// (Diff leaves identical ones out; it sees each name on its own).
	var oldDiff, newDiff []policy.Container
	for _, k := range sv.olds {
		oldDiff = append(oldDiff, k.Spec)
	}
	for i := range pc {
		if sv.id[i] == 0 || sv.old[i] >= 0 {
			newDiff = append(newDiff, pc[i])
		}
	}
	plan := Plan{Changes: policy.Diff(&policy.Policy{Containers: oldDiff}, &policy.Policy{Containers: newDiff})}
	tr.step("diff")
	for i, spec := range pc {
		if o := sv.old[i]; o >= 0 && sv.olds[o].Spec.Mode != spec.Mode {
			return plan, fmt.Errorf("container %q: its mode cannot change from %s to %s while it exists (its processes cannot move to another network stack): delete it first (remove it from the policy and apply), then add it with the new mode", spec.Name, sv.olds[o].Spec.Mode, spec.Mode)
		}
	}
	var gone []maps.Container
	for j, k := range sv.olds {
		if sv.gone[j] {
			gone = append(gone, k)
		}
	}
	if plan.Running, err = c.running(gone); err != nil {
		return plan, err
	}
	lose := sv.losing()
	if fileContainers == 0 && !o.AllowEmpty {
		return plan, emptyPolicyError(len(gone), plan.Running)
	}
	if len(plan.Running) > 0 && !o.Prune {
		return plan, pruneError(plan.Running, o.Grace)
	}
	// The addresses the host must not have already: those of containers
	// that come or change (an unchanged shared container's are l3iso's),
	// and every netns container's (they are not l3iso's on the host).
	var checking []policy.Container
	for i, spec := range pc {
		o := sv.old[i]
		if sv.id[i] == 0 || spec.Mode == policy.ModeNetns && !spec.Adopted || (o >= 0 && !slices.Equal(sv.olds[o].Spec.Addresses, spec.Addresses)) {
			checking = append(checking, spec)
		}
	}
	if err := c.checkHost(sv.installed(), checking, o.Force); err != nil {
		return plan, err
	}
	tr.step("check host")
	if o.DryRun && !plan.Empty() {
		plan.Stale, err = lose.countPlanned(c, slices.Collect(sv.installed()), plan.Running)
	}
	if o.DryRun || plan.Empty() {
		return plan, err
	}

	// The next generation: the policy's containers, survivors with their
	// id, cgroup and counters (next(i)); new ones get free ids.
	n := 0
	for i := range pc {
		if sv.id[i] == 0 {
			n++
		}
	}
	ids, err := freeIn(sv.used, n)
	if err != nil {
		return plan, err
	}
	var fresh []maps.Container
	var freshAt []int // index of each fresh container in the policy
	isFresh := make([]bool, len(pc))
	for i := range pc {
		if sv.id[i] == 0 {
			sv.id[i], ids = ids[0], ids[1:]
			freshAt, isFresh[i] = append(freshAt, i), true
			fresh = append(fresh, sv.next(i))
		}
	}
	// What changes on the host: the items of the containers that go, come
	// or change, against those of the others (hostDiff).
	before := append([]maps.Container{}, gone...)
	var after []maps.Container
	same := make([]bool, len(pc)) // its host items stay
	for i := range pc {
		switch o := sv.old[i]; {
		case isFresh[i]:
			after = append(after, sv.next(i))
		case o < 0 || sameItems(sv.olds[o], sv.next(i)):
			same[i] = true
		default:
			before, after = append(before, sv.olds[o]), append(after, sv.next(i))
		}
	}
	unconfigure, configure := hostDiff(before, after, func(yield func(maps.Container) bool) {
		for i := range pc {
			if same[i] && !yield(sv.next(i)) {
				return
			}
		}
	})
	tr.step("next, host changes")

	// Up to the switch, a failure leaves the active policy untouched: undo
	// the new cgroups and counters; the next generation is purged by the
	// next reconcile (or right here).
	// The generation that is not active: it holds the policy of the apply
	// before last (or nothing), which no program reads.
	newGen := maps.OtherGen(c.gen)
	x := c.st.Maps.Index()
	abort := func(err error) (Plan, error) {
		c.st.Maps.PurgeGen(newGen)
		for _, k := range fresh {
			cgroup.Remove(c.CgroupPath(k.Spec.Name))
			c.st.Maps.DeleteCounters(k.ID)
		}
		if x != nil {
			x.Remove(fresh...)
		}
		return plan, err
	}
	if err := c.begin(); err != nil {
		return plan, err
	}
	freshIDs := make([]uint32, 0, len(fresh))
	for j, i := range freshAt {
		if sv.cgid[i], _, err = cgroup.Make(c.CgroupPath(pc[i].Name)); err != nil {
			return abort(err)
		}
		fresh[j].CgroupID = sv.cgid[i]
		freshIDs = append(freshIDs, sv.id[i])
	}
	tr.step("cgroups")
	if err := c.st.Maps.InitCountersOf(freshIDs); err != nil {
		return abort(err)
	}
	if x != nil {
		// In the index before their metadata exists (maps/index.go).
		if err := x.Add(fresh...); err != nil {
			return abort(err)
		}
	}
	tr.step("counters, index")
	if err := c.st.Maps.WriteSlotSeq(sv.slot, sv.all()); err != nil {
		return abort(err)
	}
	tr.step("write next generation")
	// Containers that go: their processes end first (after the switch they
	// would be host processes), and their addresses leave the host while
	// the active policy still owns them.
	if err := c.stopGone(gone, o, &plan); err != nil {
		return abort(err)
	}
	tr.step("stop removed")
	if err := c.hostItems(false, unconfigure); err != nil {
		return abort(err)
	}
	tr.step("unconfigure host")
	// netns containers that go lose their namespace, and those that lose
	// addresses lose them, while the active policy still owns them.
	var goneNetns []string
	for _, k := range gone {
		if isNetns(k) {
			lose.readNetns(c, k)
			if err := c.unplumb(k, false); err != nil {
				return abort(err)
			}
			if !k.Spec.Adopted { // its veth is gone already, its namespace not l3iso's
				goneNetns = append(goneNetns, c.key(k.Spec.Name))
			}
		}
	}
	readdressed := map[string]bool{}
	for i := range pc {
		if sv.old[i] < 0 || pc[i].Mode != policy.ModeNetns {
			continue
		}
		o, k := sv.olds[sv.old[i]], sv.next(i)
		if sameAddrs(vethAddrs(o), vethAddrs(k)) {
			continue
		}
		readdressed[k.Spec.Name] = true
		if err := c.shrinkAddrs(o, k); err != nil {
			return abort(err)
		}
	}

	tr.step("netns before")
	if err := c.st.Maps.SetActiveGen(newGen); err != nil {
		return abort(err)
	}

	// After the switch: configure new addresses. The old generation stays
	// as it is: the next apply writes over it. The containers are read
	// again if this Control needs them.
	c.gen = newGen
	c.cur, c.loaded, c.byName = nil, false, nil
	tr.step("switch")
	if err := c.hostItems(true, configure); err != nil {
		return plan, fmt.Errorf("policy switched, but configuring host addresses failed (the next l3iso command retries): %w", err)
	}
	// The namespaces of netns containers that went must be gone first:
	// one whose process died with a TCP connection that cannot finish
	// closing (an orphan socket holds its namespace) keeps its veth and
	// the host routes on it, which a container taking its address would
	// collide with. DeleteMany deletes such a veth itself.
	if err := veth.DeleteMany(goneNetns); err != nil {
		return plan, fmt.Errorf("policy switched, but %w (the next l3iso command retries)", err)
	}
	tr.step("netns gone")
	// netns containers that come get their namespace, those that gain
	// addresses get them: now that the active policy owns them.
	var comeNetns []maps.Container
	for _, k := range fresh {
		if isNetns(k) {
			comeNetns = append(comeNetns, k)
		}
	}
	if err := c.plumbAll(comeNetns); err != nil {
		return plan, fmt.Errorf("policy switched, but %w (the next l3iso command retries)", err)
	}
	for i := range pc {
		switch k := sv.next(i); {
		case !isNetns(k):
		case readdressed[k.Spec.Name]:
			if err := c.growAddrs(k); err != nil {
				return plan, fmt.Errorf("policy switched, but configuring the addresses of container %q failed (the next l3iso command retries): %w", k.Spec.Name, err)
			}
		}
	}
	tr.step("configure host, netns")
	if err := c.st.Maps.ResetBcastFilterSeq(sv.all()); err != nil {
		return plan, err
	}
	// Before the purge forgets the listeners of the removed containers;
	// a failure to read them is reported once the apply is done.
	var staleErr error
	if plan.Stale, err = lose.count(c, slices.AppendSeq(slices.Clone(gone), sv.all())); err != nil {
		staleErr = fmt.Errorf("policy applied, but %w", err)
	}
	goneIDs := make([]uint32, 0, len(gone))
	for _, k := range gone {
		goneIDs = append(goneIDs, k.ID)
	}
	if err := c.st.Maps.InitCountersOf(goneIDs); err != nil { // zeroed
		return plan, err
	}
	if err := c.st.Maps.PurgeListeners(goneIDs...); err != nil {
		return plan, err
	}
	if x != nil {
		// Out of the index once their metadata is gone.
		if err := x.Remove(gone...); err != nil {
			return plan, err
		}
	}
	defer tr.step("counters, listeners, index")
	return plan, errors.Join(c.end(), staleErr)
}

// survey is the installed containers next to a policy: read in one pass
// over the metadata, without decoding those that are exactly as the policy
// has them (most of them, usually), and with what the inactive generation
// holds (maps/slot.go).
type survey struct {
	p    *policy.Policy
	id   []uint32 // by policy container: its id; 0 while it is new
	cgid []uint64 // by policy container: its cgroup id; 0 while it is new
	old  []int32  // by policy container: its installed version in olds if that differs, else -1
	olds []maps.Container
	gone []bool // by olds: not in the policy
	used []bool // by id: in use
	slot *maps.Slot
}

// survey reads the installed containers against policy p (validated:
// sorted by name).
func (c *Control) survey(p *policy.Policy) (*survey, error) {
	pc := p.Containers
	sv := &survey{
		p: p, id: make([]uint32, len(pc)), cgid: make([]uint64, len(pc)), old: make([]int32, len(pc)),
		used: make([]bool, maps.MaxContainers+1), slot: maps.NewSlot(maps.OtherGen(c.gen)),
	}
	for i := range sv.old {
		sv.old[i] = -1
	}
	var dup string
	err := c.st.Maps.ScanMetas(c.gen, sv.slot, func(m maps.Meta) {
		if int(m.ID()) < len(sv.used) {
			sv.used[m.ID()] = true
		}
		name := m.Name()
		i, found := slices.BinarySearchFunc(pc, name, func(c policy.Container, name string) int { return strings.Compare(c.Name, name) })
		if !found {
			sv.olds, sv.gone = append(sv.olds, m.Container()), append(sv.gone, true)
			return
		}
		if sv.id[i] != 0 {
			dup = pc[i].Name
			return
		}
		sv.id[i], sv.cgid[i] = m.ID(), m.CgroupID()
		if !m.Is(sv.next(i)) {
			sv.old[i] = int32(len(sv.olds))
			sv.olds, sv.gone = append(sv.olds, m.Container()), append(sv.gone, false)
		}
	})
	if err != nil {
		return nil, err
	}
	if dup != "" {
		return nil, fmt.Errorf("two installed containers are called %q: run `l3iso up` to repair the installation", dup)
	}
	slices.SortFunc(sv.olds, func(a, b maps.Container) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	// (gone and old follow olds: recompute them after the sort.)
	for j := range sv.gone {
		sv.gone[j] = true
	}
	for j, k := range sv.olds {
		if i, found := slices.BinarySearchFunc(pc, k.Spec.Name, func(c policy.Container, name string) int { return strings.Compare(c.Name, name) }); found {
			sv.old[i], sv.gone[j] = int32(j), false
		}
	}
	return sv, nil
}

// next is policy container i as the next generation has it.
func (sv *survey) next(i int) maps.Container {
	return maps.Container{ID: sv.id[i], CgroupID: sv.cgid[i], Spec: sv.p.Containers[i]}
}

// all yields the next generation's containers (every id assigned).
func (sv *survey) all() iter.Seq[maps.Container] {
	return func(yield func(maps.Container) bool) {
		for i := range sv.p.Containers {
			if !yield(sv.next(i)) {
				return
			}
		}
	}
}

// installed yields the installed containers: those the policy has as they
// are, and the others' installed versions.
func (sv *survey) installed() iter.Seq[maps.Container] {
	return func(yield func(maps.Container) bool) {
		for i := range sv.p.Containers {
			if sv.id[i] != 0 && sv.old[i] < 0 && !yield(sv.next(i)) {
				return
			}
		}
		for _, k := range sv.olds {
			if !yield(k) {
				return
			}
		}
	}
}

// running counts the processes of each of cs (those without any are left
// out; nil if none has any).
func (c *Control) running(cs []maps.Container) (map[string]int, error) {
	var out map[string]int
	for _, k := range cs {
		n, err := cgroup.Procs(c.CgroupPath(k.Spec.Name))
		if err != nil {
			return nil, err
		}
		if n > 0 {
			if out == nil {
				out = map[string]int{}
			}
			out[k.Spec.Name] = n
		}
	}
	return out, nil
}

// stopGone ends the processes of the containers an apply removes, all
// at once (one grace period for all), and removes their cgroups; what it
// did goes to plan.Stopped. Without o.Prune it ends nothing: a container
// that has gained a process since the plan was made refuses the apply.
func (c *Control) stopGone(gone []maps.Container, o ApplyOptions, plan *Plan) error {
	if !o.Prune {
		running, err := c.running(gone)
		if err != nil {
			return err
		}
		if len(running) > 0 {
			return pruneError(running, o.Grace)
		}
	}
	paths := make([]string, len(gone))
	for i, k := range gone {
		paths[i] = c.CgroupPath(k.Spec.Name)
	}
	stopped, err := cgroup.Stop(paths, o.Grace)
	for i, st := range stopped {
		if st.Procs > 0 {
			if plan.Stopped == nil {
				plan.Stopped = map[string]cgroup.Stopped{}
			}
			plan.Stopped[gone[i].Spec.Name] = st
		}
	}
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := cgroup.RemoveTree(p); err != nil {
			return err
		}
	}
	return nil
}

// ErrEmptyPolicy is the refusal of a policy with no containers (see
// ApplyOptions.AllowEmpty).
var ErrEmptyPolicy = errors.New("the policy has no containers")

// emptyPolicyError refuses a policy without containers, which would delete
// the n installed ones.
func emptyPolicyError(n int, running map[string]int) error {
	what, todo := " (and none is installed)", "pass --allow-empty if you mean it"
	if n > 0 {
		what = fmt.Sprintf(", so applying it would delete every installed container (%d", n)
		if procs := sum(running); procs > 0 {
			what += fmt.Sprintf(", with %s", cgroup.Plural(procs, "running process", "running processes"))
			todo += " (and --prune to stop the processes)"
		}
		what += ")"
	}
	return fmt.Errorf("%w%s; an empty or truncated file is more often a mistake: %s", ErrEmptyPolicy, what, todo)
}

// pruneError refuses to remove containers with running processes.
func pruneError(running map[string]int, grace time.Duration) error {
	names := make([]string, 0, len(running))
	for name := range running {
		names = append(names, name)
	}
	slices.Sort(names)
	var parts []string
	for i, name := range names {
		if i == 10 {
			parts = append(parts, fmt.Sprintf("and %d more", len(names)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%q (%s)", name, cgroup.Plural(running[name], "process", "processes")))
	}
	return fmt.Errorf("the policy removes %s with running processes: %s; stop them first, or pass --prune to stop them (SIGTERM, then SIGKILL after --grace, now %s)",
		cgroup.Plural(len(names), "container", "containers"), strings.Join(parts, ", "), grace)
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
