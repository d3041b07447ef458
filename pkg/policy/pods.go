package policy

import (
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Pod rules: what a container that a runtime attaches through the CNI
// plugin (a pod) may own beyond the address its IPAM plugin gives it. The
// plugin reads them from the policy file its network configuration names
// ("policy"), at each ADD; `apply` only checks them (a running pod keeps
// what it got when it was added). A policy file lists them under pods:
//
//	pods:
//	  - match: "prod/mcast-*"        # glob, see PodRule.Match
//	    addresses: [10.88.1.5]        # whole IPs, as a netns container owns
//	    multicast: [239.1.1.0/24]
//
// The first rule that matches a pod applies; a pod no rule matches gets
// its IPAM addresses and no multicast group.

// PodRule is one entry of a policy's pods list.
type PodRule struct {
	// Match is a glob (path.Match: *, ?, [...]) matched against the pod's
	// names: "NAMESPACE/NAME" from the CNI arguments K8S_POD_NAMESPACE and
	// K8S_POD_NAME (Kubernetes), K8S_POD_NAME alone (podman passes the
	// container's name there) and the container ID (CNI_CONTAINERID; ctr
	// passes NAMESPACE-ID). "*" does not cross a "/".
	Match string
	// Addresses are extra whole IPs (optionally on a subnet) the pod owns.
	Addresses []Address
	// Multicast are the groups the pod may join.
	Multicast []netip.Prefix
	line      int // where the rule starts in its file (0: unknown)
}

// MatchPod returns the first rule that matches one of names, and whether
// one does.
func (p *Policy) MatchPod(names ...string) (PodRule, bool) {
	if p == nil {
		return PodRule{}, false
	}
	for _, r := range p.Pods {
		for _, n := range names {
			if n == "" {
				continue
			}
			if ok, _ := path.Match(r.Match, n); ok {
				return r, true
			}
		}
	}
	return PodRule{}, false
}

var podFields = []string{"match", "addresses", "multicast"}

// pods reads the pods list.
func (b *builder) pods(v *yaml.Node) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.SequenceNode {
		b.r.addf(v.Line, "pods must be a list of rules (- match: ..., addresses: [...], multicast: [...]), not %s", describe(v))
		return
	}
	for i, item := range v.Content {
		item = resolve(item)
		where := "pods entry " + strconv.Itoa(i+1) + ": "
		if item.Kind != yaml.MappingNode {
			b.r.addf(item.Line, "%smust be a mapping of match, addresses and multicast, not %s", where, describe(item))
			continue
		}
		r := PodRule{line: item.Line}
		b.fields(item, where, podFields, func(k, val *yaml.Node) {
			switch k.Value {
			case "match":
				if s, ok := b.scalar(val, where, "match", `a glob such as "prod/web-*"`); ok {
					r.Match = s
				}
			case "addresses":
				for _, it := range b.list(val, where, "addresses", "[10.88.1.5]") {
					a, err := ParseAddress(it.Value)
					if err != nil {
						b.r.addf(it.Line, "%s%w", where, err)
						continue
					}
					r.Addresses = append(r.Addresses, a)
				}
			case "multicast":
				for _, it := range b.list(val, where, "multicast", "[239.1.1.0/24]") {
					g, err := ParseMulticast(it.Value)
					if err != nil {
						b.r.addf(it.Line, "%s%w", where, err)
						continue
					}
					r.Multicast = append(r.Multicast, g)
				}
			}
		})
		b.p.Pods = append(b.p.Pods, r)
	}
}

// validatePods checks the pod rules: a valid glob, whole IPs that no
// container of the policy owns, valid multicast groups, the limits a
// container has (the pod's IPAM address takes one of MaxAddresses).
func validatePods(p *Policy, r *reporter) {
	owner := map[netip.Addr]string{}
	for _, c := range p.Containers {
		for _, a := range c.Addresses {
			owner[a.Addr] = c.Name
		}
	}
	for i, rule := range p.Pods {
		where := fmt.Sprintf("pods entry %d (match %q): ", i+1, rule.Match)
		if rule.Match == "" {
			r.addf(rule.line, "pods entry %d has no match: write e.g. match: \"prod/web-*\"", i+1)
		} else if _, err := path.Match(rule.Match, ""); err != nil {
			r.addf(rule.line, "%sinvalid glob: %v", where, err)
		}
		if n := len(rule.Addresses); n > MaxAddresses-1 {
			r.addf(rule.line, "%s%d addresses: at most %d (the pod's IPAM address is one of %d)", where, n, MaxAddresses-1, MaxAddresses)
		}
		for j, a := range rule.Addresses {
			switch err := checkAddress(a); {
			case err != nil:
				r.addf(rule.line, "%sinvalid address %q: %w", where, a.String(), err)
			case !a.WholeIP():
				r.addf(rule.line, "%saddress %s names ports, but a pod owns whole IPs (its own namespace): drop the port", where, a)
			case owner[a.Addr] != "":
				r.addf(rule.line, "%saddress %s is owned by container %q: a pod cannot own it too", where, a.Addr, owner[a.Addr])
			case slices.ContainsFunc(rule.Addresses[:j], func(b Address) bool { return b.Addr == a.Addr }):
				r.addf(rule.line, "%saddress %s is listed twice", where, a.Addr)
			}
		}
		if n := len(rule.Multicast); n > MaxMulticast {
			r.addf(rule.line, "%s%d multicast entries: at most %d", where, n, MaxMulticast)
		}
		for _, g := range rule.Multicast {
			if err := checkMulticast(g); err != nil {
				r.addf(rule.line, "%sinvalid multicast group %q: %w", where, multicastString(g), err)
			}
		}
	}
}
