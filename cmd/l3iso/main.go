// Command l3iso loads, configures and inspects the l3iso dataplane: eBPF L3
// isolation for containers that share (or skip) the host network stack.
//
// Verb commands (up, down, apply, exec, container add/del) change state;
// noun commands (status, stats, container list) only read. Errors are
// printed once, on stderr, and the exit status is non-zero.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/audit"
	"github.com/l3iso/l3iso/pkg/confine"
)

type globals struct {
	bpffs    string
	stateDir string // the audit log's directory (pkg/audit)
}

func main() {
	// `l3iso exec` runs this binary as a container's init and as the
	// stage that starts its command.
	confine.MaybeStage()
	if p := os.Getenv("L3ISO_CPUPROFILE"); p != "" { // for benchmarking l3iso itself
		stop := startProfile(p)
		defer stop()
	}
	err := newRoot().Execute()
	if err == nil {
		return
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	fmt.Fprintln(os.Stderr, "l3iso:", err)
	os.Exit(1)
}

func startProfile(path string) func() {
	f, err := os.Create(path)
	if err != nil {
		return func() {}
	}
	pprof.StartCPUProfile(f)
	return func() { pprof.StopCPUProfile(); f.Close() }
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "l3iso",
		Short: "eBPF L3 isolation for containers",
		Long: `l3iso gives lightweight containers L3 isolation: each owns IP addresses (or
port ranges of one) and may use only those; wildcard binds, unset source
addresses and loopback are confined to the container. Everything l3iso does
lives in BPF maps and links pinned under --bpffs, so the rules stay enforced
while no l3iso process runs.

Start with:  l3iso up && l3iso container add web --addr 10.77.0.1/24`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.bpffs, "bpffs", "/sys/fs/bpf/l3iso", "directory (on a bpf filesystem) where l3iso pins its maps and links")
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", audit.StateDirFromEnv(), "directory of the audit log (audit.log): every change is recorded there ($L3ISO_STATE_DIR sets the default)")
	root.AddCommand(newUp(g), newDown(g), newContainer(g), newExec(g), newApply(g), newStatus(g), newStats(g),
		newHistory(g), newMetrics(g), newMonitor(g), newOCIHook(g))
	return root
}
