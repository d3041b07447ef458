package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stopped says what Stop did to the processes of one cgroup subtree.
type Stopped struct {
	// Procs counts the processes that were ended: those sent SIGTERM and
	// those found still there (or new) when the grace period ended.
	Procs int
	// Killed counts, of those, the ones still running when the grace
	// period ended, which cgroup.kill ended with SIGKILL.
	Killed int
	// Grace is the grace period that Stop was given.
	Grace time.Duration
}

// Plus adds what another Stop ended (same grace period).
func (s Stopped) Plus(o Stopped) Stopped {
	return Stopped{Procs: s.Procs + o.Procs, Killed: s.Killed + o.Killed, Grace: max(s.Grace, o.Grace)}
}

// String reports it for people: "no processes were running", "stopped
// 3 processes", "stopped 3 processes, killed 1 after 10s", "stopped 2
// processes, killed 2 at once (--grace 0)".
func (s Stopped) String() string {
	if s.Procs == 0 {
		return "no processes were running"
	}
	out := "stopped " + Plural(s.Procs, "process", "processes")
	switch {
	case s.Killed == 0:
	case s.Grace <= 0:
		out += fmt.Sprintf(", killed %d at once (--grace 0)", s.Killed)
	default:
		out += fmt.Sprintf(", killed %d after %s", s.Killed, s.Grace)
	}
	return out
}

// Plural is "1 process", "2 processes".
func Plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// Procs counts the processes in the cgroup subtree at path (0 for a
// missing cgroup).
func Procs(path string) (int, error) {
	if pop, err := Populated(path); err != nil || !pop {
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return 0, err
	}
	n := 0
	err := eachCgroup(path, func(dir string) error {
		pids, err := readProcs(dir)
		n += len(pids)
		return err
	})
	return n, err
}

// Stop ends the processes of each cgroup subtree in paths, all at once:
// SIGTERM (then SIGCONT, so that a stopped process can act on it) to
// every process, up to grace for them to exit, then SIGKILL through
// cgroup.kill for whatever is left. With grace ≤ 0 it kills at once. The
// subtrees stay (Remove removes them); out[i] is what was done in paths[i].
//
// A process that forks while it is being signalled gets the signal too
// (the subtree is read again until a pass finds nobody new); one forked
// during the grace period gets only the SIGKILL. Each process is signalled
// through a pidfd opened while its pid was listed in the cgroup, so a pid
// the kernel recycled for a process elsewhere is never signalled.
//
// Before writing cgroup.kill it marks the cgroup, as Remove does (see
// Killed): a command that dies after that leaves a cgroup the repair makes
// anew. One that dies during the grace period leaves the container as it
// was, with the processes that ignored SIGTERM running in it, still
// confined.
func Stop(paths []string, grace time.Duration) ([]Stopped, error) {
	out := make([]Stopped, len(paths))
	seen := make([]map[int]bool, len(paths))
	var busy []int // index into paths: populated
	for i, p := range paths {
		out[i].Grace = grace
		pop, err := Populated(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return out, fmt.Errorf("stop the processes of cgroup %s: %w", p, err)
		}
		if pop {
			busy = append(busy, i)
			seen[i] = map[int]bool{}
		}
	}
	if len(busy) == 0 {
		return out, nil
	}
	if grace > 0 {
		deadline := time.Now().Add(grace)
		if err := parallel(busy, func(i int) error { return terminate(paths[i], seen[i]) }); err != nil {
			return out, err
		}
		busy = waitEmpty(paths, busy, deadline)
	}
	// What is left after the grace period: counted, then killed.
	err := parallel(busy, func(i int) error {
		pids, err := listAll(paths[i])
		if err != nil {
			return err
		}
		for _, pid := range pids {
			seen[i][pid] = true
		}
		out[i].Killed = len(pids)
		return kill(paths[i])
	})
	for i, s := range seen {
		out[i].Procs = len(s)
	}
	if err != nil {
		return out, err
	}
	if left := waitEmpty(paths, busy, time.Now().Add(killTimeout)); len(left) > 0 {
		p := paths[left[0]]
		return out, fmt.Errorf("processes of cgroup %s did not exit within %s of SIGKILL: check `cat %s/cgroup.procs`", p, killTimeout, p)
	}
	return out, nil
}

// killTimeout bounds the wait for processes to exit after cgroup.kill.
const killTimeout = 5 * time.Second

// parallel runs f for each of idx, a few at a time; the first error wins.
func parallel(idx []int, f func(int) error) error {
	const workers = 8
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range min(workers, len(idx)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, i := range idx {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// waitEmpty waits until each cgroup of busy (index into paths) has no
// process, or until deadline, and returns those that still have.
func waitEmpty(paths []string, busy []int, deadline time.Time) []int {
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		left := busy[:0:0]
		for _, i := range busy {
			if pop, err := Populated(paths[i]); err == nil && pop {
				left = append(left, i)
			}
		}
		busy = left
		if len(busy) == 0 || !time.Now().Before(deadline) {
			return busy
		}
		time.Sleep(min(pause, time.Until(deadline)))
	}
}

// terminate sends SIGTERM and SIGCONT to every process in the subtree at
// path, pass after pass until a pass finds no process it has not
// signalled (one that forked meanwhile); seen collects them.
func terminate(path string, seen map[int]bool) error {
	for pass := 0; pass < 100; pass++ {
		fresh := 0
		err := eachCgroup(path, func(dir string) error {
			n, err := signalProcs(dir, seen)
			fresh += n
			return err
		})
		if err != nil {
			return fmt.Errorf("stop the processes of cgroup %s: %w", path, err)
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil // a fork bomb: cgroup.kill ends it after the grace period
}

// signalProcs signals, in the cgroup dir (not below), the processes not
// in seen, and adds them. A pid is signalled through a pidfd, and only if
// the pid is still listed in dir once the pidfd is open: the pidfd is then
// the process in dir, not another that got a recycled pid.
func signalProcs(dir string, seen map[int]bool) (int, error) {
	pids, err := readProcs(dir)
	if err != nil {
		return 0, err
	}
	type open struct{ pid, fd int }
	var fds []open
	defer func() {
		for _, o := range fds {
			unix.Close(o.fd)
		}
	}()
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // gone already
		}
		if err != nil {
			return 0, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		fds = append(fds, open{pid, fd})
	}
	if len(fds) == 0 {
		return 0, nil
	}
	now, err := readProcs(dir)
	if err != nil {
		return 0, err
	}
	still := make(map[int]bool, len(now))
	for _, pid := range now {
		still[pid] = true
	}
	n := 0
	for _, o := range fds {
		if !still[o.pid] {
			continue // exited, or moved to a child cgroup: the next pass looks there
		}
		for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGCONT} {
			if err := unix.PidfdSendSignal(o.fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return n, fmt.Errorf("signal process %d: %w", o.pid, err)
			}
		}
		seen[o.pid] = true
		n++
	}
	return n, nil
}

// listAll returns the processes in the subtree at path.
func listAll(path string) ([]int, error) {
	var out []int
	err := eachCgroup(path, func(dir string) error {
		pids, err := readProcs(dir)
		out = append(out, pids...)
		return err
	})
	return out, err
}

// eachCgroup calls f for path and every cgroup below it, parents first.
// A cgroup removed meanwhile is skipped.
func eachCgroup(path string, f func(dir string) error) error {
	if err := f(path); err != nil {
		return err
	}
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list cgroup %s: %w", path, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := eachCgroup(filepath.Join(path, e.Name()), f); err != nil {
				return err
			}
		}
	}
	return nil
}

// readProcs lists the processes in the cgroup dir itself. A cgroup removed
// meanwhile has none; so has a threaded one (cgroup.procs cannot be read
// there: its processes are listed in its domain).
func readProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s/cgroup.procs: %w", dir, err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// kill marks the cgroup at path (see Killed), then kills every process in
// its subtree with cgroup.kill; it does not wait.
func kill(path string) error {
	if err := unix.Setxattr(path, killedAttr, []byte("1"), 0); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("mark cgroup %s before killing its processes: %w", path, err)
	}
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("kill processes of cgroup %s: %w", path, err)
	}
	return nil
}
