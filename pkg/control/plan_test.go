package control

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// The planners compute only: these tests need no root. How the executor
// runs and undoes a script is tested with fake steps (executor_test.go);
// what the steps do, by the system tests (e2e: TestApply, TestApplyCrash,
// TestKilledCgroupRepair, TestChurnUnderLoad, ...).

// ct is a container of the tests: "name[/mode] addr addr ...", with id
// and cgroup id; mode is netns or shared (the default).
func ct(t *testing.T, id uint32, desc string) maps.Container {
	t.Helper()
	f := strings.Fields(desc)
	name, mode, _ := strings.Cut(f[0], "/")
	k := maps.Container{ID: id, CgroupID: uint64(1000 + id), Spec: policy.Container{Name: name, Mode: policy.ModeShared, Loopback: policy.LoopbackIsolated}}
	if mode != "" {
		k.Spec.Mode = policy.Mode(mode)
	}
	for _, s := range f[1:] {
		a, err := policy.ParseAddress(s)
		if err != nil {
			t.Fatal(err)
		}
		k.Spec.Addresses = append(k.Spec.Addresses, a)
	}
	return k
}

// specs are the policy containers of cs, by name.
func specs(cs ...maps.Container) *policy.Policy {
	p := &policy.Policy{}
	for _, k := range cs {
		p.Containers = append(p.Containers, k.Spec)
	}
	slices.SortFunc(p.Containers, func(a, b policy.Container) int { return strings.Compare(a.Name, b.Name) })
	return p
}

// meta is an installed container as a survey reads it (maps.Meta).
type meta struct{ k maps.Container }

func (m meta) ID() uint32                { return m.k.ID }
func (m meta) CgroupID() uint64          { return m.k.CgroupID }
func (m meta) Name() string              { return m.k.Spec.Name }
func (m meta) Container() maps.Container { return m.k }
func (m meta) Is(c maps.Container) bool  { return reflect.DeepEqual(c, m.k) }

func sortedByName(cs []maps.Container) []maps.Container {
	out := slices.Clone(cs)
	slices.SortFunc(out, func(a, b maps.Container) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	return out
}

// surveyOf is the survey of policy p next to the installed containers.
func surveyOf(t *testing.T, p *policy.Policy, installed []maps.Container) *survey {
	t.Helper()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	sv := newSurvey(p, maps.Gen{})
	for _, k := range installed {
		sv.see(meta{k})
	}
	if err := sv.done(); err != nil {
		t.Fatal(err)
	}
	return sv
}

// sameSet reports whether two lists hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// itemSet is a set of host items, as the tests write them: "local
// 10.77.0.1", "broadcast 10.77.0.255", "fd77::1/128".
func itemSet(hs []hostItem) []string {
	out := make([]string, 0, len(hs))
	for _, h := range hs {
		out = append(out, h.String())
	}
	slices.Sort(out)
	return out
}

func names(cs []maps.Container) []string {
	out := []string{}
	for _, k := range cs {
		out = append(out, fmt.Sprintf("%s#%d", k.Spec.Name, k.ID))
	}
	return out
}

func stepList(s *script) string {
	var out []string
	for _, k := range s.steps {
		out = append(out, fmt.Sprint(k))
	}
	return strings.Join(out, ", ")
}

var lo6 = func(id uint32) string { return maps.Loopback6(id).String() + "/128" }

// TestPlanApply: what apply plans, from the installed containers and the
// policy: what comes, goes and changes, on the host, and the steps.
func TestPlanApply(t *testing.T) {
	own := map[netip.Addr]hostUse{netip.MustParseAddr("10.77.0.9"): {what: "is one of the host's own addresses (on eth0)", own: true}}
	gw := map[netip.Addr]hostUse{netip.MustParseAddr("10.77.0.9"): {what: "is the gateway of the default route via eth0", loss: "the host would lose that route"}}
	for _, tc := range []struct {
		name      string
		installed []string // id-1 "desc" each
		policy    []string
		o         ApplyOptions
		uses      map[netip.Addr]hostUse
		running   map[string]int

		err                string // a refusal
		come, gone         []string
		add, remove        []string
		readdressed, steps string
		changes            []string
		empty              bool // nothing to do
	}{{
		name:   "fresh",
		policy: []string{"web 10.77.0.1", "db 10.77.0.2/24"},
		come:   []string{"db#1", "web#2"}, gone: []string{},
		add:   []string{"broadcast 10.77.0.255", "local 10.77.0.1", "local 10.77.0.2", lo6(1), lo6(2)},
		steps: "begin, cgroups, counters, index, write next generation, switch, configure host, filters, stale sockets, end",
	}, {
		name:      "gone",
		installed: []string{"web 10.77.0.1", "db 10.77.0.2"},
		policy:    []string{"web 10.77.0.1"},
		come:      []string{}, gone: []string{"db#2"},
		remove: []string{"local 10.77.0.2", lo6(2)},
		steps:  "begin, write next generation, stop removed, unconfigure host, switch, filters, stale sockets, counters, listeners, index, end",
	}, {
		name:      "unchanged",
		installed: []string{"web 10.77.0.1"},
		policy:    []string{"web 10.77.0.1"},
		empty:     true,
	}, {
		name:      "changed",
		installed: []string{"web 10.77.0.1 fd77::1"},
		policy:    []string{"web 10.77.0.2 fd77::1"},
		come:      []string{}, gone: []string{},
		add: []string{"local 10.77.0.2"}, remove: []string{"local 10.77.0.1"},
		changes: []string{`~ container "web"`},
		steps:   "begin, write next generation, unconfigure host, switch, configure host, filters, stale sockets, end",
	}, {
		name:      "changed netns",
		installed: []string{"api/netns 10.78.0.1/24 10.78.0.5/24"},
		policy:    []string{"api/netns 10.78.0.1/24"},
		come:      []string{}, gone: []string{},
		readdressed: "api",
		steps:       "begin, write next generation, netns before, switch, netns, filters, stale sockets, end",
	}, {
		name:      "refused mode change",
		installed: []string{"web 10.77.0.1"},
		policy:    []string{"web/netns 10.77.0.1"},
		err:       `container "web": its mode cannot change from shared to netns while it exists`,
	}, {
		name:   "host conflict: the host's own",
		policy: []string{"web 10.77.0.9"},
		uses:   own, o: ApplyOptions{Force: true},
		err: `address 10.77.0.9 of container "web" is already in use on this host: it is one of the host's own addresses (on eth0)`,
	}, {
		name:   "host conflict: a gateway",
		policy: []string{"web 10.77.0.9"},
		uses:   gw,
		err:    `address 10.77.0.9 of container "web" is used by this host: it is the gateway of the default route via eth0; choose another address, or pass --force`,
	}, {
		name:   "host conflict: a gateway, forced",
		policy: []string{"web 10.77.0.9"},
		uses:   gw, o: ApplyOptions{Force: true},
		come: []string{"web#1"}, gone: []string{},
		add:   []string{"local 10.77.0.9", lo6(1)},
		steps: "begin, cgroups, counters, index, write next generation, switch, configure host, filters, stale sockets, end",
	}, {
		name:      "host conflict: installed already",
		installed: []string{"web 10.77.0.9"},
		policy:    []string{"web 10.77.0.9", "db 10.77.0.10"},
		uses:      own, // not asked: l3iso configured it
		come:      []string{"db#2"}, gone: []string{},
		add:   []string{"local 10.77.0.10", lo6(2)},
		steps: "begin, cgroups, counters, index, write next generation, switch, configure host, filters, stale sockets, end",
	}, {
		name:      "id reuse",
		installed: []string{"a 10.77.0.1", "-", "c 10.77.0.3", "b 10.77.0.2"},
		policy:    []string{"a 10.77.0.1", "c 10.77.0.3", "d 10.77.0.4", "e 10.77.0.5"},
		// The free id 2 is reused; b's 4 is not before the switch.
		come: []string{"d#2", "e#5"}, gone: []string{"b#4"},
		add:    []string{"local 10.77.0.4", "local 10.77.0.5", lo6(2), lo6(5)},
		remove: []string{"local 10.77.0.2", lo6(4)},
		steps:  "begin, cgroups, counters, index, write next generation, stop removed, unconfigure host, switch, configure host, filters, stale sockets, counters, listeners, index, end",
	}, {
		name:      "shared broadcast",
		installed: []string{"web 10.77.0.1/24", "db 10.77.0.2/24"},
		policy:    []string{"web 10.77.0.1/24", "api 10.77.0.3/24"},
		come:      []string{"api#3"}, gone: []string{"db#2"},
		// web stays on the subnet: its broadcast route stays.
		add: []string{"local 10.77.0.3", lo6(3)}, remove: []string{"local 10.77.0.2", lo6(2)},
		steps: "begin, cgroups, counters, index, write next generation, stop removed, unconfigure host, switch, configure host, filters, stale sockets, counters, listeners, index, end",
	}, {
		name:      "last on the subnet",
		installed: []string{"web 10.77.0.1/24", "db 10.77.0.2"},
		policy:    []string{"db 10.77.0.2"},
		come:      []string{}, gone: []string{"web#1"},
		remove: []string{"broadcast 10.77.0.255", "local 10.77.0.1", lo6(1)},
		steps:  "begin, write next generation, stop removed, unconfigure host, switch, filters, stale sockets, counters, listeners, index, end",
	}, {
		name:      "running, without prune",
		installed: []string{"web 10.77.0.1", "db 10.77.0.2"},
		policy:    []string{"web 10.77.0.1"},
		running:   map[string]int{"db": 2},
		err:       `the policy removes 1 container with running processes: "db" (2 processes); stop them first, or pass --prune`,
	}, {
		name:      "empty, without allow-empty",
		installed: []string{"web 10.77.0.1"},
		err:       "the policy has no containers, so applying it would delete every installed container (1)",
	}, {
		name:   "dry run",
		policy: []string{"web 10.77.0.1"}, o: ApplyOptions{DryRun: true},
		empty: true, changes: []string{`+ container "web"`},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var installed []maps.Container
			for i, d := range tc.installed {
				if d != "-" {
					installed = append(installed, ct(t, uint32(i+1), d))
				}
			}
			p := &policy.Policy{}
			for _, d := range tc.policy {
				p.Containers = append(p.Containers, ct(t, 0, d).Spec)
			}
			p = specs(func() (out []maps.Container) {
				for _, s := range p.Containers {
					out = append(out, maps.Container{Spec: s})
				}
				return out
			}()...)
			sv := surveyOf(t, p, installed)
			s, plan, err := planApply(applyFacts{sv: sv, running: tc.running, uses: tc.uses, fileConts: len(p.Containers)}, tc.o)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				if s != nil {
					t.Error("a refused apply has a script")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.changes != nil {
				var got []string
				for _, ch := range plan.Changes {
					got = append(got, ch.String())
				}
				if len(got) != len(tc.changes) || !slices.EqualFunc(got, tc.changes, strings.HasPrefix) {
					t.Errorf("changes %q, want %q", got, tc.changes)
				}
			}
			if tc.empty {
				if s != nil {
					t.Fatalf("a script for nothing to do: %s", stepList(s))
				}
				return
			}
			if s == nil {
				t.Fatal("no script")
			}
			if got := names(s.come); !slices.Equal(got, tc.come) {
				t.Errorf("come %v, want %v", got, tc.come)
			}
			if got := names(s.gone); !slices.Equal(got, tc.gone) {
				t.Errorf("gone %v, want %v", got, tc.gone)
			}
			if got := itemSet(s.add); !sameSet(got, tc.add) {
				t.Errorf("host items added %v, want %v", got, tc.add)
			}
			if got := itemSet(s.remove); !sameSet(got, tc.remove) {
				t.Errorf("host items removed %v, want %v", got, tc.remove)
			}
			var re []string
			for _, r := range s.readdressed {
				re = append(re, r[1].Spec.Name)
			}
			if got := strings.Join(re, ","); got != tc.readdressed {
				t.Errorf("readdressed %q, want %q", got, tc.readdressed)
			}
			if got := stepList(s); got != tc.steps {
				t.Errorf("steps\n  %s\nwant\n  %s", got, tc.steps)
			}
			if s.commit != stepSwitch || s.done != "policy switched" {
				t.Errorf("commit %v (%q), want the switch", s.commit, s.done)
			}
		})
	}
}

// fastFacts is what the index, l3_owners and l3_locals answer an add of
// spec next to the installed containers (see Control.fastAddFacts).
func fastFacts(installed []maps.Container, spec policy.Container, uses map[netip.Addr]hostUse) addFacts {
	f := addFacts{free: lowestFree(installed), uses: uses}
	for _, k := range installed {
		f.nameUsed = f.nameUsed || k.Spec.Name == spec.Name
		for _, b := range k.Spec.Addresses {
			for _, a := range spec.Addresses {
				f.owned = f.owned || a.Addr == b.Addr
				ba, ok1 := a.Broadcast()
				bb, ok2 := b.Broadcast()
				if ok1 && ok2 && ba == bb && !slices.Contains(f.shared, ba) {
					f.shared = append(f.shared, ba)
				}
			}
		}
	}
	return f
}

// TestPlanAdd: an add on the fast path (index, l3_owners) and on the full
// one (every container): what it plans, and what the fast path leaves to
// the full one.
func TestPlanAdd(t *testing.T) {
	gw := map[netip.Addr]hostUse{netip.MustParseAddr("10.77.0.9"): {what: "is a neighbour this host knows on eth0", loss: lostMachine}}
	for _, tc := range []struct {
		name      string
		installed []string
		spec      string
		o         AddOptions
		uses      map[netip.Addr]hostUse

		full  bool   // the fast path cannot tell
		err   string // the refusal (of the full path, if full)
		id    uint32
		add   []string
		keep  maps.Shared
		steps string
	}{{
		name: "fresh", spec: "web 10.77.0.1 fd77::1",
		id: 1, add: []string{"fd77::1/128", "local 10.77.0.1", lo6(1)},
		steps: "begin, cgroups, counters, index, maps, configure host, end",
	}, {
		name: "fresh netns", spec: "api/netns 10.78.0.1/24",
		id: 1, add: []string{},
		steps: "begin, cgroups, counters, index, maps, netns, end",
	}, {
		name: "id reuse", installed: []string{"a 10.77.0.1", "-", "c 10.77.0.3"}, spec: "d 10.77.0.4",
		id: 2, add: []string{"local 10.77.0.4", lo6(2)},
		steps: "begin, cgroups, counters, index, maps, configure host, end",
	}, {
		name: "shared broadcast", installed: []string{"web 10.77.0.1/24"}, spec: "api 10.77.0.2/24",
		id: 2, add: []string{"local 10.77.0.2", lo6(2)}, // not web's broadcast route
		keep:  maps.Shared{Broadcasts: []netip.Addr{netip.MustParseAddr("10.77.0.255")}},
		steps: "begin, cgroups, counters, index, maps, configure host, end",
	}, {
		name: "name in use", installed: []string{"web 10.77.0.1"}, spec: "web 10.77.0.2",
		full: true, err: `container "web" already exists: delete it first or choose another name`,
	}, {
		name: "address owned", installed: []string{"web 10.77.0.1"}, spec: "db 10.77.0.1",
		full: true, err: `address 10.77.0.1 of container "db" overlaps 10.77.0.1 of container "web": an address:port may be owned by one container only`,
	}, {
		name: "ports of an owned IP", installed: []string{"web 10.77.0.9:80/tcp"}, spec: "db 10.77.0.9:5432/tcp",
		full: true, id: 2, add: []string{lo6(2)}, // the IP is l3iso's on the host already
		keep:  maps.Shared{IPs: []netip.Addr{netip.MustParseAddr("10.77.0.9")}},
		steps: "begin, cgroups, counters, index, maps, configure host, end",
	}, {
		name: "invalid alone", spec: "web/netns 10.77.0.1:80/tcp",
		full: true, err: `container "web": address 10.77.0.1:80/tcp names ports, but a netns container owns whole IPs (the address lives in its own namespace): drop the port, or use mode: shared to share an IP by ports`,
	}, {
		name: "host conflict", spec: "web 10.77.0.9", uses: gw,
		err: `address 10.77.0.9 of container "web" is used by this host: it is a neighbour this host knows on eth0`,
	}, {
		name: "host conflict, forced", spec: "web 10.77.0.9", uses: gw, o: AddOptions{Force: true},
		id: 1, add: []string{"local 10.77.0.9", lo6(1)},
		steps: "begin, cgroups, counters, index, maps, configure host, end",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var installed []maps.Container
			for i, d := range tc.installed {
				if d != "-" {
					installed = append(installed, ct(t, uint32(i+1), d))
				}
			}
			installed = sortedByName(installed)
			spec := ct(t, 0, tc.spec).Spec
			fast, fastErr := planAdd(spec, tc.o, fastFacts(installed, spec, tc.uses))
			full, err := planAdd(spec, tc.o, addFacts{all: append([]maps.Container{}, installed...), free: lowestFree(installed), uses: tc.uses})
			if tc.full {
				if !errors.Is(fastErr, errFull) {
					t.Errorf("the fast path planned it: %v", fastErr)
				}
			} else if (fastErr == nil) != (err == nil) || fastErr != nil && fastErr.Error() != err.Error() {
				t.Errorf("the fast path says %v, the full one %v", fastErr, err)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []*script{fast, full} {
				if s == nil {
					continue
				}
				if len(s.come) != 1 || s.come[0].ID != tc.id || s.come[0].Spec.Name != spec.Name {
					t.Errorf("come %v, want %s#%d", names(s.come), spec.Name, tc.id)
				}
				if got := itemSet(s.add); !sameSet(got, tc.add) {
					t.Errorf("host items %v, want %v", got, tc.add)
				}
				if !reflect.DeepEqual(s.keep, tc.keep) {
					t.Errorf("keep %+v, want %+v", s.keep, tc.keep)
				}
				if got := stepList(s); got != tc.steps {
					t.Errorf("steps\n  %s\nwant\n  %s", got, tc.steps)
				}
				if s.commit != stepNone {
					t.Errorf("an add has a commit step (%v): its failures are all undone", s.commit)
				}
			}
		})
	}
	// No id left.
	spec := ct(t, 0, "web 10.77.0.1").Spec
	if _, err := planAdd(spec, AddOptions{}, addFacts{all: []maps.Container{}}); err == nil || !strings.Contains(err.Error(), "too many containers") {
		t.Errorf("no free id: %v", err)
	}
	// An unknown mode: the fast path leaves it to the full one, where
	// policy.Validate refuses it (there is no other check of the mode).
	spec.Mode = "bridge"
	if _, err := planAdd(spec, AddOptions{}, fastFacts(nil, spec, nil)); !errors.Is(err, errFull) {
		t.Errorf("unknown mode, fast path: %v", err)
	}
	want := `container "web": unknown mode "bridge": write shared or netns`
	if _, err := planAdd(spec, AddOptions{}, addFacts{all: []maps.Container{}, free: 1}); err == nil || err.Error() != want {
		t.Errorf("unknown mode: %v, want %q", err, want)
	}
}

// TestPlanDel: a del on the fast path (a container that shares nothing)
// and on the full one; a container that shares an IP by ports or a subnet
// is never removed without the others known.
func TestPlanDel(t *testing.T) {
	for _, tc := range []struct {
		name      string
		installed []string
		del       int // index into installed
		full      bool
		remove    []string
		keep      maps.Shared
		steps     string
	}{{
		name: "sole", installed: []string{"web 10.77.0.1 fd77::1", "db 10.77.0.2"},
		remove: []string{"fd77::1/128", "local 10.77.0.1", lo6(1)},
		steps:  "begin, stop removed, unconfigure host, maps, stale sockets, counters, listeners, index, end",
	}, {
		name: "netns", installed: []string{"api/netns 10.78.0.1"},
		remove: []string{},
		steps:  "begin, stop removed, netns before, maps, stale sockets, counters, listeners, index, end",
	}, {
		name: "ports of a shared IP", installed: []string{"web 10.77.0.9:80/tcp", "db 10.77.0.9:5432/tcp"},
		full: true, remove: []string{lo6(1)},
		keep:  maps.Shared{IPs: []netip.Addr{netip.MustParseAddr("10.77.0.9")}},
		steps: "begin, stop removed, unconfigure host, maps, stale sockets, counters, listeners, index, end",
	}, {
		name: "shared broadcast", installed: []string{"web 10.77.0.1/24", "db 10.77.0.2/24"},
		full: true, remove: []string{"local 10.77.0.1", lo6(1)},
		keep:  maps.Shared{Broadcasts: []netip.Addr{netip.MustParseAddr("10.77.0.255")}},
		steps: "begin, stop removed, unconfigure host, maps, filters, stale sockets, counters, listeners, index, end",
	}, {
		name: "last on the subnet", installed: []string{"web 10.77.0.1/24", "db 10.77.0.2"},
		full: true, remove: []string{"broadcast 10.77.0.255", "local 10.77.0.1", lo6(1)},
		steps: "begin, stop removed, unconfigure host, maps, filters, stale sockets, counters, listeners, index, end",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var installed []maps.Container
			for i, d := range tc.installed {
				installed = append(installed, ct(t, uint32(i+1), d))
			}
			k := installed[tc.del]
			rest := sortedByName(slices.Delete(slices.Clone(installed), tc.del, tc.del+1))
			fast, fastErr := planDel(k, time.Second, delFacts{})
			full, err := planDel(k, time.Second, delFacts{rest: rest, full: true})
			if err != nil {
				t.Fatal(err)
			}
			if tc.full != errors.Is(fastErr, errFull) {
				t.Fatalf("fast path: %v (full needed: %v)", fastErr, tc.full)
			}
			for _, s := range []*script{fast, full} {
				if s == nil {
					continue
				}
				if got := names(s.gone); !slices.Equal(got, names([]maps.Container{k})) {
					t.Errorf("gone %v", got)
				}
				if got := itemSet(s.remove); !sameSet(got, tc.remove) {
					t.Errorf("host items %v, want %v", got, tc.remove)
				}
				if !reflect.DeepEqual(s.keep, tc.keep) {
					t.Errorf("keep %+v, want %+v", s.keep, tc.keep)
				}
				if got := stepList(s); got != tc.steps && !(s == fast && got == strings.Replace(tc.steps, "filters, ", "", 1)) {
					t.Errorf("steps\n  %s\nwant\n  %s", got, tc.steps)
				}
				if s.commit != stepRemove || s.done != fmt.Sprintf("container %q deleted", k.Spec.Name) || !s.wait || !s.prune {
					t.Errorf("commit %v %q, wait %v, prune %v", s.commit, s.done, s.wait, s.prune)
				}
			}
		})
	}
}

// TestPlanAgree: the fast planners (one add, one del, with what the index
// and l3_owners answer) and the full ones (every container known; apply)
// plan the same change: the same container with the same id, the same
// host items, the same shared markers kept.
func TestPlanAgree(t *testing.T) {
	for _, tc := range []struct {
		installed []string
		spec      string
	}{
		{nil, "web 10.77.0.1"},
		{[]string{"a 10.77.0.1", "b 10.77.0.2 fd77::2"}, "web 10.77.0.5 fd77::5"},
		{[]string{"a 10.77.0.1/24"}, "web 10.77.0.5/24"},                                // a subnet someone is on
		{[]string{"a 10.77.0.1/24", "b 10.77.1.1/24"}, "web 10.77.0.5/24 10.77.2.5/24"}, // one shared, one not
		{[]string{"a 10.77.0.1", "b/netns 10.78.0.1"}, "web/netns 10.78.0.5/24 fd78::5"},
		{[]string{"a 10.77.0.1", "b 10.77.0.2", "c 10.77.0.3"}, "web 10.77.0.9:80/tcp"},
		{[]string{"a/host 10.77.0.1"}, "web/host 10.77.0.5"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			var installed []maps.Container
			for i, d := range tc.installed {
				k := ct(t, uint32(2*i+1), strings.Replace(d, "/host", "", 1)) // odd ids: a hole at 2
				if strings.Contains(d, "/host") {
					k.Spec.Loopback = policy.LoopbackHost
				}
				installed = append(installed, k)
			}
			installed = sortedByName(installed)
			spec := ct(t, 0, strings.Replace(tc.spec, "/host", "", 1)).Spec
			if strings.Contains(tc.spec, "/host") {
				spec.Loopback = policy.LoopbackHost
			}

			// Add: fast, full, apply.
			fast, err := planAdd(spec, AddOptions{}, fastFacts(installed, spec, nil))
			if err != nil {
				t.Fatalf("fast add: %v", err)
			}
			full, err := planAdd(spec, AddOptions{}, addFacts{all: installed, free: lowestFree(installed)})
			if err != nil {
				t.Fatalf("full add: %v", err)
			}
			apply, _, err := planApply(applyFacts{sv: surveyOf(t, specs(append(slices.Clone(installed), maps.Container{Spec: spec})...), installed), fileConts: 1}, ApplyOptions{})
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			k := fast.come[0]
			for what, s := range map[string]*script{"full add": full, "apply": apply} {
				if !reflect.DeepEqual(s.come, fast.come) {
					t.Errorf("%s: come %v, the fast add %v", what, names(s.come), names(fast.come))
				}
				if got, want := itemSet(s.add), itemSet(fast.add); !slices.Equal(got, want) {
					t.Errorf("%s: host items added %v, the fast add %v", what, got, want)
				}
				if len(s.remove) > 0 || len(s.gone) > 0 {
					t.Errorf("%s: removes %v, %v", what, itemSet(s.remove), names(s.gone))
				}
				if s.has(stepPlumb) != fast.has(stepPlumb) {
					t.Errorf("%s: netns %v, the fast add %v", what, s.has(stepPlumb), fast.has(stepPlumb))
				}
			}
			if !reflect.DeepEqual(full.keep, fast.keep) {
				t.Errorf("keep: full %+v, fast %+v", full.keep, fast.keep)
			}
			if stepList(full) != stepList(fast) {
				t.Errorf("steps: full %s, fast %s", stepList(full), stepList(fast))
			}

			// Del of what was added: fast (if it shares nothing), full,
			// apply of what was installed.
			k.CgroupID = 4242
			after := sortedByName(append(slices.Clone(installed), k))
			fullDel, err := planDel(k, 0, delFacts{rest: installed, full: true})
			if err != nil {
				t.Fatal(err)
			}
			back, _, err := planApply(applyFacts{sv: surveyOf(t, specs(installed...), after), fileConts: len(installed)}, ApplyOptions{AllowEmpty: true})
			if err != nil {
				t.Fatalf("apply back: %v", err)
			}
			dels := map[string]*script{"apply": back}
			if fastDel, err := planDel(k, 0, delFacts{}); err == nil {
				dels["fast del"] = fastDel
				if !sole(k) {
					t.Error("the fast del took a container that shares something")
				}
			} else if !errors.Is(err, errFull) || sole(k) {
				t.Errorf("fast del: %v", err)
			}
			for what, s := range dels {
				if !reflect.DeepEqual(s.gone, fullDel.gone) {
					t.Errorf("%s: gone %v, the full del %v", what, names(s.gone), names(fullDel.gone))
				}
				if got, want := itemSet(s.remove), itemSet(fullDel.remove); !slices.Equal(got, want) {
					t.Errorf("%s: host items removed %v, the full del %v", what, got, want)
				}
				if got, want := itemSet(s.remove), itemSet(fast.add); !slices.Equal(got, want) {
					t.Errorf("%s: removes %v, the add added %v", what, got, want)
				}
				if s.has(stepUnplumb) != fullDel.has(stepUnplumb) {
					t.Errorf("%s: netns %v, the full del %v", what, s.has(stepUnplumb), fullDel.has(stepUnplumb))
				}
			}
			if !reflect.DeepEqual(fullDel.keep, full.keep) {
				t.Errorf("the del keeps %+v, the add's undo %+v", fullDel.keep, full.keep)
			}
		})
	}
}

// TestPlanRepair: a repair removes cgroups of no container, makes anew the
// missing ones, those made anew by hand and those a command died removing
// (killed and empty), and keeps the rest.
func TestPlanRepair(t *testing.T) {
	cur := []maps.Container{ct(t, 1, "a 10.77.0.1"), ct(t, 2, "b 10.77.0.2"), ct(t, 3, "c 10.77.0.3"), ct(t, 4, "d 10.77.0.4")}
	s := planRepair(repairFacts{
		cur:     cur,
		orphans: []string{"/cg/l3iso/ghost"},
		cgroups: []cgroupState{{id: 1001}, {id: 0}, {id: 9999}, {id: 1004, killed: true}},
	})
	if !slices.Equal(s.remake, []int{1, 2, 3}) || !slices.Equal(s.killed, []int{3}) || !slices.Equal(s.orphans, []string{"/cg/l3iso/ghost"}) {
		t.Errorf("remake %v, killed %v, orphans %v", s.remake, s.killed, s.orphans)
	}
	if got, want := stepList(s), "cgroups, index, maps, host, netns, listeners, end"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	if s.has(stepBegin) {
		t.Error("a repair sets the dirty bit: it runs with it set, or for up")
	}
	// What a failed stepForget left: every id of no container leaves the
	// listener registries, and no id of a container does.
	if len(s.free) != maps.MaxContainers-len(cur) || s.free[0] != 5 || int(s.free[len(s.free)-1]) != maps.MaxContainers {
		t.Errorf("purged ids: %d of them, %v … %v; want %d, 5 … %d", len(s.free), s.free[:min(3, len(s.free))], s.free[max(0, len(s.free)-1):], maps.MaxContainers-len(cur), maps.MaxContainers)
	}
}

// TestStepOrder: the order of the step kinds is docs/DESIGN.md's rule 9 and the
// generation switch, for every command.
func TestStepOrder(t *testing.T) {
	for _, r := range []struct {
		first, then stepKind
		why         string
	}{
		{stepBegin, stepCgroups, "the dirty bit before any change"},
		{stepCgroups, stepInsert, "a container's cgroup exists before the maps name it"},
		{stepCgroups, stepWriteNext, "a container's cgroup exists before the next generation names it"},
		{stepCounters, stepInsert, "a new container's counters are zeroed before the maps name it"},
		{stepCounters, stepWriteNext, "a new container's counters are zeroed before the next generation names it"},
		{stepIndex, stepInsert, "the index has a container before its metadata exists"},
		{stepIndex, stepWriteNext, "the index has a container before its metadata exists"},
		{stepInsert, stepConfigure, "rule 9: owned in the maps before the host has it"},
		{stepInsert, stepPlumb, "rule 9: owned in the maps before its namespace has it"},
		{stepWriteNext, stepSwitch, "the next generation is complete before the switch"},
		{stepSwitch, stepConfigure, "rule 9: owned by the active generation before the host has it"},
		{stepSwitch, stepPlumb, "rule 9: owned by the active generation before its namespace has it"},
		{stepStop, stepUnconfigure, "processes end while their cgroup is a container"},
		{stepStop, stepRemove, "processes end while their cgroup is a container"},
		{stepStop, stepSwitch, "processes end while their cgroup is a container"},
		{stepUnconfigure, stepRemove, "rule 9: off the host before it leaves the maps"},
		{stepUnconfigure, stepSwitch, "rule 9: off the host before it leaves the active generation"},
		{stepUnplumb, stepRemove, "rule 9: out of its namespace before it leaves the maps"},
		{stepUnplumb, stepSwitch, "rule 9: out of its namespace before it leaves the active generation"},
		{stepRemove, stepForget, "out of the index once the metadata is gone"},
		{stepSwitch, stepForget, "out of the index once the metadata is gone"},
		{stepCountStale, stepForget, "sockets counted before their listeners are purged"},
		{stepRepairMaps, stepRepairHost, "rule 9 in a repair"},
		{stepForget, stepEnd, "the dirty bit cleared after the last change"},
		{stepPurge, stepEnd, "the dirty bit cleared after the last change"},
	} {
		if r.first >= r.then {
			t.Errorf("%v runs after %v: %s", r.first, r.then, r.why)
		}
	}
	for k := stepNone + 1; k < numSteps; k++ {
		if steps[k].do == nil || stepNames[k] == "" {
			t.Errorf("step %d has no action or no name", k)
		}
	}
}

// TestScriptSteps: a script keeps its steps in the executor's order,
// whatever order a planner adds them in.
func TestScriptSteps(t *testing.T) {
	s := (&script{}).with(stepEnd, stepConfigure, stepBegin, stepInsert, stepConfigure)
	if !slices.Equal(s.steps, []stepKind{stepBegin, stepInsert, stepConfigure, stepEnd}) {
		t.Errorf("steps %v", s.steps)
	}
	if !s.has(stepInsert) || s.has(stepSwitch) {
		t.Error("has")
	}
}
