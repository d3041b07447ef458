package policy

import (
	"strings"
	"testing"
)

// TestPods: pods: rules parse, match first-wins on any of a pod's names,
// and bad rules are reported at their line.
func TestPods(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`containers:
  web:
    addresses: [10.77.0.1]
pods:
  - match: "prod/mcast-*"
    addresses: [10.88.1.5, fd88::5]
    multicast: [239.1.1.0/24]
  - match: "*"
`))
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := p.MatchPod("prod/mcast-1", "mcast-1", "abc"); !ok || r.Match != "prod/mcast-*" || len(r.Addresses) != 2 || len(r.Multicast) != 1 {
		t.Errorf("MatchPod(prod/mcast-1): %+v, %v", r, ok)
	}
	if r, ok := p.MatchPod("dev/mcast-1", "mcast-1"); !ok || r.Match != "*" {
		t.Errorf("MatchPod(dev/mcast-1, mcast-1): %+v, %v: want the catch-all, on mcast-1", r, ok)
	}
	if r, ok := p.MatchPod("dev/mcast-1"); ok {
		t.Errorf("MatchPod(dev/mcast-1) = %+v: * must not cross a /", r)
	}
	for _, c := range []struct{ text, want string }{
		{"pods:\n  - addresses: [10.88.1.5]\n", "p.yaml:2: pods entry 1 has no match"},
		{"pods:\n  - match: \"[\"\n", "invalid glob"},
		{"pods:\n  - match: x\n    addresses: [\"10.88.1.5:80/tcp\"]\n", "a pod owns whole IPs"},
		{"containers:\n  web:\n    addresses: [10.77.0.1]\npods:\n  - match: x\n    addresses: [10.77.0.1]\n", `owned by container "web"`},
		{"pods:\n  - match: x\n    multicast: [10.0.0.0/8]\n", "multicast"},
		{"pods:\n  - match: x\n    adresses: [10.0.0.1]\n", `did you mean "addresses"`},
		{"pods: {}\n", "pods must be a list"},
	} {
		_, err := Parse("p.yaml", []byte(c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q): %v, want an error with %q", c.text, err, c.want)
		}
	}
}
