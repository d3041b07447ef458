package control

import (
	"fmt"
	"slices"
	"sort"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Plan is what Apply would change.
type Plan struct {
	Changes []policy.Change
}

// Empty reports whether the policy is already in force.
func (p Plan) Empty() bool { return len(p.Changes) == 0 }

// Apply makes the installed containers exactly those of p. Every check runs
// before anything changes; then the next generation is written beside the
// active one and switched to with one map write, so no bind and no packet
// sees a mix of the old and the new policy. With dryRun it only plans.
func (c *Control) Apply(p *policy.Policy, dryRun bool) (Plan, error) {
	tr := trace("apply")
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	for _, spec := range p.Containers {
		if err := checkModes(spec); err != nil {
			return Plan{}, err
		}
	}
	tr.step("validate")
	// The active containers and, in the same pass over the metadata, what
	// the other generation holds: the next one is written over it by
	// difference (maps/slot.go).
	var slot *maps.Slot
	if !c.loaded {
		cur, sl, err := c.st.Maps.ContainersAndSlot(c.gen, c.gen^1)
		if err != nil {
			return Plan{}, err
		}
		c.setCur(cur)
		slot = sl
	}
	tr.step("read containers")
	plan := Plan{Changes: policy.Diff(c.policyOf(c.cur), p)}
	tr.step("diff")
	byName := make(map[string]maps.Container, len(c.cur))
	for _, k := range c.cur {
		byName[k.Spec.Name] = k
	}
	for _, spec := range p.Containers {
		if old, ok := byName[spec.Name]; ok && old.Spec.Mode != spec.Mode {
			return plan, fmt.Errorf("container %q: its mode cannot change from %s to %s while it exists (its processes cannot move to another network stack): delete it first (remove it from the policy and apply), then add it with the new mode", spec.Name, old.Spec.Mode, spec.Mode)
		}
	}
	// The addresses the host must not have already: those of containers
	// that come or change (an unchanged shared container's are l3iso's),
	// and every netns container's (they are not l3iso's on the host).
	var checking []policy.Container
	for _, spec := range p.Containers {
		old, ok := byName[spec.Name]
		if !ok || spec.Mode == policy.ModeNetns || !slices.Equal(old.Spec.Addresses, spec.Addresses) {
			checking = append(checking, spec)
		}
	}
	if err := c.checkHostConflicts(c.cur, checking); err != nil {
		return plan, err
	}
	tr.step("check host")
	if dryRun || plan.Empty() {
		return plan, nil
	}

	// Build the next generation: survivors keep id, cgroup and counters.
	keep := make(map[string]bool, len(c.cur))
	next := make([]maps.Container, 0, len(p.Containers))
	var fresh []maps.Container
	var freshAt []int // index of each fresh container in next
	n := 0
	for _, spec := range p.Containers {
		if _, ok := byName[spec.Name]; !ok {
			n++
		}
	}
	ids, err := freeIDs(c.cur, n)
	if err != nil {
		return plan, err
	}
	for _, spec := range p.Containers {
		if old, ok := byName[spec.Name]; ok {
			keep[spec.Name] = true
			next = append(next, maps.Container{ID: old.ID, CgroupID: old.CgroupID, Spec: spec})
			continue
		}
		k := maps.Container{ID: ids[0], Spec: spec}
		ids = ids[1:]
		freshAt = append(freshAt, len(next))
		next = append(next, k)
		fresh = append(fresh, k)
	}
	var gone []maps.Container
	for _, k := range c.cur {
		if !keep[k.Spec.Name] {
			gone = append(gone, k)
		}
	}
	// What changes on the host: the items of the containers that go, come
	// or change, against those of the others (hostDiff).
	before := append([]maps.Container{}, gone...)
	var after, same []maps.Container
	for _, k := range next {
		switch o, ok := byName[k.Spec.Name]; {
		case !ok:
			after = append(after, k)
		case sameItems(o, k):
			same = append(same, k)
		default:
			before, after = append(before, o), append(after, k)
		}
	}
	unconfigure, configure := hostDiff(before, after, same)

	// Up to the switch, a failure leaves the active policy untouched: undo
	// the new cgroups and counters; the next generation is purged by the
	// next reconcile (or right here).
	// The generation that is not active: it holds the policy of the apply
	// before last (or nothing), which no program reads.
	newGen := c.gen ^ 1
	if slot == nil {
		if slot, err = c.st.Maps.ReadSlot(newGen); err != nil {
			return plan, err
		}
	}
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
		if next[i].CgroupID, _, err = cgroup.Make(c.CgroupPath(next[i].Spec.Name)); err != nil {
			return abort(err)
		}
		fresh[j].CgroupID = next[i].CgroupID
		freshIDs = append(freshIDs, next[i].ID)
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
	if err := c.st.Maps.WriteSlot(slot, next); err != nil {
		return abort(err)
	}
	tr.step("write next generation")
	// Containers that go: their processes die first (after the switch they
	// would be host processes), and their addresses leave the host while
	// the active policy still owns them.
	for _, k := range gone {
		if err := cgroup.Remove(c.CgroupPath(k.Spec.Name)); err != nil {
			return abort(err)
		}
	}
	tr.step("kill removed")
	if err := c.hostItems(false, unconfigure); err != nil {
		return abort(err)
	}
	tr.step("unconfigure host")
	// netns containers that go lose their namespace, and those that lose
	// addresses lose them, while the active policy still owns them.
	var goneNetns []string
	for _, k := range gone {
		if isNetns(k) {
			if err := c.unplumb(k, false); err != nil {
				return abort(err)
			}
			goneNetns = append(goneNetns, k.Spec.Name)
		}
	}
	readdressed := map[string]bool{}
	for _, k := range next {
		o, ok := byName[k.Spec.Name]
		if !ok || !isNetns(k) || sameAddrs(vethAddrs(o), vethAddrs(k)) {
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
	// as it is: the next apply writes over it.
	sort.Slice(next, func(i, j int) bool { return next[i].Spec.Name < next[j].Spec.Name })
	c.gen = newGen
	c.setCur(next)
	tr.step("switch")
	if err := c.hostItems(true, configure); err != nil {
		return plan, fmt.Errorf("policy switched, but configuring host addresses failed (the next l3iso command retries): %w", err)
	}
	// netns containers that come get their namespace, those that gain
	// addresses get them: now that the active policy owns them.
	var comeNetns []maps.Container
	for _, k := range next {
		if isNetns(k) && !keep[k.Spec.Name] {
			comeNetns = append(comeNetns, k)
		}
	}
	if err := c.plumbAll(comeNetns); err != nil {
		return plan, fmt.Errorf("policy switched, but %w (the next l3iso command retries)", err)
	}
	for _, k := range next {
		switch {
		case !isNetns(k):
		case readdressed[k.Spec.Name]:
			if err := c.growAddrs(k); err != nil {
				return plan, fmt.Errorf("policy switched, but configuring the addresses of container %q failed (the next l3iso command retries): %w", k.Spec.Name, err)
			}
		}
	}
	tr.step("configure host, netns")
	if err := veth.DeleteMany(goneNetns); err != nil {
		return plan, err
	}
	tr.step("netns after")
	if err := c.st.Maps.ResetBcastFilter(next); err != nil {
		return plan, err
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
	return plan, c.end()
}
