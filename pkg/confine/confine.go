// Package confine starts a command inside an l3iso container so that
// nothing it does — as root or any uid — can weaken its own, another
// container's or the host's isolation (docs/DESIGN.md rule 8). `l3iso exec` is
// its one user.
//
// Three processes take part, each the l3iso binary:
//
//	l3iso exec   host root, on a locked OS thread: enters the container's
//	             network namespace (netns mode) and cgroup, makes a mount
//	             and a cgroup namespace owned by the host's user namespace
//	             and prepares the mounts there (no bpf file system, a
//	             cgroup2 mount of the container's cgroup only, /sys
//	             read-only), then starts init in a new PID namespace, goes
//	             back to the cgroup it came from and forwards signals to
//	             init; its exit status is init's.
//	init         pid 1 of that namespace, still host root: mounts a /proc
//	             for it (read-only /proc/sys, runc's masks), starts the
//	             stage in a new user namespace whose uid and gid maps it
//	             writes, goes back to exec's cgroup (the container's then
//	             holds the command's processes only), drops its own
//	             capabilities but CAP_KILL, forwards signals to the
//	             workload, reaps every process and exits with the
//	             workload's status (128+N for a death by signal N).
//	stage        init's child, root of the new user namespace: drops the
//	             capabilities of DroppedCaps from its bounding set, becomes
//	             the --user, joins a new session keyring, sets no_new_privs
//	             and a seccomp filter that refuses 32-bit system calls, and
//	             execve()s the command, which keeps its pid.
//
// The workload never holds a capability over the mount namespace, so it
// can neither undo the mounts nor mount anything there; its uids are an
// unprivileged host range of its own (HostIDs), so it owns no host file,
// may write no cgroup.procs outside its container and signals, traces or
// pidfd_opens no process outside its PID namespace.
//
// The re-executed processes are told their role the way the benchmark
// tells its workers theirs (bench/engine's MaybeWorker): an environment
// variable that the binary's main reads first thing (MaybeStage), with the
// Spec beside it.
//
// Run with HostRoot is the old model, kept as an explicit opt-out: no user
// and no PID namespace; the exec process itself becomes the command, as the
// host's root, after the same mounts, capability drop, no_new_privs and
// seccomp filter.
package confine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// Environment of the re-executed l3iso binary.
const (
	envRole = "L3ISO_CONFINE"      // roleInit or roleStage
	envSpec = "L3ISO_CONFINE_SPEC" // the Spec, as JSON
)

const (
	roleInit  = "init"
	roleStage = "stage"
)

// Exit statuses of a command that could not be started inside the
// container, as shells report them.
const (
	exitCannotRun = 126
	exitNotFound  = 127
)

// Container says where a command runs.
type Container struct {
	Name   string
	ID     uint32 // 1..MaxContainerID: chooses the container's host id range
	Cgroup string // its cgroup v2 directory
	Netns  int    // an open descriptor of its network namespace, or -1 (shared mode)
}

// Options are `l3iso exec`'s flags.
type Options struct {
	User     string   // --user NAME|UID[:GROUP|GID]; "" is root
	Env      []string // --env K=V or K (the caller's value), in order
	EnvFiles []string // --env-file FILE, read before Env
	Workdir  string   // --workdir; "" is the caller's working directory, or / if the user cannot enter it
	HostRoot bool     // --host-root: the opt-out
}

// Spec is what the re-executed init and stage are told.
type Spec struct {
	Container string   `json:"container"` // name, for messages
	Argv      []string `json:"argv"`
	Env       []string `json:"env"`
	Dir       string   `json:"dir"`
	DirSet    bool     `json:"dir_set"` // --workdir: failing to enter Dir is an error
	User      User     `json:"user"`
	HostBase  uint32   `json:"host_base"` // the container's first host uid and gid
	HostRoot  bool     `json:"host_root"`
}

// HostRootWarning is printed on stderr when Run runs a command with
// HostRoot.
const HostRootWarning = "l3iso: warning: --host-root: the command runs as the host's root without user and PID namespaces; it can signal and trace host processes, write host files and move itself out of its cgroup (its network rules, read-only /proc/sys and /sys, missing bpffs, dropped capabilities and the 32-bit system call filter still hold)"

// Run runs argv inside container c and returns the command's exit status
// (128+N for a death by signal N). Errors that come before the command runs
// are returned (and nothing was started); a command that cannot be started
// inside the container (not found, not executable, file capabilities)
// is reported on stderr and gives status 126 or 127.
//
// With o.HostRoot, Run replaces the calling process with the command and
// returns only on error. Either way the calling goroutine stays locked to
// its OS thread, which has entered the container's namespaces: the caller
// must exit when Run returns.
func Run(c Container, o Options, argv []string) (int, error) {
	spec, err := newSpec(c, o, argv)
	if err != nil {
		return 0, err
	}
	if !o.HostRoot {
		if err := checkHostIDs(c, spec.HostBase); err != nil {
			return 0, err
		}
		// The stage is this binary, run as container root.
		if st, err := os.Stat("/proc/self/exe"); err != nil || st.Mode()&0o001 == 0 {
			exe, _ := os.Executable()
			return 0, fmt.Errorf("exec in container %q: the l3iso binary %s must be executable by every user (chmod 755 it): it starts the command as container root, an unprivileged host uid", c.Name, exe)
		}
	}
	// The exec process and init join the container's cgroup only to be
	// born into it and to make its cgroup namespace; they go back here
	// once the command runs, so that the container's processes are the
	// command's (those that `container del` counts and stops).
	home := -1
	if !o.HostRoot {
		cur, err := cgroup.Current()
		if err == nil {
			home, err = unix.Open(cur, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return 0, fmt.Errorf("exec in container %q: open own cgroup: %w", c.Name, err)
		}
	}
	// Namespaces belong to the thread that makes them, and init is
	// cloned from it; this thread never runs anything else again.
	runtime.LockOSThread()
	if c.Netns >= 0 {
		// Its network namespace first, while this thread may still
		// (CAP_SYS_ADMIN); everything started from here inherits it.
		err := unix.Setns(c.Netns, unix.CLONE_NEWNET)
		unix.Close(c.Netns)
		if err != nil {
			return 0, fmt.Errorf("exec in container %q: enter its network namespace: %w", c.Name, err)
		}
	}
	if err := cgroup.Enter(c.Cgroup); err != nil {
		return 0, err
	}
	if err := unix.Unshare(unix.CLONE_NEWCGROUP | unix.CLONE_NEWNS); err != nil {
		return 0, fmt.Errorf("exec in container %q: new cgroup and mount namespaces: %w", c.Name, err)
	}
	if err := isolateMounts(); err != nil {
		return 0, fmt.Errorf("exec in container %q: %w", c.Name, err)
	}
	if o.HostRoot {
		fmt.Fprintln(os.Stderr, HostRootWarning)
		if err := maskProc(); err != nil {
			return 0, fmt.Errorf("exec in container %q: %w", c.Name, err)
		}
		return exitCannotRun, finish(spec)
	}
	return startInit(spec, home)
}

// forwarded are the signals `l3iso exec` passes on to init and init to the
// workload. Job-control stops (SIGTSTP, SIGTTIN, SIGTTOU) are not: they
// stop the process the terminal sent them to.
var forwarded = []os.Signal{
	unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2,
	unix.SIGWINCH, unix.SIGALRM, unix.SIGCONT, unix.SIGPWR,
}

// homeFD is the descriptor by which init has the cgroup `l3iso exec` came
// from (home), to go back to once the stage runs.
const homeFD = 3

// startInit starts init in a new PID namespace from the calling (locked)
// thread, moves this process back to cgroup home, forwards signals to init
// and returns its exit status.
func startInit(spec *Spec, home int) (int, error) {
	cmd, err := reexec(roleInit, spec)
	if err != nil {
		return 0, err
	}
	cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(home), "cgroup")} // homeFD
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID,
		// A session of its own, without the caller's terminal as
		// controlling terminal: nothing inside can TIOCSTI into it, and
		// the terminal's ^C reaches the workload once, through us.
		Setsid:    true,
		Pdeathsig: unix.SIGKILL,
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("exec in container %q: start its init in a new PID namespace: %w", spec.Container, err)
	}
	if err := cgroup.EnterFD(home); err != nil {
		fmt.Fprintf(os.Stderr, "l3iso: warning: exec in container %q: %v: `container del` will count this process as the container's\n", spec.Container, err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return 0, fmt.Errorf("exec in container %q: wait for its init: %w", spec.Container, err)
	}
	return exitStatus(cmd.ProcessState.Sys().(syscall.WaitStatus)), nil
}

// exitStatus is a wait status as a shell reports it.
func exitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// reexec prepares the l3iso binary (/proc/self/exe, which needs no
// search permission on its directory) to run as role with spec.
func reexec(role string, spec *Spec) (*exec.Cmd, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("exec in container %q: %w", spec.Container, err)
	}
	cmd := &exec.Cmd{
		Path:   "/proc/self/exe",
		Args:   []string{"l3iso-" + role, spec.Container},
		Env:    []string{envRole + "=" + role, envSpec + "=" + string(b)},
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
	}
	return cmd, nil
}

// MaybeStage runs init or the stage and exits if the environment says this
// process was started as one; otherwise it returns at once. The binary
// that calls Run must call MaybeStage first thing in main.
func MaybeStage() {
	role := os.Getenv(envRole)
	if role == "" {
		return
	}
	var spec Spec
	if err := json.Unmarshal([]byte(os.Getenv(envSpec)), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "l3iso: exec: $%s: %v\n", envSpec, err)
		os.Exit(exitCannotRun)
	}
	switch role {
	case roleInit:
		os.Exit(initMain(&spec))
	case roleStage:
		runtime.LockOSThread()
		err := finish(&spec)
		fmt.Fprintln(os.Stderr, "l3iso:", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, unix.ENOENT) {
			os.Exit(exitNotFound)
		}
		os.Exit(exitCannotRun)
	}
	fmt.Fprintf(os.Stderr, "l3iso: exec: $%s=%q: unknown role\n", envRole, role)
	os.Exit(exitCannotRun)
}
