package control

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Every command that changes the installation — container add, del,
// apply, a repair, the CNI plugin's ADD, DEL and GC — is planned, then
// executed:
//
//   - a planner (planAdd, planDel, planApply, planRepair) turns what is
//     installed, read beforehand (the facts), and what is wanted into a
//     script: the containers that come and go, the host items to add and
//     remove, and the kinds of step that make it so. Planners compute only:
//     they read nothing and change nothing, and plan_test.go tests them
//     without root;
//   - the executor (run, executor.go) runs a script's steps, each of which
//     has its own undo, in the one order below, and fails in one way.
//
// The order of the step kinds is the order every command runs them in:
// it is where docs/DESIGN.md's rule 9 (an address is owned in the maps before
// the host or a namespace has it, and leaves them before it leaves the
// maps) and the generation switch are written, once. A planner lists the
// kinds its command needs; the script keeps them in this order.

// stepKind is one kind of step; see steps for what each does.
type stepKind int

const (
	stepNone stepKind = iota

	// The dirty bit first: a command that dies from here on leaves it
	// set, and the next changing command repairs (reconcile).
	stepBegin

	// What comes is made, and owned in the maps, before anything uses it.
	stepCgroups    // make the cgroups of the containers that come
	stepFixCgroups // repair: remove cgroups of no container, make missing ones anew
	stepCounters   // zero the counters of the containers that come (a new socket epoch)
	stepIndex      // enter the containers that come in the index, before their metadata exists
	stepBuildIndex // repair: the index holds exactly the active generation's containers
	stepInsert     // write the containers that come into the active generation (ownership first)
	stepWriteNext  // write the inactive generation: the next policy, by difference
	stepRepairMaps // repair: the active generation holds exactly the containers' entries

	// What goes stops, and leaves the host, while the maps still own it.
	stepStop        // end the processes of the containers that go, remove their cgroups
	stepUnconfigure // remove the host items that go
	stepUnplumb     // netns containers that go lose their namespace; those that lose addresses lose them

	// Ownership changes.
	stepRemove // delete the container that goes from the active generation
	stepSwitch // make the inactive generation the active one: one 4-byte store

	// What comes is configured where the maps own it already.
	stepConfigure   // add the host items that come
	stepRepairHost  // repair: the host items the active policy needs, and only those
	stepPlumb       // delete the namespaces of netns containers that went; make those that come; add addresses
	stepRepairNetns // repair: every netns container's namespace, veth and wiring
	stepFilter      // the filters (maps.ResetFilters): exactly the broadcast addresses and IPs of the containers that stay
	stepCountStale  // count the sockets left on the addresses that went (reported, never a failure)
	stepForget      // zero the counters of the containers that went, purge their listeners, leave the index
	stepPurge       // repair: the listener registries hold only ids of containers (what a failed stepForget left)
	stepEnd         // clear the dirty bit
	numSteps
)

// stepNames are the steps as the trace (L3ISO_TRACE) names them.
var stepNames = [numSteps]string{
	stepBegin: "begin", stepCgroups: "cgroups", stepFixCgroups: "cgroups", stepCounters: "counters",
	stepIndex: "index", stepBuildIndex: "index", stepInsert: "maps", stepWriteNext: "write next generation",
	stepRepairMaps: "maps", stepStop: "stop removed", stepUnconfigure: "unconfigure host",
	stepUnplumb: "netns before", stepRemove: "maps", stepSwitch: "switch", stepConfigure: "configure host",
	stepRepairHost: "host", stepPlumb: "netns", stepRepairNetns: "netns", stepFilter: "filters",
	stepCountStale: "stale sockets", stepForget: "counters, listeners, index", stepPurge: "listeners",
	stepEnd: "end",
}

func (k stepKind) String() string {
	if k > stepNone && k < numSteps {
		return stepNames[k]
	}
	return fmt.Sprintf("step(%d)", int(k))
}

// script is what a planner decided: the steps, in the executor's order,
// and what they act on.
type script struct {
	what  string     // the command, for the trace
	steps []stepKind // ascending: the executor's order
	// commit is the step after which a failure is no longer undone: the
	// switch, or the deletion from the maps (stepNone: every failure is).
	// done says what is true once it ran ("policy switched").
	commit stepKind
	done   string

	come []maps.Container // containers that come: ids chosen; stepCgroups fills in cgroup ids
	gone []maps.Container // containers that go
	// readdressed are netns containers whose addresses change: their
	// installed version and the next.
	readdressed [][2]maps.Container
	add, remove []hostItem  // host items that come and go
	keep        maps.Shared // stepInsert's undo, stepRemove: the markers others share with what comes or goes

	// stopDone says what is true once stepStop ended the processes, and
	// retry what to run, should it or a later step before the commit fail
	// (del, an apply that removes containers: the processes cannot come
	// back; "" for none).
	stopDone, retry string

	grace time.Duration // stepStop: between SIGTERM and SIGKILL
	prune bool          // stepStop: end processes that joined since the plan (else refuse)
	wait  bool          // stepUnplumb: wait for the kernel to destroy the veths (else stepPlumb does)

	next   *survey                  // apply: the policy and its next generation
	comeAt []int                    // apply: where each of come is in next
	filter iter.Seq[maps.Container] // stepFilter: the containers that stay
	lose   *losing                  // what the sockets lose: read by stepUnplumb, counted by stepCountStale
	owners iter.Seq[maps.Container] // stepCountStale: whose cgroups sockets are attributed to
	attach *Attachment              // stepPlumb of an adopted container: the runtime's namespace
	// others are the installed containers the script leaves as they are,
	// when the planner knew them all (nil otherwise): with come and
	// without gone, what is installed after it.
	others []maps.Container
	full   bool

	// repair (stepFixCgroups, stepPurge)
	orphans []string // cgroups of no container
	remake  []int    // containers (in others) whose cgroup is made anew
	killed  []int    // of those, the ones whose killed, empty cgroup goes first
	free    []uint32 // the ids of no container: purged from the listener registries

	// What the executor found: the processes each container that went had
	// (by gone), the sockets left, the adopted container's veth.
	stopped   []cgroup.Stopped
	ended     bool // stepStop ended the processes (and went on to remove the cgroups)
	stale     []Stale
	staleErr  error
	goneNetns []string // keys of the netns containers whose veths stepPlumb deletes
	attached  *veth.Endpoint
}

// has reports whether the script has a step of kind k.
func (s *script) has(k stepKind) bool {
	_, ok := slices.BinarySearch(s.steps, k)
	return ok
}

// with adds steps (in any order; kinds it has already are not doubled).
func (s *script) with(ks ...stepKind) *script {
	for _, k := range ks {
		if i, ok := slices.BinarySearch(s.steps, k); !ok {
			s.steps = slices.Insert(s.steps, i, k)
		}
	}
	return s
}

// withIf is with, if ok.
func (s *script) withIf(ok bool, ks ...stepKind) *script {
	if ok {
		s.with(ks...)
	}
	return s
}

// errFull says a planner could not decide from the fast path's facts: the
// command needs every installed container read (and the planner again).
var errFull = errors.New("needs every container")

// ------------------------------------------------------------------ add

// addFacts is what an add knows of the installed containers: all of them
// (the full view), or — the fast path, which costs the same next to 10,000
// containers as next to none — only what the index and l3_owners say about
// the new container's name and addresses.
type addFacts struct {
	all []maps.Container // the full view: every installed container, by name; nil on the fast path

	// The fast path's answers.
	nameUsed bool         // the index has the name, or a cgroup of that name exists
	owned    bool         // a container owns one of its addresses, or ports of one
	shared   []netip.Addr // broadcast addresses of its subnets that other containers are on

	free uint32                 // the lowest free id; 0: none is free
	uses map[netip.Addr]hostUse // what the host uses its addresses for (askHost)
}

// planAdd plans the add of container spec (modes defaulted). On the fast
// path it returns errFull for everything but a container that conflicts
// with nothing: the full view words the errors.
func planAdd(spec policy.Container, o AddOptions, f addFacts) (*script, error) {
	full := f.all != nil
	if !full {
		if f.nameUsed || f.owned || (&policy.Policy{Containers: []policy.Container{spec}}).Validate() != nil {
			return nil, errFull
		}
	} else {
		if _, found := slices.BinarySearchFunc(f.all, spec.Name, byName); found {
			return nil, fmt.Errorf("container %q already exists: delete it first or choose another name", spec.Name)
		}
		p := &policy.Policy{Containers: make([]policy.Container, 0, len(f.all)+1)}
		for _, k := range f.all {
			p.Containers = append(p.Containers, k.Spec)
		}
		p.Containers = append(p.Containers, spec)
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	if err := askHost(slices.Values(f.all), []policy.Container{spec}).refusal(f.uses, o.Force); err != nil {
		return nil, err
	}
	if f.free == 0 {
		return nil, tooMany()
	}
	k := maps.Container{ID: f.free, Spec: spec}
	s := &script{what: "add", come: []maps.Container{k}}
	if full {
		// What k shares with the others stays when an undo removes it;
		// what the host has for them already is not added.
		s.keep = sharedWith(k, slices.Values(f.all))
		_, s.add = hostDiff(nil, s.come, slices.Values(f.all))
		s.others, s.full = f.all, true
	} else {
		// Its addresses are nobody's, so no host item of them is l3iso's
		// already; its subnets' broadcast routes may be (f.shared).
		s.keep = maps.Shared{Broadcasts: f.shared}
		mine := desired(s.come)
		for _, b := range f.shared {
			delete(mine, hostItem{kind: itemBcast4, ip: b, onLo: true})
		}
		s.add = items(mine)
	}
	s.with(stepBegin, stepCgroups, stepCounters, stepIndex, stepInsert, stepEnd).
		withIf(len(s.add) > 0, stepConfigure).
		withIf(isNetns(k), stepPlumb)
	return s, nil
}

// ------------------------------------------------------------------ del

// delFacts is what a del knows of the installed containers besides the one
// that goes: the others (full), or nothing (the fast path: enough for a
// container that shares nothing with them, see sole).
type delFacts struct {
	rest []maps.Container // every other installed container, by name; nil on the fast path
	full bool
}

// planDel plans the removal of container k, its processes given grace.
// On the fast path it returns errFull for a container that shares
// something (see sole).
func planDel(k maps.Container, grace time.Duration, f delFacts) (*script, error) {
	if !f.full && !sole(k) {
		return nil, errFull
	}
	s := &script{
		what: "del", gone: []maps.Container{k}, grace: grace, prune: true, wait: true,
		commit: stepRemove, done: fmt.Sprintf("container %q deleted", k.Spec.Name),
		stopDone: fmt.Sprintf("processes of container %q stopped", k.Spec.Name),
		retry:    fmt.Sprintf("run `l3iso container del %s` again", k.Spec.Name),
		lose:     newLosing(), owners: slices.Values(append(slices.Clip(f.rest), k)),
	}
	s.lose.loses(k, nil)
	if f.full {
		s.remove, _ = hostDiff(s.gone, nil, slices.Values(f.rest))
		s.keep = sharedWith(k, slices.Values(f.rest))
		s.others, s.full = f.rest, true
		if hasSubnet(k) {
			s.filter = slices.Values(f.rest)
			s.with(stepFilter)
		}
	} else {
		// Every host item of k is its own: whole IPs, no subnet.
		s.remove = items(desired(s.gone))
	}
	s.with(stepBegin, stepStop, stepRemove, stepCountStale, stepForget, stepEnd).
		withIf(len(s.remove) > 0, stepUnconfigure).
		withIf(isNetns(k), stepUnplumb)
	return s, nil
}

// sole reports whether k shares nothing with other containers that its
// deletion would have to look at: no port range of an IP (others may have
// ranges of it) and no subnet (others may be on it).
func sole(k maps.Container) bool {
	for _, a := range k.Spec.Addresses {
		if !a.WholeIP() {
			return false
		}
	}
	return !hasSubnet(k)
}

func hasSubnet(k maps.Container) bool {
	for _, a := range k.Spec.Addresses {
		if _, ok := a.Broadcast(); ok {
			return true
		}
	}
	return false
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

// ---------------------------------------------------------------- apply

// applyFacts is what an apply knows: the installed containers next to the
// policy (survey), the processes of those the policy removes, what the
// host uses the addresses for that askHost(sv.installed(), sv.checking())
// asks about, and how many containers the policy file had (without the
// adopted ones, which every apply carries over).
type applyFacts struct {
	sv        *survey
	running   map[string]int
	uses      map[netip.Addr]hostUse
	fileConts int
}

// planApply plans an apply of the policy of f.sv. It returns the Plan (the
// report) with every refusal, and a script unless o.DryRun or there is
// nothing to change. It gives the containers that come their ids in f.sv.
func planApply(f applyFacts, o ApplyOptions) (*script, Plan, error) {
	sv := f.sv
	pc := sv.p.Containers
	plan := Plan{Changes: sv.diff()}
	for i, spec := range pc {
		if j := sv.old[i]; j >= 0 && sv.olds[j].Spec.Mode != spec.Mode {
			return nil, plan, fmt.Errorf("container %q: its mode cannot change from %s to %s while it exists (its processes cannot move to another network stack): delete it first (remove it from the policy and apply), then add it with the new mode", spec.Name, sv.olds[j].Spec.Mode, spec.Mode)
		}
	}
	gone := sv.removed()
	plan.Running = f.running
	if f.fileConts == 0 && !o.AllowEmpty {
		return nil, plan, emptyPolicyError(len(gone), plan.Running)
	}
	if len(plan.Running) > 0 && !o.Prune {
		return nil, plan, pruneError(plan.Running, o.Grace)
	}
	if err := askHost(sv.installed(), sv.checking()).refusal(f.uses, o.Force); err != nil {
		return nil, plan, err
	}
	if o.DryRun || plan.Empty() {
		return nil, plan, nil
	}

	// The next generation: the policy's containers, survivors with their
	// id, cgroup and counters (sv.next); new ones get free ids.
	n := 0
	for i := range pc {
		if sv.id[i] == 0 {
			n++
		}
	}
	ids, err := freeIn(sv.used, n)
	if err != nil {
		return nil, plan, err
	}
	s := &script{
		what: "apply", gone: gone, next: sv, grace: o.Grace, prune: o.Prune,
		commit: stepSwitch, done: "policy switched", lose: sv.losing(), filter: sv.all(),
	}
	if len(gone) > 0 {
		// Once stepStop ran, a failure before the switch leaves the
		// old policy with these containers' processes ended.
		q := make([]string, len(gone))
		for i, k := range gone {
			q[i] = strconv.Quote(k.Spec.Name)
		}
		what, flag := "container", ""
		if len(q) > 1 {
			what = "containers"
		}
		if o.Prune {
			flag = " --prune"
		}
		s.stopDone = fmt.Sprintf("processes of %s %s (removed by the policy) stopped", what, strings.Join(q, ", "))
		s.retry = fmt.Sprintf("the policy is not switched: run the same `l3iso apply%s` again", flag)
	}
	s.owners = func(yield func(maps.Container) bool) {
		for _, k := range gone {
			if !yield(k) {
				return
			}
		}
		sv.all()(yield)
	}
	fresh := make([]bool, len(pc))
	for i := range pc {
		if sv.id[i] == 0 {
			sv.id[i], ids = ids[0], ids[1:]
			fresh[i] = true
			s.come, s.comeAt = append(s.come, sv.next(i)), append(s.comeAt, i)
		}
	}
	s.remove, s.add = hostChanges(sv, gone, fresh)
	s.readdressed = sv.readdressed()
	goneNetns := slices.ContainsFunc(gone, isNetns)
	s.with(stepBegin, stepWriteNext, stepSwitch, stepFilter, stepCountStale, stepEnd).
		withIf(len(s.come) > 0, stepCgroups, stepCounters, stepIndex).
		withIf(len(gone) > 0, stepStop, stepForget).
		withIf(len(s.remove) > 0, stepUnconfigure).
		withIf(len(s.add) > 0, stepConfigure).
		withIf(goneNetns || len(s.readdressed) > 0, stepUnplumb).
		withIf(goneNetns || len(s.readdressed) > 0 || slices.ContainsFunc(s.come, isNetns), stepPlumb)
	return s, plan, nil
}

// hostChanges is what an apply changes on the host: the items of the
// containers that go, come (fresh) or change, against those of the others
// (hostDiff).
func hostChanges(sv *survey, gone []maps.Container, fresh []bool) (remove, add []hostItem) {
	before := slices.Clone(gone)
	var after []maps.Container
	same := make([]bool, len(fresh)) // its host items stay
	for i := range fresh {
		switch j := sv.old[i]; {
		case fresh[i]:
			after = append(after, sv.next(i))
		case j < 0 || sameItems(sv.olds[j], sv.next(i)):
			same[i] = true
		default:
			before, after = append(before, sv.olds[j]), append(after, sv.next(i))
		}
	}
	return hostDiff(before, after, func(yield func(maps.Container) bool) {
		for i := range same {
			if same[i] && !yield(sv.next(i)) {
				return
			}
		}
	})
}

// readdressed are the netns containers of the policy whose addresses
// change: their installed version and the next.
func (sv *survey) readdressed() [][2]maps.Container {
	var out [][2]maps.Container
	for i, spec := range sv.p.Containers {
		if j := sv.old[i]; j >= 0 && spec.Mode == policy.ModeNetns && !sameAddrs(vethAddrs(sv.olds[j]), vethAddrs(sv.next(i))) {
			out = append(out, [2]maps.Container{sv.olds[j], sv.next(i)})
		}
	}
	return out
}

// --------------------------------------------------------------- repair

// repairFacts is what a repair reads: the active generation's containers
// (the source of truth), the cgroups below the containers' directory that
// belong to none, and each container's cgroup as it is.
type repairFacts struct {
	cur     []maps.Container
	orphans []string      // cgroup paths
	cgroups []cgroupState // by cur
}

// cgroupState is a container's cgroup as a repair finds it.
type cgroupState struct {
	id     uint64 // 0: missing (or unreadable)
	killed bool   // cgroup.Killed, and empty: a command died removing it
}

// planRepair plans the repair of an installation from l3_metas: a
// container is there (then everything it needs is made to exist) or it is
// not (then nothing of it may remain: ids of no container leave the
// listener registries, which a failed stepForget may have left them in;
// their counters are zeroed when an add takes the id again).
func planRepair(f repairFacts) *script {
	s := &script{what: "repair", orphans: f.orphans, others: f.cur, full: true}
	taken := make([]bool, maps.MaxContainers+1)
	for _, k := range f.cur {
		if int(k.ID) < len(taken) {
			taken[k.ID] = true
		}
	}
	for id := 1; id < len(taken); id++ {
		if !taken[id] {
			s.free = append(s.free, uint32(id))
		}
	}
	for i, k := range f.cur {
		st := f.cgroups[i]
		if st.killed {
			s.killed = append(s.killed, i)
		}
		if st.killed || st.id == 0 || st.id != k.CgroupID {
			s.remake = append(s.remake, i)
		}
	}
	return s.with(stepFixCgroups, stepBuildIndex, stepRepairMaps, stepRepairHost, stepRepairNetns, stepPurge, stepEnd)
}

// -------------------------------------------------------------- helpers

// askHost is what an add or apply asks of the host about the containers adding:
// the addresses to look up — those l3iso did not configure already — with
// the container each belongs to. cur are the installed containers: what
// l3iso configured is theirs, and an address an installed netns container
// has is not checked again for use (it was, or forced, when it came).
func askHost(cur iter.Seq[maps.Container], adding []policy.Container) hostQuestion {
	q := hostQuestion{owner: map[netip.Addr]string{}} // the last container that has it
	for _, spec := range adding {
		// netns containers too: the host routes their addresses to their
		// veth, which a local address would override.
		for _, a := range spec.Addresses {
			q.owner[a.Addr] = spec.Name
		}
	}
	if len(q.owner) == 0 {
		return q
	}
	q.installed = map[netip.Addr]bool{}
	for k := range cur {
		eachItem(k, func(h hostItem) { delete(q.owner, h.ip) })
		if isNetns(k) {
			for _, a := range k.Spec.Addresses {
				q.installed[a.Addr] = true
			}
		}
	}
	seen := make(map[netip.Addr]bool, len(q.owner))
	for _, spec := range adding { // in the policy's order: the first error is the first address
		for _, a := range spec.Addresses {
			if _, ok := q.owner[a.Addr]; ok && !seen[a.Addr] {
				seen[a.Addr] = true
				q.ips = append(q.ips, a.Addr)
			}
		}
	}
	return q
}

// hostQuestion is what askHost asks: the addresses to look up
// (lookupHostUses), whose each is, and which an installed netns container
// has.
type hostQuestion struct {
	ips       []netip.Addr
	owner     map[netip.Addr]string
	installed map[netip.Addr]bool
}

// refusal is the refusal of the first address the host uses (nil if none),
// given what it uses them for: one of its own, which taking would break a
// running service, and — unless force — one it reaches or is reached by (a
// gateway, a neighbour, a machine behind a route), which taking would cut
// the host off from.
func (q hostQuestion) refusal(uses map[netip.Addr]hostUse, force bool) error {
	return hostUseError(q.ips, uses, q.owner, func(ip netip.Addr) bool { return force || q.installed[ip] })
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
		return nil, tooMany()
	}
	return out, nil
}

func tooMany() error {
	return fmt.Errorf("too many containers: l3iso supports %d; delete some first", maps.MaxContainers)
}

// lowestFree is the lowest id none of used has, 0 if none is free.
func lowestFree(used []maps.Container) uint32 {
	taken := make([]bool, maps.MaxContainers+1)
	for _, k := range used {
		if int(k.ID) < len(taken) {
			taken[k.ID] = true
		}
	}
	ids, err := freeIn(taken, 1)
	if err != nil {
		return 0
	}
	return ids[0]
}

func byName(k maps.Container, name string) int { return strings.Compare(k.Spec.Name, name) }

func items(m map[hostItem]bool) []hostItem {
	out := make([]hostItem, 0, len(m))
	for h := range m {
		out = append(out, h)
	}
	return out
}
