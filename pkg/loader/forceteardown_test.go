package loader_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
)

// TestForceTeardown: an installation this binary cannot read loses its
// containers' cgroups (found from the links' attach point by its id), its
// links and its pins — whichever of its cgroup links are left: all of them,
// only the egress backstop's (attached to the containers' cgroup itself),
// or all but that one (attached to the root).
func TestForceTeardown(t *testing.T) {
	for _, c := range []struct {
		name string
		keep func(link string) bool
	}{
		{"all-links", func(string) bool { return true }},
		{"only-egress", func(l string) bool { return l == "l3_egress" }},
		{"all-but-egress", func(l string) bool { return l != "l3_egress" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, netns, root, dir := upTemp(t)
			st.Close()
			t.Cleanup(func() {
				if _, err := os.Stat(dir); err == nil { // the teardown failed: undo Up
					inNetns(netns, func() error {
						if st, err := loader.Open(dir, true); err == nil {
							st.Teardown()
							st.Close()
						}
						return nil
					})
				}
			})
			web := filepath.Join(root, loader.ContainersDir, "web")
			if err := cgroup.Create(web); err != nil {
				t.Fatal(err)
			}
			sockprobe.Start(t, sockprobe.Options{CgroupDir: web, NetnsPath: netns}) // a process in it: the teardown kills it
			links, err := os.ReadDir(filepath.Join(dir, "links"))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range links {
				if !c.keep(l.Name()) && !strings.HasPrefix(l.Name(), "tc-") {
					if err := os.Remove(filepath.Join(dir, "links", l.Name())); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := loader.ForceTeardown(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(root, loader.ContainersDir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the containers' cgroups stay after ForceTeardown: %v", err)
			}
			if _, err := os.Stat(root); err != nil {
				t.Errorf("ForceTeardown removed the cgroup root itself: %v", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the pins stay after ForceTeardown: %v", err)
			}
		})
	}
}
