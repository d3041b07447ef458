package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	table := "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n" +
		"40 30 0:37 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n" +
		"41 22 0:38 / /a\\040b rw - bpf bpf rw,mode=700\n" +
		"garbage\n"
	if err := os.WriteFile(f, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	ms, err := Read(f)
	if err != nil || len(ms) != 3 {
		t.Fatalf("Read = %v, %v; want 3 mounts", ms, err)
	}
	if ms[2] != (Mount{Point: "/a b", FSType: "bpf"}) {
		t.Errorf("escaped mount point: %+v", ms[2])
	}
	p, err := Points(f, "cgroup2", "proc")
	if err != nil || len(p) != 2 || p[0] != "/proc" || p[1] != "/sys/fs/cgroup/unified" {
		t.Errorf("Points = %v, %v", p, err)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup/unified`: "/sys/fs/cgroup/unified",
		`/mnt/a\040b`:            "/mnt/a b",
		`/x\134y`:                `/x\y`,
		`/trailing\04`:           `/trailing\04`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
