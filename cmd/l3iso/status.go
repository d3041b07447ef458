package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
)

type statusJSON struct {
	BPFFS      string              `json:"bpffs"`
	CgroupRoot string              `json:"cgroup_root"`
	Uplink     string              `json:"uplink"`
	Delivery   string              `json:"delivery"`
	Links      []loader.LinkInfo   `json:"links"`
	Containers []containerStatJSON `json:"containers"`
	Host       maps.Counters       `json:"host_counters"`
}

type containerStatJSON struct {
	containerJSON
	Counters maps.Counters `json:"counters"`
}

func newStatus(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show programs, links, pins, containers and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			st := c.State()
			s := statusJSON{BPFFS: st.Dir, CgroupRoot: st.Config.CgroupRoot, Uplink: st.Config.Uplink, Delivery: st.Config.Delivery.String(), Containers: []containerStatJSON{}}
			if s.Links, err = st.Links(); err != nil {
				return err
			}
			if s.Host, err = c.Stats(""); err != nil {
				return err
			}
			for _, k := range c.Containers() {
				cnt, err := c.Stats(k.Spec.Name)
				if err != nil {
					return err
				}
				s.Containers = append(s.Containers, containerStatJSON{toJSON(c, k), cnt})
			}
			if out == "json" {
				return writeJSON(cmd.OutOrStdout(), s)
			}
			w := cmd.OutOrStdout()
			uplink := s.Uplink
			if uplink == "" {
				uplink = "(none: addresses on lo)"
			}
			fmt.Fprintf(w, "pinned in:    %s\ncgroup root:  %s\nuplink:       %s\ndelivery:     %s\n\n", s.BPFFS, s.CgroupRoot, uplink, s.Delivery)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LINK\tLINK ID\tPROG ID\tTAG\tATTACH\tTARGET")
			for _, l := range s.Links {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", l.Name, l.ID, l.ProgramID, l.Tag, l.Attach, l.Target)
			}
			tw.Flush()
			fmt.Fprintf(w, "\n%d containers\n", len(s.Containers))
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tMODE\tADDRESSES\tALLOWED\tDENIED\tREWRITTEN\tDROPPED")
			for _, k := range s.Containers {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%v\t%d\t%d\t%d\t%d\n", k.Name, k.ID, k.Mode, k.Addresses,
					k.Counters["bind_allowed"]+k.Counters["connect_allowed"],
					k.Counters["bind_denied_foreign"]+k.Counters["bind_denied_port"]+k.Counters["send_denied_spoof"]+k.Counters["denied_no_address"],
					k.Counters["bind_rewritten"]+k.Counters["source_rewritten"]+k.Counters["loopback_remapped"],
					k.Counters["ingress_dropped_foreign"]+k.Counters["egress_dropped_spoof"])
			}
			return tw.Flush()
		},
	}
	outputFlag(cmd, &out)
	return cmd
}
