// Command l3iso-bench measures the l3iso binary beside it (or --l3iso
// PATH): loopback, shared-mode containers, a host process under l3iso's
// root, netns containers behind l3iso's bridge (with and without
// conntrack), routed and direct delivery, side by side, with medians,
// per-round paired ratios and their bootstrap confidence intervals. It
// needs root. The engine is package bench/engine; bench/README.md says
// what is measured and how to read it.
//
// The l3iso binary is measured as an operator runs it: every installation
// is set up by running it. l3iso-bench is also its own load generator:
// started again as a worker ($L3ISO_BENCH_WORKER), it runs the workloads
// inside the configurations under test.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/bench/engine"
)

func main() {
	// Started as a load generator: run the worker and exit.
	engine.MaybeWorker(nil)
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "l3iso-bench:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var (
		o      engine.Options
		out    string
		dir    string
		svg    string
		l3iso  string
		rounds int
		runFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "l3iso-bench",
		Short: "Measure loopback, shared, host, bridge, bridge_ct, routed and direct delivery side by side (needs root)",
		Long: `l3iso-bench builds every topology in private network namespaces, a private
cgroup subtree and a private bpffs mount — loopback (no l3iso), shared-mode
containers, a host process under l3iso's root in no container, and netns
containers behind l3iso's bridge (with and without conntrack), routed and
direct delivery, and direct's bare redirect_peer prototype in place of
l3iso's TC programs (the receiver under l3iso's socket programs, as in
direct), and loopback with do-nothing programs at l3iso's
socket hooks (hook_floor: the hooks' own price) — runs its own load
generator through each (udp_pps, tcp_rr with p50/p99/p99.9, tcp_crr,
tcp_gbps, sendto_ns; bcast_fanout: a broadcast from outside to 100
containers of which two listen, in bridge, shared and direct),
configurations interleaved round by round, then with 100 and 1,000
containers registered; reads each BPF program's cost per run
(bpf_stats), then times the control plane. Ratios are medians of
per-round paired ratios with 95 % bootstrap confidence intervals. It
removes everything it made when it ends, fails or is interrupted
(Ctrl-C). It never attaches at the machine's cgroup root and sends
traffic only inside its own namespaces.

It measures the l3iso binary next to its own executable (bin/l3iso beside
bin/l3iso-bench), or the one --l3iso names, by running it as an operator
does.

Prints a Markdown report (or the stable JSON with -o json); writes
report.md, results.json, details.json and chart.svg into --dir.
--quick (make bench-quick) takes under 3 minutes on a 2-vCPU machine,
the full run (make bench) about 21.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "text" && out != "json" {
				return fmt.Errorf("unknown output format %q: use -o text or -o json", out)
			}
			if o.Fanout < 3 || o.Fanout > 253 {
				return fmt.Errorf("--bcast-containers %d: want 3 to 253 (two listen, at least one must not, and all share one /24)", o.Fanout)
			}
			if rounds < 0 || (rounds > 0 && rounds < 3) {
				return fmt.Errorf("--rounds %d: want at least 3 (a confidence interval needs them)", rounds)
			}
			if o.TargetRounds < 0 {
				return fmt.Errorf("--target-rounds %d: want 1 or more (--no-target-rounds for none)", o.TargetRounds)
			}
			if runFor < 0 || (runFor > 0 && runFor < 50*time.Millisecond) {
				return fmt.Errorf("--run %v: want at least 50ms", runFor)
			}
			if o.Nice < -20 || o.Nice > 19 {
				return fmt.Errorf("--nice %d: want -20 to 19", o.Nice)
			}
			bin, err := findL3iso(l3iso)
			if err != nil {
				return err
			}
			o.Binary, o.Rounds, o.RunTime, o.Progress = bin, rounds, runFor, os.Stderr
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			sig := make(chan os.Signal, 2)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sig)
			go func() {
				for s := range sig {
					fmt.Fprintf(os.Stderr, "\nl3iso-bench: %v: stopping and removing everything it made (please wait)\n", s)
					cancel()
				}
			}()
			rep, err := engine.Run(ctx, o)
			if err != nil {
				return err
			}
			if dir != "" {
				if err := rep.WriteFiles(dir); err != nil {
					return err
				}
			}
			if svg != "" {
				if err := writeSVG(rep, svg); err != nil {
					return err
				}
			}
			if out == "json" {
				return rep.WriteJSON(cmd.OutOrStdout())
			}
			return rep.WriteMarkdown(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&l3iso, "l3iso", "", "the l3iso binary to measure (default: l3iso in the directory of l3iso-bench)")
	f.BoolVar(&o.Quick, "quick", false, "the short run: fewer, shorter rounds (under 3 minutes)")
	f.IntVar(&rounds, "rounds", 0, fmt.Sprintf("rounds (default %d, with --quick %d)", engine.DefaultRounds, engine.QuickRounds))
	f.IntVar(&o.TargetRounds, "target-rounds", 0, fmt.Sprintf("rounds of the target ratios' two sides only, spread among the full rounds (default %d %% of --rounds, none with --quick)", engine.TargetShare))
	f.BoolVar(&o.NoTargetRounds, "no-target-rounds", false, "leave out the target rounds")
	f.DurationVar(&runFor, "run", 0, fmt.Sprintf("duration of one run of one workload in one configuration (default %v, with --quick %v)", engine.DefaultRunTime, engine.QuickRunTime))
	f.StringSliceVar(&o.Workloads, "workloads", nil, "measure only these workloads (udp_pps, tcp_rr, tcp_crr, tcp_gbps, sendto_ns, bcast_fanout)")
	f.BoolVar(&o.NoScale, "no-scale", false, "leave out the runs with 100 and 1,000 containers")
	f.BoolVar(&o.NoFanout, "no-bcast", false, "leave out bcast_fanout (its three installations of 100 containers)")
	f.IntVar(&o.Fanout, "bcast-containers", engine.FanoutContainers, "containers in each bcast_fanout installation, of which two listen (3-253): run it twice to see the cost grow with containers or not")
	f.BoolVar(&o.SkipControlPlane, "no-control-plane", false, "leave out the control-plane timings")
	f.BoolVar(&o.SkipCrossCheck, "no-crosscheck", false, "leave out the iperf3 and sockperf cross-checks")
	f.BoolVar(&o.SkipBPFStats, "no-bpf-stats", false, "leave out the per-program figures from the kernel's BPF run-time statistics")
	f.IntVar(&o.Nice, "nice", 0, "nice value of the load generator's working threads (-20 to 19; 0: the benchmark's own)")
	f.StringVar(&dir, "dir", "", "also write report.md, results.json, details.json and chart.svg into this directory")
	f.StringVar(&svg, "svg", "", "also write the chart (bars: median per-round ratio to loopback, whiskers: its 95 % interval) to this file")
	f.StringVarP(&out, "output", "o", "text", "output format: text or json")
	return cmd
}

// findL3iso returns the l3iso binary to measure: path, or l3iso beside
// this executable.
func findL3iso(path string) (string, error) {
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("find l3iso beside l3iso-bench: %w; name it with --l3iso PATH", err)
		}
		path = filepath.Join(filepath.Dir(exe), "l3iso")
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("no l3iso binary at %s: build it (make build) or name it with --l3iso PATH", path)
	case err != nil:
		return "", fmt.Errorf("l3iso binary %s: %w", path, err)
	case st.IsDir() || st.Mode()&0o111 == 0:
		return "", fmt.Errorf("l3iso binary %s: not an executable file; name the l3iso binary with --l3iso PATH", path)
	}
	return filepath.Abs(path)
}

func writeSVG(rep *engine.Report, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
