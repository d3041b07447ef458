package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/events"
)

func newMonitor(g *globals) *cobra.Command {
	var (
		out     string
		o       events.Options
		backlog bool
	)
	cmd := &cobra.Command{
		Use:   "monitor [--container NAME] [--type bind|connect|sendmsg|ingress|egress|join|tc|lookup|refused|spoof|...] [-o json]",
		Short: "Print what l3iso denies and drops, as it happens",
		Long: `monitor prints one line per denial or drop, as l3iso's programs make them:
a bind, connect, sendmsg or multicast join refused, a packet dropped by a
socket backstop (ingress, egress) or a TC program, a connection or datagram
nobody listens for (lookup). Allowed verdicts are never recorded (their
counters are in ` + "`l3iso stats`" + `).

  2026-12-07T10:02:03.123Z web pid 4123 (nginx) bind 10.77.0.2:80/tcp denied: owned by container "db" (EACCES)
  2026-12-07T10:02:04.001Z api tc 10.78.0.9 -> 1.1.1.1:443/tcp dropped: source 10.78.0.9 is not its own
  2026-12-07T10:02:05.000Z web ... 1,204 events lost (rate limit or full ring buffer; 1204 in all)

Times are UTC wall time. Containers are named as they are now: a container
deleted since shows its id ("id 7"), the host "(host)". Packets have no pid.

The programs write at most 20 events a second per container and CPU (bursts
of 50): a flood of denials from one container costs the host little and
does not drown another's events. What the limit or a full ring buffer keeps
out is counted (events_lost in ` + "`l3iso stats`" + `, l3iso_events_lost_total), and
monitor says so once a second, never silently. Events written while no
monitor ran wait in the ring buffer: monitor skips them (and says how many)
unless --backlog.

--type keeps events whose type (bind, connect, sendmsg, ingress, egress,
join, tc, lookup), verdict (denied, dropped, refused), reason (a counter
name of ` + "`l3iso stats`" + `: bind_denied_port) or a word of the reason (spoof,
quota, loopback) is one of the values; repeat it or separate with commas.

One monitor at a time per installation: a BPF ring buffer has one read
position, and what one reader takes the others never see. A second monitor
fails and names the process that reads (pipe one ` + "`monitor -o json`" + ` to
several consumers instead).

-o json prints one object per line:
  {"kind":"event","time":"2026-12-07T10:02:03.123456789Z","container":"web",
   "container_id":3,"pid":4123,"comm":"nginx","type":"bind",
   "reason":"bind_denied_port","verdict":"denied","errno":13,"error":"EACCES",
   "family":4,"proto":"tcp","addr":"10.77.0.2","port":80,
   "owner":"db","owner_id":5}
  {"kind":"lost","time":"...","container":"web","container_id":3,"lost":1204,"total":1204}
Fields: addr/port are the requested address (bind; join: the group) or the
source; dst/dst_port the destination (absent where none); errno is what the
application got (0: a silent drop); owner/owner_id the container that owns
an address a bind was denied; pid 0 and no comm without a task (packets).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(out); err != nil {
				return err
			}
			o.BPFFS, o.Backlog = g.bpffs, backlog
			m, err := events.Open(o)
			if err != nil {
				return err
			}
			defer m.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w := cmd.OutOrStdout()
			emit := func(v any) error {
				if out == "json" {
					return writeJSONLine(w, v)
				}
				switch v := v.(type) {
				case events.Event:
					_, err := fmt.Fprintln(w, v.Text())
					return err
				case events.Lost:
					_, err := fmt.Fprintln(w, v.Text())
					return err
				}
				return nil
			}
			note := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "l3iso monitor:", s) }
			// The ready line (on stderr: stdout is the events').
			note(fmt.Sprintf("reading the events of %s (Ctrl-C stops)", g.bpffs))
			return m.Run(ctx, emit, note)
		},
	}
	cmd.Flags().StringVar(&o.Container, "container", "", `only this container's events ("(host)": processes outside every container)`)
	cmd.Flags().StringSliceVar(&o.Match, "type", nil, "only events of this type, verdict, reason or reason word (repeatable, comma-separated)")
	cmd.Flags().BoolVar(&backlog, "backlog", false, "also print the events already in the ring buffer when monitor starts")
	outputFlag(cmd, &out)
	return cmd
}
