package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/maps"
)

func newStats(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "stats [NAME]",
		Short: "Per-container verdict counters (all containers and the host without NAME)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			names := []string{}
			if len(args) == 1 {
				if _, err := c.Find(args[0]); err != nil {
					return err
				}
				names = append(names, args[0])
			} else {
				cs, err := c.Containers()
				if err != nil {
					return err
				}
				for _, k := range cs {
					names = append(names, k.Spec.Name)
				}
				names = append(names, "")
			}
			all := map[string]maps.Counters{}
			for _, n := range names {
				cnt, err := c.Stats(n)
				if err != nil {
					return err
				}
				key := n
				if n == "" {
					key = "(host)"
				}
				all[key] = cnt
			}
			if out == "json" {
				return writeJSON(cmd.OutOrStdout(), all)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CONTAINER\tCOUNTER\tVALUE")
			for _, n := range names {
				key := n
				if n == "" {
					key = "(host)"
				}
				for _, cn := range maps.CounterNames {
					if cn != "" {
						fmt.Fprintf(tw, "%s\t%s\t%d\n", key, cn, all[key][cn])
					}
				}
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &out)
	return cmd
}
