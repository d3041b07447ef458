package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/audit"
)

// openAudit opens the audit log before a command changes anything: a
// command that cannot record its change makes none.
func (g *globals) openAudit() (*audit.Log, error) {
	return audit.Open(audit.Options{StateDir: g.stateDir, BPFFS: g.absBPFFS()})
}

// absBPFFS is --bpffs as an absolute path: the audit log names
// installations by it.
func (g *globals) absBPFFS() string {
	if abs, err := filepath.Abs(g.bpffs); err == nil {
		return abs
	}
	return g.bpffs
}

// record records the change a command made. The change is made whatever
// happens here, so a failure is a warning, not a failed command.
func record(cmd *cobra.Command, l *audit.Log, changes []string, apply bool) {
	name := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	if err := l.Record(audit.Entry{Command: name, Args: os.Args[1:], Changes: changes, Apply: apply}); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "l3iso: warning: the change was made, but %v\n", err)
	}
}

func newHistory(g *globals) *cobra.Command {
	var (
		out  string
		last int
	)
	cmd := &cobra.Command{
		Use:   "history [-n N] [-o json]",
		Short: "Show the audit log: every change made to this installation, oldest first",
		Long: `history prints the audit log's records of this installation (--bpffs):
every up, down, apply, container add and del (and the CNI plugin's ADD and
DEL) that changed something, with its time (UTC), the uid that ran it (and
the login uid, through sudo), its command line and what changed. A command
that failed and changed nothing is not recorded, nor is a dry run or an up
or apply that found nothing to change.

The log is ` + "`STATE_DIR/" + audit.LogName + "`" + ` (--state-dir, default $L3ISO_STATE_DIR or
` + audit.DefaultStateDir + `), one JSON object per line, shared by every installation on
the machine; each record is also sent to syslog (` + audit.DefaultSyslog + `, which journald
serves, when it exists; $L3ISO_SYSLOG names another socket, or "off").

-o json prints one record per line, as the log has them:
  {"time":"2026-12-07T10:02:03.123456Z","uid":0,"login_uid":1000,"pid":4242,
   "command":"container add","args":["container","add","web","--addr","10.77.0.1"],
   "bpffs":"/sys/fs/bpf/l3iso","change":7,
   "changes":["+ container \"web\" (shared): 10.77.0.1"]}
"change" numbers the installation's changes since up made it (0 for down,
which removes the count with the pins).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			if last < 0 {
				return fmt.Errorf("-n %d is negative: give how many of the last records to show (0: all)", last)
			}
			recs, bad, err := audit.Read(g.stateDir, g.absBPFFS())
			if err != nil {
				return err
			}
			for _, b := range bad {
				fmt.Fprintf(cmd.ErrOrStderr(), "l3iso: warning: %s:%d is no audit record (%v): skipped\n", audit.Path(g.stateDir), b.Line, b.Err)
			}
			if last > 0 && len(recs) > last {
				recs = recs[len(recs)-last:]
			}
			w := cmd.OutOrStdout()
			if out == "json" {
				for _, r := range recs {
					if err := writeJSONLine(w, r); err != nil {
						return err
					}
				}
				return nil
			}
			if len(recs) == 0 {
				fmt.Fprintf(w, "no changes recorded for %s in %s\n", g.absBPFFS(), audit.Path(g.stateDir))
				return nil
			}
			for _, r := range recs {
				who := fmt.Sprintf("uid %d", r.UID)
				if r.LoginUID != nil && int(*r.LoginUID) != r.UID {
					who += fmt.Sprintf(" (login uid %d)", *r.LoginUID)
				}
				fmt.Fprintf(w, "%s  %s  l3iso %s\n", r.Time.UTC().Format("2006-01-02T15:04:05.000Z"), who, strings.Join(r.Args, " "))
				for _, c := range r.Changes {
					fmt.Fprintf(w, "    %s\n", c)
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&last, "last", "n", 0, "show only the last N records (0: all)")
	outputFlag(cmd, &out)
	return cmd
}
