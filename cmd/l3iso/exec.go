package main

import (
	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/control"
)

func newExec(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "exec NAME -- COMMAND [ARGS...]",
		Short: "Run a command inside a container (its exit status is the command's)",
		Long: `exec replaces itself with COMMAND running in the container's cgroup, in a new
cgroup namespace rooted there, without the capabilities that would undo the
isolation (NET_ADMIN, NET_RAW, SYS_ADMIN, BPF, PERFMON, SYS_MODULE,
SYS_PTRACE). Its exit status and signals are the command's own.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Exec(args[0], args[1:])
		},
	}
}
