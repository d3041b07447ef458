package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/bench/engine"
)

func newBench() *cobra.Command {
	var (
		o      engine.Options
		out    string
		dir    string
		svg    string
		rounds int
		runFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure loopback, shared, bridge, bridge_ct, routed and direct delivery side by side (needs root)",
		Long: `bench builds every topology in private network namespaces, a private cgroup
subtree and a private bpffs mount — loopback (no l3iso), shared-mode
containers, and netns containers behind l3iso's bridge (with and without
conntrack), routed and direct delivery, and direct's bare redirect_peer
prototype with no l3iso program on its path, and loopback with do-nothing
programs at l3iso's socket hooks (hook_floor: the hooks' own price) — runs l3iso's own load generator
through each (udp_pps, tcp_rr with p50/p99/p99.9, tcp_crr, tcp_gbps;
bcast_fanout: a broadcast from outside to 100 containers of which two
listen, in bridge, shared and direct), configurations interleaved
round-robin, then with 100 and 1,000 containers registered, then times the
control plane. It removes everything it made when it ends, fails or is
interrupted (Ctrl-C). It never attaches at the machine's cgroup root and
sends traffic only inside its own namespaces.

Prints a Markdown table (or the stable JSON with -o json); writes
report.md, results.json, details.json and chart.svg into --dir.
--quick (make bench-quick) takes about 1.5–2 minutes on a 2-vCPU machine, the
full run (make bench) about 6.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			if o.Fanout < 3 || o.Fanout > 253 {
				return fmt.Errorf("--bcast-containers %d: want 3 to 253 (two listen, at least one must not, and all share one /24)", o.Fanout)
			}
			o.Rounds, o.RunTime, o.Progress = rounds, runFor, os.Stderr
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			sig := make(chan os.Signal, 2)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sig)
			go func() {
				for s := range sig {
					fmt.Fprintf(os.Stderr, "\nl3iso bench: %v: stopping and removing everything it made (please wait)\n", s)
					cancel()
				}
			}()
			rep, err := engine.Run(ctx, o)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			if dir != "" {
				if err := rep.WriteFiles(dir); err != nil {
					return err
				}
			}
			if svg != "" {
				f, err := os.Create(svg)
				if err != nil {
					return err
				}
				if err := rep.WriteSVG(f); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
			}
			if out == "json" {
				return rep.WriteJSON(cmd.OutOrStdout())
			}
			return rep.WriteMarkdown(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.Quick, "quick", false, "short runs (5 rounds of 0.25 s per configuration and workload)")
	cmd.Flags().IntVar(&rounds, "rounds", 0, "rounds (default 15, with --quick 5)")
	cmd.Flags().DurationVar(&runFor, "run", 0, "duration of one run of one workload in one configuration (default 400ms, with --quick 250ms)")
	cmd.Flags().BoolVar(&o.NoScale, "no-scale", false, "leave out the runs with 100 and 1,000 containers")
	cmd.Flags().BoolVar(&o.NoFanout, "no-bcast", false, "leave out bcast_fanout (its three installations of 100 containers)")
	cmd.Flags().IntVar(&o.Fanout, "bcast-containers", engine.FanoutContainers, "containers in each bcast_fanout installation, of which two listen (3-253): run it twice to see the cost grow with containers or not")
	cmd.Flags().BoolVar(&o.SkipControlPlane, "no-control-plane", false, "leave out the control-plane timings")
	cmd.Flags().BoolVar(&o.SkipCrossCheck, "no-crosscheck", false, "leave out the iperf3 and sockperf cross-checks")
	cmd.Flags().StringVar(&dir, "dir", "", "also write report.md, results.json, details.json and chart.svg into this directory")
	cmd.Flags().StringVar(&svg, "svg", "", "also write the chart (bars: median relative to loopback, whiskers: min–max) to this file")
	outputFlag(cmd, &out)
	return cmd
}
