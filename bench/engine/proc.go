package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Place is where a worker runs: a cgroup and a network namespace (either
// may be "": the benchmark's own), the address it works with and the CPU
// its working threads are pinned to (-1: none).
type Place struct {
	Cgroup string
	Netns  string
	Addr   netip.Addr // server: listen on; client: connect to (the loops: their own sockets')
	CPU    int
}

// Worker is a running worker (see worker.go): the parent's side of the
// protocol.
type Worker struct {
	what   string
	cmd    *exec.Cmd
	in     io.WriteCloser
	lines  chan string
	stderr *lockedBuffer
	done   chan struct{}
	once   sync.Once
}

// StartWorker starts bin (a binary that calls MaybeWorker first thing) as
// a worker with the given role in place p; env are more environment
// variables ($L3ISO_BENCH_PORTS, ...). what names it in errors. Stop it
// with Stop (or let ctx end it).
func StartWorker(ctx context.Context, bin, what, role string, p Place, env ...string) (*Worker, error) {
	cmd, release, err := command(ctx, p.Cgroup, bin)
	if err != nil {
		return nil, err
	}
	defer release()
	// No asynchronous preemption: fewer signals interrupting the workers'
	// system calls.
	cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1", envWorker+"="+role, fmt.Sprintf("%s=%d", envCPU, p.CPU))
	if p.Addr.IsValid() {
		cmd.Env = append(cmd.Env, envAddr+"="+p.Addr.String())
	}
	cmd.Env = append(cmd.Env, env...)
	w := &Worker{what: what, cmd: cmd, lines: make(chan string, 1), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = w.stderr
	if w.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := startIn(p.Netns, cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
		cmd.Wait()
		close(w.done)
	}()
	return w, nil
}

// Pid is the worker's process id.
func (w *Worker) Pid() int { return w.cmd.Process.Pid }

// Stop closes the worker's stdin, which ends it, and kills it if it has
// not exited within 5 s. It returns the worker's failure, with its
// stderr, if it exited with one; stopping twice is fine.
func (w *Worker) Stop() error {
	w.once.Do(func() {
		w.in.Close()
		go func() { // unread answers must not block the reader
			for range w.lines {
			}
		}()
	})
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("%s did not exit within 5 s of its stdin closing: killed", w.what)
	}
	if st := w.cmd.ProcessState; st != nil && !st.Success() {
		return fmt.Errorf("%s: %v: %s", w.what, st, w.stderr.String())
	}
	return nil
}

// Send writes one command line.
func (w *Worker) Send(line string) error {
	if _, err := io.WriteString(w.in, line+"\n"); err != nil {
		return fmt.Errorf("%s: send %q: %w (%s)", w.what, line, err, w.stderr.String())
	}
	return nil
}

// Recv decodes the next line into v.
func (w *Worker) Recv(ctx context.Context, timeout time.Duration, v any) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l, ok := <-w.lines:
		if !ok {
			<-w.done
			return fmt.Errorf("%s exited: %s", w.what, w.stderr.String())
		}
		if err := json.Unmarshal([]byte(l), v); err != nil {
			return fmt.Errorf("%s: bad line %q: %w", w.what, l, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s: no answer within %v (%s)", w.what, timeout, w.stderr.String())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Call sends one command line and decodes the answer into v.
func (w *Worker) Call(ctx context.Context, line string, timeout time.Duration, v any) error {
	if err := w.Send(line); err != nil {
		return err
	}
	return w.Recv(ctx, timeout, v)
}

// Run has a client worker run workload for d and returns its result; a
// failed run is an error.
func (w *Worker) Run(ctx context.Context, workload string, d time.Duration) (RunResult, error) {
	var res RunResult
	if err := w.Call(ctx, fmt.Sprintf("%s %d", workload, d.Nanoseconds()), d+60*time.Second, &res); err != nil {
		return res, err
	}
	if res.Error != "" {
		return res, fmt.Errorf("%s: %s: %s", w.what, workload, res.Error)
	}
	return res, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.b.String())
}

// command prepares name with args to run in cgroup cg ("": the
// benchmark's own); start it with startIn. Every child gets its own
// process group: a Ctrl-C at the terminal reaches only the benchmark,
// which then stops its children in order and cleans up. release closes
// the cgroup's descriptor once the child has started.
func command(ctx context.Context, cg, name string, args ...string) (*exec.Cmd, func(), error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	release := func() {}
	if cg != "" {
		fd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open cgroup %s: %w", cg, err)
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
		release = func() { unix.Close(fd) }
	}
	return cmd, release, nil
}

// startIn starts cmd in the network namespace at path ("": the
// benchmark's own): a child is born in the network namespace of the
// thread that forks it, so cmd starts from a thread that has entered
// netns (inNetns), the way `ip netns exec` would put it there, without a
// helper process in between. The child never inherits the thread's
// lifetime: no Pdeathsig is set.
func startIn(netns string, cmd *exec.Cmd) error {
	if netns == "" {
		return cmd.Start()
	}
	return inNetns(netns, cmd.Start)
}

// runIn runs cmd in the network namespace at netns ("": the benchmark's
// own) and waits for it.
func runIn(netns string, cmd *exec.Cmd) error {
	if err := startIn(netns, cmd); err != nil {
		return err
	}
	return cmd.Wait()
}
