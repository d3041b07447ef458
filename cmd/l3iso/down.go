package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

func newDown(g *globals) *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "down [--grace 10s]",
		Short: "Remove every container, address, cgroup, link and pin l3iso made",
		Long: `down stops the processes of every container — SIGTERM to all of them at
once, up to --grace for them to exit, then SIGKILL (cgroup.kill) for those
still running — and removes every container, address, cgroup, link and pin
l3iso made. It reports what it stopped and what it had to kill.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkGrace(grace); err != nil {
				return err
			}
			log, err := g.openAudit()
			if err != nil {
				return err
			}
			defer log.Close()
			c, err := control.OpenForDown(g.bpffs)
			if errors.Is(err, maps.ErrIncompatible) || errors.Is(err, loader.ErrRecordsLost) {
				if err := loader.ForceTeardown(g.bpffs); err != nil {
					return err
				}
				what := "an installation of another version"
				if errors.Is(err, loader.ErrRecordsLost) {
					what = "an installation whose containers' records were lost"
				}
				record(cmd, log, []string{fmt.Sprintf("removed %s (links, pins, containers' cgroups); host addresses left", what)}, false)
				fmt.Fprintf(cmd.OutOrStdout(), "l3iso is down: removed %s from %s; addresses it configured on the host were left (check `ip addr` and `ip route show table local proto 76`)\n", what, g.bpffs)
				return nil
			}
			if err != nil {
				return err
			}
			defer c.Close()
			cs, err := c.Containers()
			if err != nil {
				return err
			}
			n := len(cs)
			st, err := c.DownGrace(grace)
			if err != nil {
				if st.Procs > 0 {
					// Processes were stopped: that changed something.
					record(cmd, log, []string{fmt.Sprintf("down failed after it %s: %v", st, err)}, false)
					return fmt.Errorf("%w (%s)", err, st)
				}
				return err
			}
			lines := make([]string, 0, n+1)
			for _, k := range cs {
				lines = append(lines, policy.Change{Kind: policy.ChangeDel, Name: k.Spec.Name}.String())
			}
			lines = append(lines, fmt.Sprintf("removed %d containers (%s), every link and pin", n, st))
			record(cmd, log, lines, false)
			fmt.Fprintf(cmd.OutOrStdout(), "l3iso is down: removed %d containers (%s) and every pin in %s\n", n, st, g.bpffs)
			return nil
		},
	}
	graceFlag(cmd, &grace)
	return cmd
}
