package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/policy"
)

func newApply(g *globals) *cobra.Command {
	var (
		file, out string
		dryRun    bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f POLICY.yaml [--dry-run]",
		Short: "Make the containers exactly those of a policy file; prints the diff",
		Long: `apply validates the whole file first (an error names file, line and problem
and changes nothing), then switches to the new policy atomically: binds and
packets see either the old or the new policy, never a mix. Containers not in
the file are deleted. --dry-run prints the diff and changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			if file == "" {
				return fmt.Errorf("apply needs -f POLICY.yaml (see examples/policy.yaml)")
			}
			tr := control.Trace("apply")
			p, err := policy.Load(file)
			if err != nil {
				return err
			}
			tr.Step("load policy")
			c, err := control.Open(g.bpffs, !dryRun)
			if err != nil {
				return err
			}
			defer c.Close()
			tr.Step("open")
			plan, err := c.Apply(p, dryRun)
			if err != nil {
				return err
			}
			if out == "json" {
				changes := []string{}
				for _, ch := range plan.Changes {
					changes = append(changes, ch.String())
				}
				return writeJSON(cmd.OutOrStdout(), map[string]any{"dry_run": dryRun, "changes": changes})
			}
			for _, ch := range plan.Changes {
				fmt.Fprintln(cmd.OutOrStdout(), ch.String())
			}
			switch {
			case plan.Empty():
				fmt.Fprintln(cmd.OutOrStdout(), "policy already in force: nothing to change")
			case dryRun:
				fmt.Fprintf(cmd.OutOrStdout(), "dry run: %d changes not applied\n", len(plan.Changes))
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "applied %d changes\n", len(plan.Changes))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "policy file (YAML)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the diff, change nothing")
	outputFlag(cmd, &out)
	return cmd
}
