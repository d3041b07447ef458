package bench

import (
	"testing"

	"github.com/l3iso/l3iso/bench/engine"
	"github.com/l3iso/l3iso/internal/sockprobe"
)

// newFloorCgroup makes a cgroup under parent with a do-nothing program at
// each of l3iso's cgroup hooks (engine.AttachDoNothingCgroup): the hooks'
// own price, without l3iso's work. (The namespace's programs, sk_lookup
// and lo's TCX, are those of the installation whose netns it runs in.)
func newFloorCgroup(tb testing.TB, parent string) string {
	return newDoNothingCgroup(tb, parent, engine.AttachDoNothingCgroup)
}

// newSockFloorCgroup is newFloorCgroup without the packet (cgroup_skb)
// attach points (engine.AttachDoNothingSockets).
func newSockFloorCgroup(tb testing.TB, parent string) string {
	return newDoNothingCgroup(tb, parent, engine.AttachDoNothingSockets)
}

func newDoNothingCgroup(tb testing.TB, parent string, attach func(string) (*engine.DoNothing, error)) string {
	tb.Helper()
	cg := sockprobe.NewCgroup(tb, parent)
	d, err := attach(cg)
	if err != nil {
		tb.Fatal(err)
	}
	// Registered after the cgroup's removal, so it runs before it.
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("detach the do-nothing programs: %v", err)
		}
	})
	return cg
}
