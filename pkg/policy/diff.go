package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// The kinds of Change.
const (
	ChangeAdd    = "add"
	ChangeDel    = "del"
	ChangeModify = "modify"
)

// Change is what happens to one container when a policy replaces another.
type Change struct {
	// Kind is ChangeAdd, ChangeDel or ChangeModify.
	Kind string
	// Name is the container's name.
	Name string
	// Mode is the added container's mode (ChangeAdd only).
	Mode Mode
	// Details lists, for ChangeAdd, the container's addresses followed by
	// "loopback host" and "multicast GROUP" entries where they apply; for
	// ChangeModify, each difference ("mode shared -> netns", "+addr X",
	// "-addr X", "addresses reordered: X, Y", "loopback isolated -> host",
	// "+multicast G", "-multicast G"). It is empty for ChangeDel.
	Details []string
}

// String renders the change for people, one line, e.g. an addition
// `+ container "web" (shared): 10.77.0.1/24, fd77::1`, a modification
// `~ container "db": +addr 10.77.0.3, -addr 10.77.0.2, loopback isolated -> host`
// or a deletion `- container "old"`.
func (c Change) String() string {
	switch c.Kind {
	case ChangeAdd:
		s := fmt.Sprintf("+ container %q (%s)", c.Name, c.Mode)
		if len(c.Details) > 0 {
			s += ": " + strings.Join(c.Details, ", ")
		}
		return s
	case ChangeDel:
		return fmt.Sprintf("- container %q", c.Name)
	case ChangeModify:
		return fmt.Sprintf("~ container %q: %s", c.Name, strings.Join(c.Details, ", "))
	}
	return fmt.Sprintf("? container %q: %s %s", c.Name, c.Kind, strings.Join(c.Details, ", "))
}

// Diff returns what changes when policy new replaces policy old, one Change
// per added, deleted or modified container, in container name order.
// Unchanged containers are left out. Either policy may be nil (empty).
// Address order is significant (it decides the primary address), so a mere
// reordering is a modification; multicast order is not.
func Diff(old, new *Policy) []Change {
	if changes, ok := diffSorted(old, new); ok {
		return changes
	}
	byName := func(p *Policy) map[string]*Container {
		if p == nil {
			return map[string]*Container{}
		}
		m := make(map[string]*Container, len(p.Containers))
		for i := range p.Containers {
			m[p.Containers[i].Name] = &p.Containers[i]
		}
		return m
	}
	olds, news := byName(old), byName(new)
	names := make([]string, 0, len(olds)+len(news))
	for n := range olds {
		names = append(names, n)
	}
	for n := range news {
		if _, ok := olds[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)

	var changes []Change
	for _, name := range names {
		o, n := olds[name], news[name]
		switch {
		case o == nil:
			changes = append(changes, Change{Kind: ChangeAdd, Name: name, Mode: modeOf(n), Details: describeContainer(n)})
		case n == nil:
			changes = append(changes, Change{Kind: ChangeDel, Name: name})
		default:
			if d := diffContainer(o, n); len(d) > 0 {
				changes = append(changes, Change{Kind: ChangeModify, Name: name, Details: d})
			}
		}
	}
	return changes
}

func modeOf(c *Container) Mode {
	if c.Mode == "" {
		return ModeShared
	}
	return c.Mode
}

func loopbackOf(c *Container) Loopback {
	if c.Loopback == "" {
		return LoopbackIsolated
	}
	return c.Loopback
}

func describeContainer(c *Container) []string {
	var d []string
	for _, a := range c.Addresses {
		d = append(d, a.String())
	}
	if loopbackOf(c) != LoopbackIsolated {
		d = append(d, "loopback "+string(loopbackOf(c)))
	}
	for _, g := range c.Multicast {
		d = append(d, "multicast "+multicastString(g))
	}
	return d
}

func diffContainer(o, n *Container) []string {
	var d []string
	if mo, mn := modeOf(o), modeOf(n); mo != mn {
		d = append(d, fmt.Sprintf("mode %s -> %s", mo, mn))
	}
	added, removed := 0, 0
	for _, a := range n.Addresses {
		if !slices.Contains(o.Addresses, a) {
			d = append(d, "+addr "+a.String())
			added++
		}
	}
	for _, a := range o.Addresses {
		if !slices.Contains(n.Addresses, a) {
			d = append(d, "-addr "+a.String())
			removed++
		}
	}
	if added == 0 && removed == 0 && !slices.Equal(o.Addresses, n.Addresses) {
		texts := make([]string, len(n.Addresses))
		for i, a := range n.Addresses {
			texts[i] = a.String()
		}
		d = append(d, "addresses reordered: "+strings.Join(texts, ", "))
	}
	if lo, ln := loopbackOf(o), loopbackOf(n); lo != ln {
		d = append(d, fmt.Sprintf("loopback %s -> %s", lo, ln))
	}
	for _, g := range sortedGroups(n.Multicast) {
		if !slices.Contains(o.Multicast, g) {
			d = append(d, "+multicast "+multicastString(g))
		}
	}
	for _, g := range sortedGroups(o.Multicast) {
		if !slices.Contains(n.Multicast, g) {
			d = append(d, "-multicast "+multicastString(g))
		}
	}
	return d
}

func sortedGroups(gs []netip.Prefix) []netip.Prefix {
	s := slices.Clone(gs)
	slices.SortFunc(s, func(a, b netip.Prefix) int { return a.Compare(b) })
	return s
}

// diffSorted is Diff for the usual case — both policies sorted by name
// without duplicates, as Validate and the installed containers are — in one
// merge of the two lists (10,000 containers: no maps of 10,000 names). ok
// is false otherwise.
func diffSorted(old, new *Policy) (changes []Change, ok bool) {
	var os, ns []Container
	if old != nil {
		os = old.Containers
	}
	if new != nil {
		ns = new.Containers
	}
	for _, cs := range [][]Container{os, ns} {
		for i := 1; i < len(cs); i++ {
			if cs[i-1].Name >= cs[i].Name {
				return nil, false
			}
		}
	}
	i, j := 0, 0
	for i < len(os) || j < len(ns) {
		switch {
		case j == len(ns) || (i < len(os) && os[i].Name < ns[j].Name):
			changes = append(changes, Change{Kind: ChangeDel, Name: os[i].Name})
			i++
		case i == len(os) || ns[j].Name < os[i].Name:
			n := &ns[j]
			changes = append(changes, Change{Kind: ChangeAdd, Name: n.Name, Mode: modeOf(n), Details: describeContainer(n)})
			j++
		default:
			if d := diffContainer(&os[i], &ns[j]); len(d) > 0 {
				changes = append(changes, Change{Kind: ChangeModify, Name: ns[j].Name, Details: d})
			}
			i, j = i+1, j+1
		}
	}
	return changes, true
}
