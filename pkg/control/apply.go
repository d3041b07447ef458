package control

import (
	"fmt"
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
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	for _, spec := range p.Containers {
		if err := checkModes(spec); err != nil {
			return Plan{}, err
		}
	}
	plan := Plan{Changes: policy.Diff(c.Policy(), p)}
	byName := map[string]maps.Container{}
	for _, k := range c.cur {
		byName[k.Spec.Name] = k
	}
	for _, spec := range p.Containers {
		if old, ok := byName[spec.Name]; ok && old.Spec.Mode != spec.Mode {
			return plan, fmt.Errorf("container %q: its mode cannot change from %s to %s while it exists (its processes cannot move to another network stack): delete it first (remove it from the policy and apply), then add it with the new mode", spec.Name, old.Spec.Mode, spec.Mode)
		}
	}
	if err := c.checkHostConflicts(c.cur, p.Containers); err != nil {
		return plan, err
	}
	if dryRun || plan.Empty() {
		return plan, nil
	}

	// Build the next generation: survivors keep id, cgroup and counters.
	keep := map[string]bool{}
	var next []maps.Container
	var fresh []maps.Container
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
		next = append(next, k)
		fresh = append(fresh, k)
	}
	var gone []maps.Container
	for _, k := range c.cur {
		if !keep[k.Spec.Name] {
			gone = append(gone, k)
		}
	}

	// Up to the switch, a failure leaves the active policy untouched: undo
	// the new cgroups and counters; the next generation is purged by the
	// next reconcile (or right here).
	newGen := c.gen + 1
	abort := func(err error) (Plan, error) {
		c.st.Maps.PurgeGen(newGen)
		for _, k := range fresh {
			cgroup.Remove(c.CgroupPath(k.Spec.Name))
			c.st.Maps.DeleteCounters(k.ID)
		}
		return plan, err
	}
	if err := c.begin(); err != nil {
		return plan, err
	}
	for i := range next {
		if next[i].CgroupID != 0 {
			continue
		}
		path := c.CgroupPath(next[i].Spec.Name)
		if err := cgroup.Create(path); err != nil {
			return abort(err)
		}
		if next[i].CgroupID, err = cgroup.ID(path); err != nil {
			return abort(err)
		}
		if err := c.st.Maps.InitCounters(next[i].ID); err != nil {
			return abort(err)
		}
		for j := range fresh {
			if fresh[j].ID == next[i].ID {
				fresh[j].CgroupID = next[i].CgroupID
			}
		}
	}
	if err := c.st.Maps.Insert(newGen, next...); err != nil {
		return abort(err)
	}
	// Containers that go: their processes die first (after the switch they
	// would be host processes), and their addresses leave the host while
	// the active policy still owns them.
	for _, k := range gone {
		if err := cgroup.Remove(c.CgroupPath(k.Spec.Name)); err != nil {
			return abort(err)
		}
	}
	if err := c.unconfigureHost(c.cur, next); err != nil {
		return abort(err)
	}
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

	if err := c.st.Maps.SetActiveGen(newGen); err != nil {
		return abort(err)
	}

	// After the switch: configure new addresses, drop the old generation.
	old := c.cur
	oldGen := c.gen
	sort.Slice(next, func(i, j int) bool { return next[i].Spec.Name < next[j].Spec.Name })
	c.gen, c.cur = newGen, next
	if err := c.configureHost(old, next); err != nil {
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
	if err := veth.DeleteMany(goneNetns); err != nil {
		return plan, err
	}
	if err := c.st.Maps.DeleteGen(oldGen, old); err != nil {
		return plan, err
	}
	if err := c.st.Maps.ResetBcastFilter(next); err != nil {
		return plan, err
	}
	for _, k := range gone {
		if err := c.st.Maps.DeleteCounters(k.ID); err != nil {
			return plan, err
		}
		if err := c.st.Maps.PurgeListeners(k.ID); err != nil {
			return plan, err
		}
	}
	return plan, c.end()
}
