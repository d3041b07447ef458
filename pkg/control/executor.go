package control

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/veth"
)

// run executes script s: its steps in order (see stepKind), each traced
// (L3ISO_TRACE). It fails in one way:
//
//   - before s.commit (the switch, the deletion from the maps), a failure
//     undoes what the script did — the undo of the step that failed too,
//     which may have done part of its work, then those of the steps before
//     it, the last first — and returns the step's error as it is, joined
//     (errors.Join) with the error of every undo that failed: the rollback
//     is then incomplete. The dirty bit stays set either way: stepStop and
//     the unplumbing of the netns containers that go have no undo (their
//     processes are dead), only a repair makes their cgroups and
//     namespaces anew, so the next changing command repairs. A script
//     with s.retry (del, an apply that removes containers) that fails
//     from stepStop on says so: the processes may be dead already
//     ("processes of container "web" stopped, but ...: run `l3iso
//     container del web` again");
//   - after s.commit, nothing is undone: the error says what is done
//     already ("policy switched, but ...") and that the next changing
//     command finishes the rest (the dirty bit stays set);
//   - stepEnd's failure is returned as it is: everything is done but the
//     clearing of the dirty bit, which the next command repeats;
//   - the count of stale sockets never fails a command: once the rest is
//     done, its error is returned with what is done.
func (c *Control) run(s *script, tr *tracer) error {
	if tr == nil {
		tr = trace(s.what)
	}
	c.tr = tr
	defer func() { c.tr = nil }()
	for i, k := range s.steps {
		err := steps[k].do(c, s)
		if err == nil {
			tr.step(k.String())
			continue
		}
		switch {
		case k == stepEnd:
			return err
		case s.commit != stepNone && k > s.commit:
			return fmt.Errorf("%s, but %w (the next l3iso command retries)", s.done, err)
		}
		if s.retry != "" && k >= stepStop {
			// The processes may be dead already (no undo makes
			// them anew): the error says so, and what to run.
			if s.ended {
				err = fmt.Errorf("%s, but %w: %s", s.stopDone, err, s.retry)
			} else if s.prune {
				// (Without --prune, stepStop's refusal says
				// what to do itself.)
				err = fmt.Errorf("%w: %s", err, s.retry)
			}
		}
		errs := []error{err}
		for j := i; j >= 0; j-- {
			if undo := steps[s.steps[j]].undo; undo != nil {
				if uerr := undo(c, s); uerr != nil {
					errs = append(errs, fmt.Errorf("undoing step %q failed too (the next l3iso command repairs): %w", s.steps[j], uerr))
				}
			}
		}
		if len(errs) == 1 {
			return err
		}
		return errors.Join(errs...)
	}
	c.finish(s)
	if s.staleErr != nil {
		return fmt.Errorf("%s, but %w", s.done, s.staleErr)
	}
	return nil
}

// finish updates what c knows of the installed containers after s.
func (c *Control) finish(s *script) {
	if !s.full {
		return
	}
	cur := s.others
	if len(s.come) > 0 {
		cur = append(slices.Clone(s.others), s.come...)
		slices.SortFunc(cur, func(a, b maps.Container) int { return byName(a, b.Spec.Name) })
	}
	c.setCur(cur)
}

// steps are what each kind of step does, and how it is undone (nil:
// nothing to undo).
var steps = [numSteps]struct {
	do   func(*Control, *script) error
	undo func(*Control, *script) error
}{
	stepBegin:       {do: (*Control).doBegin},
	stepCgroups:     {do: (*Control).makeCgroups, undo: (*Control).removeCgroups},
	stepFixCgroups:  {do: (*Control).fixCgroups},
	stepCounters:    {do: func(c *Control, s *script) error { return c.initCounters(s.come) }},
	stepIndex:       {do: (*Control).enterIndex, undo: func(c *Control, s *script) error { return c.leaveIndex(s.come) }},
	stepBuildIndex:  {do: func(c *Control, s *script) error { return c.st.Maps.BuildIndex(s.others) }},
	stepInsert:      {do: (*Control).insert, undo: (*Control).uninsert},
	stepWriteNext:   {do: (*Control).writeNext, undo: func(c *Control, s *script) error { return s.next.gen.Purge() }},
	stepRepairMaps:  {do: func(c *Control, s *script) error { return c.gen.Repair(s.others) }},
	stepStop:        {do: (*Control).stop},
	stepUnconfigure: {do: func(c *Control, s *script) error { return c.hostItems(false, s.remove) }, undo: func(c *Control, s *script) error { return c.hostItems(true, s.remove) }},
	stepUnplumb:     {do: (*Control).unplumbGone, undo: (*Control).regrowAddrs},
	stepRemove:      {do: (*Control).removeGone},
	stepSwitch:      {do: (*Control).switchGen},
	stepConfigure:   {do: func(c *Control, s *script) error { return c.hostItems(true, s.add) }, undo: func(c *Control, s *script) error { return c.hostItems(false, s.add) }},
	stepRepairHost:  {do: func(c *Control, _ *script) error { return c.repairHost() }},
	stepPlumb:       {do: (*Control).plumbCome},
	stepRepairNetns: {do: func(c *Control, _ *script) error { return c.repairNetns() }},
	stepFilter:      {do: func(c *Control, s *script) error { return c.st.Maps.ResetFilters(s.filter) }},
	stepCountStale:  {do: (*Control).countStale},
	stepForget:      {do: (*Control).forget},
	stepPurge:       {do: func(c *Control, s *script) error { return c.st.PurgeListeners(s.free...) }},
	stepEnd:         {do: func(c *Control, _ *script) error { return c.end() }},
}

func (c *Control) doBegin(*script) error { return c.begin() }

// containersCgroup checks, before add or apply runs script s, that the
// containers' parent cgroup `up` made is there when s makes containers'
// cgroups. The egress backstop is attached to it (loader.CgroupOf): one
// removed by hand took the link with it, and making it anew would give
// the new containers no egress check until the next `up`.
func (c *Control) containersCgroup(s *script) error {
	if !slices.Contains(s.steps, stepCgroups) || len(s.come)+len(s.remake) == 0 {
		return nil
	}
	dir := filepath.Join(c.st.Config.CgroupRoot, loader.ContainersDir)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("the containers' cgroup %s is gone (%v), and the egress check of containers with it: run `l3iso up` to make it and attach its program again, then retry", dir, err)
	}
	return nil
}

// makeCgroups makes the cgroups of the containers that come and records
// their ids.
func (c *Control) makeCgroups(s *script) error {
	for j := range s.come {
		id, _, err := cgroup.Make(c.CgroupPath(s.come[j].Spec.Name))
		if err != nil {
			return err
		}
		s.come[j].CgroupID = id
		if s.next != nil {
			s.next.cgid[s.comeAt[j]] = id
		}
	}
	return nil
}

func (c *Control) removeCgroups(s *script) error {
	var errs []error
	for _, k := range s.come {
		errs = append(errs, cgroup.Remove(c.CgroupPath(k.Spec.Name)))
	}
	return errors.Join(errs...)
}

// fixCgroups removes the cgroups of no container (an add that died before
// its metadata was written, or a delete that died after) and makes anew
// those of containers whose cgroup vanished (removed by hand), or that a
// command died removing after it killed the processes (a del, or an apply
// that removed the container, rolled back here): the kernel would kill
// whatever is cloned into it (see cgroup.Killed). Unless processes joined
// it since (through cgroup.procs, as `l3iso exec` does): those the repair
// does not kill; a later repair finds the cgroup empty.
func (c *Control) fixCgroups(s *script) error {
	for _, p := range s.orphans {
		if err := cgroup.Remove(p); err != nil {
			return err
		}
	}
	for _, i := range s.killed {
		if err := cgroup.Remove(c.CgroupPath(s.others[i].Spec.Name)); err != nil {
			return err
		}
	}
	for _, i := range s.remake {
		k := &s.others[i]
		path := c.CgroupPath(k.Spec.Name)
		if err := cgroup.Create(path); err != nil {
			return err
		}
		var err error
		if k.CgroupID, err = cgroup.ID(path); err != nil {
			return err
		}
	}
	return nil
}

// initCounters zeroes the counters of cs and gives their ids a new socket
// epoch (maps.Set.InitCounters). stepCounters has no undo: after a rollback
// the ids of what came are free, and the next container to take one gets
// this same step first; nothing reads the counters of a free id.
func (c *Control) initCounters(cs []maps.Container) error {
	return c.st.Maps.InitCounters(ids(cs)...)
}

func ids(cs []maps.Container) []uint32 {
	out := make([]uint32, 0, len(cs))
	for _, k := range cs {
		out = append(out, k.ID)
	}
	return out
}

// enterIndex enters the containers that come in the index, before their
// metadata exists (maps/index.go).
func (c *Control) enterIndex(s *script) error {
	if x := c.st.Maps.Index(); x != nil {
		return x.Add(s.come...)
	}
	return nil
}

// leaveIndex removes containers from the index, once their metadata is
// gone.
func (c *Control) leaveIndex(cs []maps.Container) error {
	if x := c.st.Maps.Index(); x != nil {
		return x.Remove(cs...)
	}
	return nil
}

func (c *Control) insert(s *script) error { return c.gen.Insert(s.come...) }

func (c *Control) uninsert(s *script) error {
	var errs []error
	for _, k := range s.come {
		errs = append(errs, c.gen.Remove(k, s.keep))
	}
	return errors.Join(errs...)
}

func (c *Control) writeNext(s *script) error {
	return s.next.gen.Write(s.next.slot, s.next.all())
}

// stop ends the processes of the containers that go, all at once (one
// grace period for all), and removes their cgroups: they end while they
// are still containers (a command that dies during the grace period leaves
// them containers), and nothing can join them after. Without s.prune it
// ends nothing: a container that gained a process since the plan was made
// refuses the command.
func (c *Control) stop(s *script) error {
	if !s.prune {
		running, err := c.running(s.gone)
		if err != nil {
			return err
		}
		if len(running) > 0 {
			return pruneError(running, s.grace)
		}
	}
	paths := make([]string, len(s.gone))
	for i, k := range s.gone {
		paths[i] = c.CgroupPath(k.Spec.Name)
	}
	var err error
	if s.stopped, err = cgroup.Stop(paths, s.grace); err != nil {
		return err
	}
	s.ended = true
	for _, p := range paths {
		if err := cgroup.RemoveTree(p); err != nil {
			return err
		}
	}
	return nil
}

// unplumbGone removes the namespaces of the netns containers that go
// (their sockets read first, for the count of stale ones) and, from those
// whose addresses change, the addresses they lose: while the maps still
// own them.
func (c *Control) unplumbGone(s *script) error {
	for _, k := range s.gone {
		if !isNetns(k) {
			continue
		}
		s.lose.readNetns(c, k)
		if err := c.unplumb(k, s.wait); err != nil {
			return err
		}
		if !s.wait && !k.Spec.Adopted { // its veth is gone already, its namespace not l3iso's
			s.goneNetns = append(s.goneNetns, c.key(k.Spec.Name))
		}
	}
	for _, r := range s.readdressed {
		if err := c.shrinkAddrs(r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// regrowAddrs gives the netns containers whose addresses change their
// installed addresses back (stepUnplumb's undo): the maps still own them.
// The namespaces of the containers that went are not made anew: their
// processes are dead; the repair the dirty bit calls for makes them.
func (c *Control) regrowAddrs(s *script) error {
	var errs []error
	for _, r := range s.readdressed {
		if err := c.growAddrs(r[0]); err != nil {
			errs = append(errs, fmt.Errorf("giving container %q its addresses back: %w", r[0].Spec.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Control) removeGone(s *script) error {
	for _, k := range s.gone {
		if err := c.gen.Remove(k, s.keep); err != nil {
			return err
		}
	}
	return nil
}

// switchGen makes the next generation the active one. The old one stays as
// it is: the next apply writes over it. The containers are read again if
// this Control needs them.
func (c *Control) switchGen(s *script) error {
	if err := c.st.Maps.Switch(s.next.gen); err != nil {
		return err
	}
	c.gen = s.next.gen
	c.cur, c.loaded, c.byName = nil, false, nil
	return nil
}

// plumbCome deletes what is left of the namespaces of netns containers that
// went — one whose process died with a TCP connection that cannot finish
// closing (an orphan socket holds its namespace) keeps its veth and the
// host routes on it, which a container taking its address would collide
// with; DeleteMany deletes such a veth itself —, then makes the namespaces
// of those that come, and gives those whose addresses change all of them:
// now that the maps own them. (Making them one after the other: workers in
// parallel gained nothing measurable, the kernel serialises namespace and
// link creation.)
func (c *Control) plumbCome(s *script) error {
	if err := veth.DeleteMany(s.goneNetns); err != nil {
		return err
	}
	for _, k := range s.come {
		if !isNetns(k) {
			continue
		}
		ep, err := c.plumb(k, s.attach)
		if err != nil && s.next != nil { // an apply says whose
			err = fmt.Errorf("creating the network namespace of container %q failed: %w", k.Spec.Name, err)
		}
		if err != nil {
			return err
		}
		s.attached = ep
	}
	for _, r := range s.readdressed {
		if err := c.growAddrs(r[1]); err != nil {
			return fmt.Errorf("configuring the addresses of container %q failed: %w", r[1].Spec.Name, err)
		}
	}
	return nil
}

// countStale counts the sockets left on what went, before the listeners
// of the containers that went are purged. Its failure is reported once the
// rest is done.
func (c *Control) countStale(s *script) error {
	s.stale, s.staleErr = s.lose.count(c, slices.Collect(s.owners))
	return nil
}

// forget zeroes the counters of the containers that went, purges what
// their sockets left in the registries (their release hooks emptied them;
// what a crash of ours or a race could leave), and removes them from the
// index, now that their metadata is gone.
func (c *Control) forget(s *script) error {
	if err := c.initCounters(s.gone); err != nil {
		return err
	}
	if err := c.st.PurgeListeners(ids(s.gone)...); err != nil {
		return err
	}
	return c.leaveIndex(s.gone)
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
