package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/audit"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/policy"
)

func newApply(g *globals) *cobra.Command {
	var (
		file, out string
		o         control.ApplyOptions
	)
	cmd := &cobra.Command{
		Use:   "apply -f POLICY.yaml [--dry-run] [--prune] [--allow-empty] [--force] [--grace 10s]",
		Short: "Make the containers exactly those of a policy file; prints the diff",
		Long: `apply validates the whole file first (an error names file, line and problem
and changes nothing), then switches to the new policy atomically: binds and
packets see either the old or the new policy, never a mix. Containers not in
the file are deleted — but not those the CNI plugin made for a container
runtime's namespaces ("netns (cni)" in 'container list'): apply leaves them
as they are and refuses a file that takes their names or addresses. The
file's pods: rules are only checked here: the plugin reads them when a pod
is added. --dry-run prints the diff, with the processes each
removal would stop, and changes nothing; it fails where apply would.

After the diff, apply says, per container and address, how many live
sockets still hold an address it removed (TCP listeners, TCP connections,
UDP sockets): nothing reaches them there any more; restart what holds them.
A removed container's sockets that outlived its processes are counted too.
--dry-run counts those that hold them now; -o json: "stale_sockets".

What apply refuses unless told:
  --prune        removing a container that has running processes: without
                 it the error names them; with it their processes get
                 SIGTERM, --grace to exit (10s; 0 kills at once), then
                 SIGKILL — every removed container's at once
  --allow-empty  a policy with no containers (an empty file, "containers:
                 {}", only comments), which would delete every container
  --force        an address the host uses: the gateway of a route, a
                 neighbour it knows (ARP/NDP), an address it reaches through
                 a route (8.8.8.8; private addresses only the default route
                 covers are fine, as are unused ones on an on-link subnet).
                 No flag lets a container take one of the host's own
                 addresses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			if file == "" {
				return fmt.Errorf("apply needs -f POLICY.yaml (see examples/policy.yaml)")
			}
			if err := checkGrace(o.Grace); err != nil {
				return err
			}
			tr := control.Trace("apply")
			p, err := policy.Load(file)
			if err != nil {
				return err
			}
			tr.Step("load policy")
			var log *audit.Log
			if !o.DryRun {
				if log, err = g.openAudit(); err != nil {
					return err
				}
				defer log.Close()
			}
			c, err := control.Open(g.bpffs, !o.DryRun)
			if err != nil {
				return err
			}
			defer c.Close()
			tr.Step("open")
			plan, err := c.Apply(p, o)
			if err == nil && !o.DryRun && !plan.Empty() {
				record(cmd, log, planLines(plan), true)
			}
			if errors.Is(err, control.ErrEmptyPolicy) {
				err = fmt.Errorf("%s: %w", file, err)
			}
			if err != nil && !(o.DryRun && !plan.Empty()) {
				return err
			}
			// A dry run shows the plan even when apply would refuse it.
			if out == "json" {
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), planJSON(plan, o.DryRun))
			}
			printPlan(cmd.OutOrStdout(), plan, o.DryRun)
			switch {
			case err != nil:
				fmt.Fprintf(cmd.OutOrStdout(), "dry run: %d changes, which apply would refuse (below)\n", len(plan.Changes))
				return err
			case plan.Empty():
				fmt.Fprintln(cmd.OutOrStdout(), "policy already in force: nothing to change")
			case o.DryRun:
				fmt.Fprintf(cmd.OutOrStdout(), "dry run: %d changes not applied\n", len(plan.Changes))
			default:
				total := cgroup.Stopped{Grace: o.Grace}
				for _, st := range plan.Stopped {
					total = total.Plus(st)
				}
				if total.Procs > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "applied %d changes; %s\n", len(plan.Changes), total)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "applied %d changes\n", len(plan.Changes))
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "policy file (YAML)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "print the diff, change nothing")
	cmd.Flags().BoolVar(&o.Prune, "prune", false, "remove containers that have running processes too, stopping them (see --grace)")
	cmd.Flags().BoolVar(&o.AllowEmpty, "allow-empty", false, "apply a policy with no containers (deletes every container)")
	cmd.Flags().BoolVar(&o.Force, "force", false, "let containers take addresses the host uses (a gateway, a neighbour, a routed address); never the host's own")
	graceFlag(cmd, &o.Grace)
	outputFlag(cmd, &out)
	return cmd
}

// graceFlag adds --grace: how long processes get between SIGTERM and
// SIGKILL.
func graceFlag(cmd *cobra.Command, d *time.Duration) {
	cmd.Flags().DurationVar(d, "grace", control.DefaultGrace, "how long processes get to exit after SIGTERM before SIGKILL (0: kill at once)")
}

func checkGrace(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--grace %s is negative: give a duration such as 10s, or 0 to kill at once", d)
	}
	return nil
}

// printPlan prints one line per change; a removal says what it stops (a
// plan) or stopped (an applied one).
func printPlan(w io.Writer, plan control.Plan, planned bool) {
	for _, ch := range plan.Changes {
		line := ch.String()
		if ch.Kind == policy.ChangeDel {
			switch st, done := plan.Stopped[ch.Name]; {
			case planned && plan.Running[ch.Name] > 0:
				line += " (stops " + cgroup.Plural(plan.Running[ch.Name], "process", "processes") + ")"
			case planned:
				line += " (no processes running)"
			case done:
				line += " (" + st.String() + ")"
			default:
				line += " (no processes were running)"
			}
		}
		fmt.Fprintln(w, line)
	}
	for _, st := range plan.Stale {
		fmt.Fprintln(w, st.String(planned))
	}
}

// planLines are an applied plan's changes for the audit log, a removal
// with what it stopped.
func planLines(plan control.Plan) []string {
	out := make([]string, 0, len(plan.Changes))
	for _, ch := range plan.Changes {
		line := ch.String()
		if st, ok := plan.Stopped[ch.Name]; ok && ch.Kind == policy.ChangeDel && st.Procs > 0 {
			line += " (" + st.String() + ")"
		}
		out = append(out, line)
	}
	return out
}

// planJSON is the -o json shape of apply's result: the changes, per
// removed container with processes how many run ("running", a dry run) or
// were stopped and killed ("stopped"), and the sockets that still hold an
// address the apply removes ("stale_sockets").
func planJSON(plan control.Plan, dryRun bool) map[string]any {
	changes := []string{}
	for _, ch := range plan.Changes {
		changes = append(changes, ch.String())
	}
	j := map[string]any{"dry_run": dryRun, "changes": changes, "stale_sockets": append([]control.Stale{}, plan.Stale...)}
	if dryRun {
		running := map[string]int{}
		for name, n := range plan.Running {
			running[name] = n
		}
		j["running"] = running
	} else {
		stopped := map[string]any{}
		for name, st := range plan.Stopped {
			stopped[name] = map[string]int{"processes": st.Procs, "killed": st.Killed}
		}
		j["stopped"] = stopped
	}
	return j
}
