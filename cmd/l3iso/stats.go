package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/metrics"
)

func newStats(g *globals) *cobra.Command {
	var (
		out string
		all bool
	)
	cmd := &cobra.Command{
		Use:   "stats [NAME] [--all] [-o text|json|prometheus]",
		Short: "Per-container verdict counters (all containers and the host without NAME)",
		Long: `stats prints the verdict counters of container NAME, or of every container
and of the host ("(host)": processes outside every container), grouped by
container. Text and -o prometheus leave out counters that are zero unless
--all; a container whose counters are all zero says so.

-o json is unchanged from earlier versions: one object per container (and
"(host)"), each with every counter, zero or not:
  {"(host)": {"bind_allowed": 0, ...}, "web": {"bind_allowed": 3, ...}}
-o prometheus prints l3iso_verdicts_total{container,reason} (and
l3iso_events_lost_total{container}) as ` + "`l3iso metrics`" + ` serves them.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out != "text" && out != "json" && out != "prometheus" {
				return fmt.Errorf("unknown output format %q: use -o text, -o json or -o prometheus", out)
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
			byName := map[string]maps.Counters{}
			var list []metrics.Named
			for _, n := range names {
				cnt, err := c.Stats(n)
				if err != nil {
					return err
				}
				key := n
				if n == "" {
					key = maps.HostName
				}
				byName[key] = cnt
				list = append(list, metrics.Named{Container: key, Counters: cnt})
			}
			switch out {
			case "json":
				return writeJSON(cmd.OutOrStdout(), byName)
			case "prometheus":
				return metrics.WriteCounters(cmd.OutOrStdout(), list, !all)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for i, n := range list {
				if i > 0 {
					fmt.Fprintln(tw)
				}
				fmt.Fprintln(tw, n.Container)
				shown := 0
				for _, cn := range maps.CounterNames {
					if v := n.Counters[cn]; cn != "" && (all || v > 0) {
						fmt.Fprintf(tw, "  %s\t%d\n", cn, v)
						shown++
					}
				}
				if shown == 0 {
					fmt.Fprintln(tw, "  (every counter is zero)")
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "text", "output format: text, json or prometheus")
	cmd.Flags().BoolVar(&all, "all", false, "show zero counters too (text, prometheus)")
	return cmd
}
