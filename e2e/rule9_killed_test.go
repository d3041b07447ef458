package e2e

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
// kill every process a runtime starts there with CLONE_INTO_CGROUP. A
// process that joined the old cgroup after the crash is not killed for
// that: the cgroup is made anew once it is empty.
func TestKilledCgroupRepair(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "x", "--addr", "10.77.5.1")
	e.mustRun("container", "add", "y", "--addr", "10.77.5.3")
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
	// A process that joined the cgroup since, as `l3iso exec` joins: the
	// repair must not kill it, and keeps the cgroup while it lives.
	joined := exec.Command("sh", "-c", `echo 0 > "$1/cgroup.procs" && exec sleep 60`, "sh", cg)
	if err := joined.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { joined.Wait(); close(exited) }()
	t.Cleanup(func() { joined.Process.Kill(); <-exited })
	waitPopulated(t, cg)
	e.markDirty()
	e.mustRun("container", "add", "probe", "--addr", "10.77.5.2") // repairs
	e.mustRun("container", "del", "probe")
	select {
	case <-exited:
		t.Fatalf("the repair killed a process that joined x after the crash: %v", joined.ProcessState)
	case <-time.After(100 * time.Millisecond):
	}
	if id := cgroupID(t, cg); id != oldID {
		t.Fatalf("the repair replaced x's cgroup with a process in it (id %d, was %d)", id, oldID)
	}
	joined.Process.Kill()
	<-exited
	waitEmpty(t, cg)

	// Empty now: the next repair makes it anew.
	e.markDirty()
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
	// The maps know the new cgroup: x may bind its address (a host
	// process may not), and still not y's.
	b := e.agent("x")
	id := b.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err := b.Bind(id, ap("10.77.5.1:0")); err != nil {
		t.Fatalf("x cannot bind its address after the repair: %v", err)
	}
	if err := b.Bind(b.Socket(unix.AF_INET, unix.SOCK_STREAM, 0), ap("10.77.5.3:0")); err == nil {
		t.Fatal("x could bind y's address after the repair")
	}
	if list := e.mustRun("container", "list"); !strings.Contains(list, "x") {
		t.Fatalf("x is gone after the repair:\n%s", list)
	}
}

// markDirty sets the dirty bit, as a changing command that died leaves it.
func (e *env) markDirty() {
	e.t.Helper()
	e.editConfig(func(cfg *maps.Config) { cfg.Dirty = true })
}

// waitPopulated waits until a process is in the cgroup at path.
func waitPopulated(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if pop, err := cgroup.Populated(path); err == nil && pop {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no process joined %s", path)
		}
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
	return cmd.Run()
}
