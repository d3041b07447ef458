package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Limits per container. They bound the dataplane's per-container map entries.
const (
	MaxAddresses = 16 // addresses a container may own
	MaxMulticast = 8  // multicast entries a container may list
)

// Mode is how a container is attached to the host.
type Mode string

// The container modes.
const (
	// ModeShared is a cgroup in the host network stack, isolated by socket
	// hooks. It is the default.
	ModeShared Mode = "shared"
	// ModeNetns is an own network namespace with a veth pair, reached by TC
	// programs.
	ModeNetns Mode = "netns"
)

// Loopback is what a container's 127.0.0.1 and ::1 reach.
type Loopback string

// The loopback settings.
const (
	// LoopbackIsolated confines the container's loopback to its own
	// sockets. It is the default.
	LoopbackIsolated Loopback = "isolated"
	// LoopbackHost lets the container's loopback reach the host's loopback
	// sockets. Only a shared container may use it.
	LoopbackHost Loopback = "host"
)

// Container is one container of a policy.
type Container struct {
	// Name identifies the container; see ValidateName.
	Name string
	// Mode is ModeShared or ModeNetns. Validate turns "" into ModeShared.
	Mode Mode
	// Addresses are what the container owns, in order: the first address
	// of each family is the container's primary address for that family.
	Addresses []Address
	// Loopback is LoopbackIsolated or LoopbackHost. Validate turns "" into
	// LoopbackIsolated.
	Loopback Loopback
	// Multicast are the groups (or prefixes of groups) the container may
	// join, each a masked prefix inside 224.0.0.0/4 or ff00::/8.
	Multicast []netip.Prefix
	// Adopted says that the container's network namespace is a container
	// runtime's, which attached it through the CNI plugin (cmd/l3iso-cni):
	// l3iso made its veth, not its namespace, and never deletes the
	// namespace nor stops the runtime's processes. A policy file cannot
	// set it; apply leaves such containers as they are.
	Adopted bool
}

// Policy is a whole ownership policy. After Parse, Load or a successful
// Validate its containers are sorted by name.
type Policy struct {
	Containers []Container
	// Pods are the rules for containers a runtime attaches through the
	// CNI plugin (pods.go); apply only checks them.
	Pods []PodRule
}

// Find returns the container called name.
func (p *Policy) Find(name string) (*Container, bool) {
	if p == nil {
		return nil, false
	}
	for i := range p.Containers {
		if p.Containers[i].Name == name {
			return &p.Containers[i], true
		}
	}
	return nil, false
}

// MaxNameLen is the longest container name.
const MaxNameLen = 32

// validName is ^[a-z0-9][a-z0-9-]{0,31}$, without a regexp: a policy of
// 10,000 containers checks 10,000 names.
func validName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' && i > 0) {
			return false
		}
	}
	return true
}

// ValidateName checks a container name: 1 to 32 characters from a-z, 0-9
// and '-', starting with a letter or a digit. It is the one rule: pkg/veth
// (namespace and interface names) and pkg/maps (l3_metas, the index) call
// it.
func ValidateName(name string) error {
	if !validName(name) {
		return fmt.Errorf("invalid container name %q: use 1-32 characters from a-z, 0-9 and '-', starting with a letter or digit", name)
	}
	return nil
}

// Error is a problem found at a line of a policy file. Its text is
// "FILE:LINE: problem".
type Error struct {
	File string // the file name given to Parse or Load
	Line int    // 1-based
	Err  error  // the problem
}

// Error returns "FILE:LINE: problem".
func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

// Unwrap returns the problem without its position.
func (e *Error) Unwrap() error { return e.Err }

func byName(a, b Container) int { return strings.Compare(a.Name, b.Name) }

// maxErrors is how many problems one Parse or Validate reports before it
// stops listing them.
const maxErrors = 20

// Validate checks the whole policy: container names, modes, loopback
// settings, address and multicast limits and syntax, and that no
// address:port is owned twice. It fills in the default mode and loopback of
// containers that leave them empty and sorts the containers by name.
//
// Every problem found is reported; several are joined with errors.Join, one
// per line. Validate is what Parse runs after reading a file, so it is also
// the check for containers built in code (for example from CLI flags).
func (p *Policy) Validate() error {
	return validate(p, nil)
}

// source remembers where a parsed policy's parts came from, so that
// validation errors can name the line. It is nil for policies built in code.
type source struct {
	file       string
	containers []containerLines // parallel to Policy.Containers before sorting
}

// containerLines holds the line of every part of one container.
type containerLines struct {
	name, mode, loopback, addresses, multicast int
	addr, mcast                                []int
}

// lines returns the lines of container i, or zero lines without a source.
func (s *source) lines(i int) containerLines {
	if s == nil || i >= len(s.containers) {
		return containerLines{}
	}
	return s.containers[i]
}

// reporter collects problems, positioned when there is a source.
type reporter struct {
	src  *source
	errs []error
}

func (r *reporter) add(line int, err error) {
	if r.src == nil {
		r.errs = append(r.errs, err)
		return
	}
	r.errs = append(r.errs, &Error{File: r.src.file, Line: line, Err: err})
}

func (r *reporter) addf(line int, format string, args ...any) {
	r.add(line, fmt.Errorf(format, args...))
}

// err returns the collected problems, in line order for a file.
func (r *reporter) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	errs := r.errs
	if r.src != nil {
		sort.SliceStable(errs, func(i, j int) bool {
			return errs[i].(*Error).Line < errs[j].(*Error).Line
		})
	}
	if len(errs) > maxErrors {
		errs = errs[:maxErrors:maxErrors]
		more := fmt.Errorf("too many problems, stopping after %d", maxErrors)
		if r.src != nil {
			more = &Error{File: r.src.file, Line: errs[maxErrors-1].(*Error).Line, Err: more}
		}
		errs = append(errs, more)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// or returns line, or fallback when line is unknown.
func or(line, fallback int) int {
	if line > 0 {
		return line
	}
	return fallback
}

func at(lines []int, i, fallback int) int {
	if i < len(lines) {
		return or(lines[i], fallback)
	}
	return fallback
}

// owned is one address of one container, for the ownership check.
type owned struct {
	c, j int32 // container, index of the address in it
}

// conflict is an address (c, j) that overlaps an earlier one (oc, oj).
type conflict struct{ c, j, oc, oj int32 }

// firstByName returns, for each container, the index of the first one with
// its name if that is an earlier one, else -1. A stable sort of the indices
// by name (no map of 10,000 names) puts each name's containers together,
// first one first.
func firstByName(cs []Container) []int32 {
	perm := make([]int32, len(cs))
	for i := range perm {
		perm[i] = int32(i)
	}
	slices.SortStableFunc(perm, func(a, b int32) int { return strings.Compare(cs[a].Name, cs[b].Name) })
	first := make([]int32, len(cs))
	for k := 0; k < len(perm); {
		run := k + 1
		for run < len(perm) && cs[perm[run]].Name == cs[perm[k]].Name {
			run++
		}
		first[perm[k]] = -1
		for m := k + 1; m < run; m++ {
			first[perm[m]] = perm[k]
		}
		k = run
	}
	return first
}

func validate(p *Policy, src *source) error {
	if p == nil {
		return nil
	}
	r := &reporter{src: src}
	first := firstByName(p.Containers)
	total := 0
	for i := range p.Containers {
		total += len(p.Containers[i].Addresses)
	}
	validAddr := make([]bool, total) // by address, container after container

	next := 0 // the first address of container i in validAddr
	for i := range p.Containers {
		c := &p.Containers[i]
		ln := src.lines(i)
		if err := ValidateName(c.Name); err != nil {
			r.add(ln.name, err)
		}
		if j := first[i]; j >= 0 {
			if src != nil {
				r.addf(ln.name, "container %q is defined twice (first at line %d): give each container one entry", c.Name, src.lines(int(j)).name)
			} else {
				r.addf(ln.name, "container %q is defined twice: give each container one entry", c.Name)
			}
		}

		switch c.Mode {
		case "":
			c.Mode = ModeShared
		case ModeShared, ModeNetns:
		default:
			r.addf(or(ln.mode, ln.name), "container %q: unknown mode %q: write shared or netns", c.Name, string(c.Mode))
		}
		switch c.Loopback {
		case "":
			c.Loopback = LoopbackIsolated
		case LoopbackIsolated, LoopbackHost:
			if c.Loopback == LoopbackHost && c.Mode == ModeNetns {
				r.addf(or(ln.loopback, ln.name), "container %q: loopback: host needs mode: shared (a netns container has its own loopback): remove loopback: host or use mode: shared", c.Name)
			}
		default:
			r.addf(or(ln.loopback, ln.name), "container %q: unknown loopback %q: write isolated or host", c.Name, string(c.Loopback))
		}

		switch n := len(c.Addresses); {
		case n == 0:
			r.addf(or(ln.addresses, ln.name), "container %q has no addresses: list at least one under addresses", c.Name)
		case n > MaxAddresses:
			r.addf(or(ln.addresses, ln.name), "container %q has %d addresses: at most %d are allowed", c.Name, n, MaxAddresses)
		}
		for j, a := range c.Addresses {
			if err := checkAddress(a); err != nil {
				r.addf(at(ln.addr, j, ln.name), "container %q: invalid address %q: %w", c.Name, a.String(), err)
				continue
			}
			if c.Mode == ModeNetns && !a.WholeIP() {
				r.addf(at(ln.addr, j, ln.name), "container %q: address %s names ports, but a netns container owns whole IPs (the address lives in its own namespace): drop the port, or use mode: shared to share an IP by ports", c.Name, a)
				continue
			}
			validAddr[next+j] = true
		}
		next += len(c.Addresses)

		if n := len(c.Multicast); n > MaxMulticast {
			r.addf(or(ln.multicast, ln.name), "container %q has %d multicast entries: at most %d are allowed", c.Name, n, MaxMulticast)
		}
		for j, g := range c.Multicast {
			line := at(ln.mcast, j, ln.name)
			if err := checkMulticast(g); err != nil {
				r.addf(line, "container %q: invalid multicast group %q: %w", c.Name, multicastString(g), err)
				continue
			}
			if slices.Contains(c.Multicast[:j], g) {
				r.addf(line, "container %q: multicast group %s is listed twice: list it once", c.Name, multicastString(g))
			}
		}
	}

	// Ownership: only addresses of the same IP are compared, in the order
	// of the containers and their addresses: an earlier one wins, the later
	// one is reported. A stable sort by IP (no map of 10,000 IPs) groups
	// them and keeps that order in each group.
	ents := make([]owned, 0, total)
	next = 0
	for i := range p.Containers {
		c := &p.Containers[i]
		for j := range c.Addresses {
			if first[i] < 0 && validAddr[next+j] {
				ents = append(ents, owned{c: int32(i), j: int32(j)})
			}
		}
		next += len(c.Addresses)
	}
	addrOf := func(o owned) netip.Addr { return p.Containers[o.c].Addresses[o.j].Addr }
	slices.SortStableFunc(ents, func(a, b owned) int { return addrOf(a).Compare(addrOf(b)) })
	var conflicts []conflict
	var kept []owned // the owners of the current IP so far
	for k, e := range ents {
		if k == 0 || addrOf(e) != addrOf(ents[k-1]) {
			kept = kept[:0]
		}
		a := p.Containers[e.c].Addresses[e.j]
		clash := false
		for _, o := range kept {
			if a.Overlaps(p.Containers[o.c].Addresses[o.j]) {
				conflicts = append(conflicts, conflict{e.c, e.j, o.c, o.j})
				clash = true
				break // report each conflict once, and keep the first owner
			}
		}
		if !clash {
			kept = append(kept, e)
		}
	}
	slices.SortFunc(conflicts, func(a, b conflict) int {
		if a.c != b.c {
			return int(a.c - b.c)
		}
		return int(a.j - b.j)
	})
	for _, x := range conflicts {
		c := &p.Containers[x.c]
		ln := src.lines(int(x.c))
		a, b := c.Addresses[x.j], p.Containers[x.oc].Addresses[x.oj]
		if x.oc == x.c {
			r.addf(at(ln.addr, int(x.j), ln.name), "address %s of container %q overlaps its address %s: list each address:port once", a, c.Name, b)
		} else {
			r.addf(at(ln.addr, int(x.j), ln.name), "address %s of container %q overlaps %s of container %q: an address:port may be owned by one container only", a, c.Name, b, p.Containers[x.oc].Name)
		}
	}

	validatePods(p, r)

	if !slices.IsSortedFunc(p.Containers, byName) {
		slices.SortStableFunc(p.Containers, byName)
	}
	return r.err()
}
