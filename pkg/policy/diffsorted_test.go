package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"testing"
)

// TestDiffSorted: the merge of sorted policies says what the general
// (by-name) comparison says.
func TestDiffSorted(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	mk := func(n int) *Policy {
		p := &Policy{}
		for i := 0; i < n; i++ {
			if rng.Intn(4) == 0 {
				continue
			}
			c := Container{Name: fmt.Sprintf("c%03d", i), Addresses: []Address{{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(rng.Intn(3))})}}}
			if rng.Intn(5) == 0 {
				c.Loopback = LoopbackHost
			}
			if rng.Intn(6) == 0 {
				c.Mode = ModeNetns
			}
			p.Containers = append(p.Containers, c)
		}
		return p
	}
	for round := 0; round < 50; round++ {
		a, b := mk(60), mk(60)
		got := Diff(a, b)
		// Shuffled, the same policies take the general path.
		sa, sb := &Policy{Containers: slices.Clone(a.Containers)}, &Policy{Containers: slices.Clone(b.Containers)}
		rng.Shuffle(len(sa.Containers), func(i, j int) { sa.Containers[i], sa.Containers[j] = sa.Containers[j], sa.Containers[i] })
		rng.Shuffle(len(sb.Containers), func(i, j int) { sb.Containers[i], sb.Containers[j] = sb.Containers[j], sb.Containers[i] })
		if len(sa.Containers) > 1 && len(sb.Containers) > 1 {
			if _, ok := diffSorted(sa, sb); ok && !slices.IsSortedFunc(sa.Containers, func(x, y Container) int { return cmpName(x, y) }) {
				t.Fatal("diffSorted took unsorted policies")
			}
		}
		want := Diff(sa, sb)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d:\nmerge:   %v\nby name: %v", round, got, want)
		}
	}
	if _, ok := diffSorted(&Policy{Containers: []Container{{Name: "a"}, {Name: "a"}}}, nil); ok {
		t.Error("diffSorted took a policy with a name twice")
	}
}

func cmpName(x, y Container) int {
	switch {
	case x.Name < y.Name:
		return -1
	case x.Name > y.Name:
		return 1
	}
	return 0
}
