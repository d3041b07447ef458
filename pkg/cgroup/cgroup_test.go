package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

func TestMountAndLevel(t *testing.T) {
	m, err := Mount()
	if err != nil {
		if sockprobe.Required() {
			t.Fatalf("no cgroup v2 here, and CI / L3ISO_REQUIRE_PRIVILEGED forbid skipping this: %v", err)
		}
		t.Skipf("no cgroup v2 here: %v", err)
	}
	if err := Check(m); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want int
	}{{m, 0}, {filepath.Join(m, "a"), 1}, {filepath.Join(m, "a/b/c"), 3}} {
		if got, err := Level(m, tc.path); err != nil || got != tc.want {
			t.Errorf("Level(%s) = %d, %v; want %d", tc.path, got, err, tc.want)
		}
	}
	if _, err := Level(m, "/tmp"); err == nil {
		t.Error("Level of a path outside the mount succeeded")
	}
	if err := Check(os.TempDir()); err == nil {
		t.Error("Check accepted a directory that is not on cgroup v2")
	}
	missing := filepath.Join(m, "l3iso-no-such-cgroup")
	if err := Check(missing); err == nil || !strings.Contains(err.Error(), "does not exist: create it") {
		t.Errorf("Check(%s) = %v, want an error that says to create it", missing, err)
	}
}

func TestStoppedString(t *testing.T) {
	for _, c := range []struct {
		s    Stopped
		want string
	}{
		{Stopped{Grace: 10 * time.Second}, "no processes were running"},
		{Stopped{Procs: 1, Grace: 10 * time.Second}, "stopped 1 process"},
		{Stopped{Procs: 3, Killed: 1, Grace: 10 * time.Second}, "stopped 3 processes, killed 1 after 10s"},
		{Stopped{Procs: 2, Killed: 2}, "stopped 2 processes, killed 2 at once (--grace 0)"},
		{Stopped{Procs: 2, Killed: 1, Grace: time.Second}.Plus(Stopped{Procs: 1, Grace: time.Second}), "stopped 3 processes, killed 1 after 1s"},
	} {
		if got := c.s.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.s, got, c.want)
		}
	}
}

// TestPathByID finds a fresh cgroup and its child by their ids, and finds
// neither once they are removed.
func TestPathByID(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	dir := sockprobe.NewCgroup(t, "")
	child := filepath.Join(dir, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, child} {
		id, err := ID(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := PathByID(dir, id); err != nil || got != p {
			t.Errorf("PathByID(%d) = %q, %v; want %q", id, got, err, p)
		}
	}
	id, _ := ID(child)
	if err := os.Remove(child); err != nil {
		t.Fatal(err)
	}
	if got, err := PathByID(dir, id); !errors.Is(err, unix.ESTALE) {
		t.Errorf("PathByID of removed cgroup %d = %q, %v; want ESTALE", id, got, err)
	}
}
