package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
)

// TestKilledCgroupRepair: a `container del` that died right after killing
// the container's processes (its cgroup is marked and was killed, the
// dirty bit is set, the metadata is still there) is rolled back by the
// next changing command, which must give the container a new cgroup: on
// this kernel, a child cloned straight into a cgroup whose cgroup.kill was
// written is killed at birth (see cgroup.Killed), so the old one would
// kill every process a runtime starts there with CLONE_INTO_CGROUP.
func TestKilledCgroupRepair(t *testing.T) {
	e := newEnv(t)
	e.mustRun("container", "add", "x", "--addr", "10.77.5.1")
	cg := e.cgroupOf("x")
	oldID := cgroupID(t, cg)
	e.agent("x") // a process for the kill to kill

	// What cgroup.Remove does before it dies: mark, then cgroup.kill.
	if err := unix.Setxattr(cg, "user.l3iso.killed", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, cg)
	if !cgroup.Killed(cg) {
		t.Fatal("cgroup.Killed does not see the mark")
	}
	if err := spawnInto(cg); err == nil {
		t.Log("this kernel lets a child be cloned into a killed cgroup: the repair is not needed here, but must still work")
	} else {
		t.Logf("a child cloned into the killed cgroup: %v (the kernel behaviour the repair works around)", err)
	}
	// The dirty bit of a command that died.
	s, err := maps.OpenPinned(filepath.Join(e.bpffs, "maps"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := s.Config()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dirty = true
	if err := s.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	s.Close()

	e.mustRun("container", "add", "probe", "--addr", "10.77.5.2") // repairs
	e.mustRun("container", "del", "probe")
	if newID := cgroupID(t, cg); newID == oldID {
		t.Fatalf("the repair kept the killed cgroup (id %d)", oldID)
	}
	if cgroup.Killed(cg) {
		t.Fatal("the new cgroup carries the mark")
	}
	if err := spawnInto(cg); err != nil {
		t.Fatalf("a child cloned into x's cgroup after the repair: %v", err)
	}
	// The container works with its new cgroup: its address is its own.
	b := e.agent("x")
	id := b.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err := b.Bind(id, ap("10.77.5.1:0")); err != nil {
		t.Fatalf("x cannot bind its address after the repair: %v", err)
	}
	if err := b.Bind(b.Socket(unix.AF_INET, unix.SOCK_STREAM, 0), ap("10.77.5.2:0")); err == nil {
		t.Fatal("x could bind an address it does not own after the repair")
	}
	if list := e.mustRun("container", "list"); !strings.Contains(list, "x") {
		t.Fatalf("x is gone after the repair:\n%s", list)
	}
}

func cgroupID(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := cgroup.ID(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// waitEmpty waits until no process is left in the cgroup at path.
func waitEmpty(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		pop, err := cgroup.Populated(path)
		if err != nil {
			t.Fatal(err)
		}
		if !pop {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of %s did not die", path)
		}
	}
}

// spawnInto runs /bin/true cloned straight into the cgroup at path.
func spawnInto(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Run(); err != nil {
		return err
	}
	if !cmd.ProcessState.Success() {
		return &exec.ExitError{ProcessState: cmd.ProcessState}
	}
	return nil
}
