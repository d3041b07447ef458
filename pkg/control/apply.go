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
	// neighbour, an address it reaches through a route; see askHost) —
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
	f := applyFacts{fileConts: len(p.Containers)}
	if !o.dropAdopted {
		var err error
		if p, err = c.withAdopted(p); err != nil {
			return Plan{}, err
		}
	}
	tr.step("validate")
	var err error
	if f.sv, err = c.survey(p); err != nil {
		return Plan{}, err
	}
	tr.step("read containers")
	if f.running, err = c.running(f.sv.removed()); err != nil {
		return Plan{}, err
	}
	if f.uses, err = lookupHostUses(askHost(f.sv.installed(), f.sv.checking()).ips); err != nil {
		return Plan{}, err
	}
	tr.step("check host")
	s, plan, err := planApply(f, o)
	tr.step("plan")
	if err != nil || s == nil {
		if err == nil && o.DryRun && !plan.Empty() {
			plan.Stale, err = f.sv.losing().countPlanned(c, slices.Collect(f.sv.installed()), plan.Running)
		}
		return plan, err
	}
	if err = c.containersCgroup(s); err == nil {
		err = c.run(s, tr)
	}
	plan.Stale = s.stale
	for i, st := range s.stopped {
		if st.Procs > 0 {
			if plan.Stopped == nil {
				plan.Stopped = map[string]cgroup.Stopped{}
			}
			plan.Stopped[s.gone[i].Spec.Name] = st
		}
	}
	return plan, err
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
	gone []bool     // by olds: not in the policy
	used []bool     // by id: in use
	gen  maps.Gen   // the generation the apply writes: the inactive one
	slot *maps.Slot // what it holds
	dup  string     // a name two installed containers have
}

// survey reads the installed containers against policy p (validated:
// sorted by name).
func (c *Control) survey(p *policy.Policy) (*survey, error) {
	next, err := c.st.Maps.Inactive()
	if err != nil {
		return nil, err
	}
	sv := newSurvey(p, next)
	if err := c.gen.Scan(sv.slot, func(m maps.Meta) { sv.see(m) }); err != nil {
		return nil, err
	}
	return sv, sv.done()
}

// installedMeta is the view of an installed container's metadata that a
// survey reads (maps.Meta).
type installedMeta interface {
	ID() uint32
	CgroupID() uint64
	Name() string
	Is(maps.Container) bool    // the metadata is exactly what this container's would be
	Container() maps.Container // decoded
}

// newSurvey starts a survey of the installed containers against policy p,
// for an apply that writes generation next (the inactive one; the zero Gen
// in tests that plan only).
func newSurvey(p *policy.Policy, next maps.Gen) *survey {
	pc := p.Containers
	sv := &survey{
		p: p, id: make([]uint32, len(pc)), cgid: make([]uint64, len(pc)), old: make([]int32, len(pc)),
		used: make([]bool, maps.MaxContainers+1), gen: next,
	}
	if next != (maps.Gen{}) {
		sv.slot = next.NewSlot()
	}
	for i := range sv.old {
		sv.old[i] = -1
	}
	return sv
}

// see takes in one installed container, decoding it only if the policy
// does not have it exactly.
func (sv *survey) see(m installedMeta) {
	pc := sv.p.Containers
	if int(m.ID()) < len(sv.used) {
		sv.used[m.ID()] = true
	}
	i, found := slices.BinarySearchFunc(pc, m.Name(), byPolicyName)
	if !found {
		sv.olds, sv.gone = append(sv.olds, m.Container()), append(sv.gone, true)
		return
	}
	if sv.id[i] != 0 {
		sv.dup = pc[i].Name
		return
	}
	sv.id[i], sv.cgid[i] = m.ID(), m.CgroupID()
	if !m.Is(sv.next(i)) {
		sv.old[i] = int32(len(sv.olds))
		sv.olds, sv.gone = append(sv.olds, m.Container()), append(sv.gone, false)
	}
}

// done finishes the survey once every installed container was seen.
func (sv *survey) done() error {
	if sv.dup != "" {
		return fmt.Errorf("two installed containers are called %q: run `l3iso up` to repair the installation", sv.dup)
	}
	slices.SortFunc(sv.olds, func(a, b maps.Container) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	// (gone and old follow olds: recompute them after the sort.)
	for j := range sv.gone {
		sv.gone[j] = true
	}
	for j, k := range sv.olds {
		if i, found := slices.BinarySearchFunc(sv.p.Containers, k.Spec.Name, byPolicyName); found {
			sv.old[i], sv.gone[j] = int32(j), false
		}
	}
	return nil
}

func byPolicyName(c policy.Container, name string) int { return strings.Compare(c.Name, name) }

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

// diff is the plan's list of changes: policy.Diff of the containers that
// are not exactly as installed (Diff leaves identical ones out; it sees
// each name on its own).
func (sv *survey) diff() []policy.Change {
	var oldDiff, newDiff []policy.Container
	for _, k := range sv.olds {
		oldDiff = append(oldDiff, k.Spec)
	}
	for i, spec := range sv.p.Containers {
		if sv.id[i] == 0 || sv.old[i] >= 0 {
			newDiff = append(newDiff, spec)
		}
	}
	return policy.Diff(&policy.Policy{Containers: oldDiff}, &policy.Policy{Containers: newDiff})
}

// removed lists the installed containers the policy does not have.
func (sv *survey) removed() []maps.Container {
	var out []maps.Container
	for j, k := range sv.olds {
		if sv.gone[j] {
			out = append(out, k)
		}
	}
	return out
}

// checking are the containers whose addresses the host must not have
// already: those that come or change (an unchanged shared container's are
// l3iso's), and every netns container's (they are not l3iso's on the
// host). Call it before planApply gives the new ones their ids.
func (sv *survey) checking() []policy.Container {
	var out []policy.Container
	for i, spec := range sv.p.Containers {
		j := sv.old[i]
		if sv.id[i] == 0 || spec.Mode == policy.ModeNetns && !spec.Adopted || (j >= 0 && !slices.Equal(sv.olds[j].Spec.Addresses, spec.Addresses)) {
			out = append(out, spec)
		}
	}
	return out
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
