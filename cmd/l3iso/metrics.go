package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/metrics"
)

// DefaultMetricsListen is where `l3iso metrics` listens unless told.
const DefaultMetricsListen = "127.0.0.1:9377"

func newMetrics(g *globals) *cobra.Command {
	var (
		listen string
		once   bool
	)
	cmd := &cobra.Command{
		Use:   "metrics [--listen 127.0.0.1:9377] [--once]",
		Short: "Serve Prometheus metrics of the installation at /metrics",
		Long: `metrics serves the installation's metrics in the Prometheus text format at
http://LISTEN/metrics, reading the pinned maps at every scrape (it keeps no
state: restart it at will). --once prints one scrape on stdout and exits.

  l3iso_installed                      1 if an installation is pinned at --bpffs
  l3iso_isolation_intact               1 if ` + "`l3iso status`" + ` finds no problem, else 0
  l3iso_problems, l3iso_problem_info{object,problem}
  l3iso_programs_attached, l3iso_programs_expected
  l3iso_verdicts_total{container,reason}   the counters of ` + "`l3iso stats`" + `
                                       (container "(host)": processes outside
                                       every container)
  l3iso_events_lost_total{container}   denials and drops ` + "`l3iso monitor`" + ` missed
                                       (rate limit, full ring)
  l3iso_containers, l3iso_containers_max
  l3iso_map_entries{map,what}, l3iso_map_max_entries{map,what}
                                       ownership, container, listener registry
                                       and listening-socket maps
  l3iso_socket_quota_used{container}, l3iso_socket_quota_limit
  l3iso_changes_total                  changes since up (see ` + "`l3iso history`" + `)
  l3iso_apply_generation               applies that switched the policy since up
  l3iso_last_change_timestamp_seconds, l3iso_last_apply_timestamp_seconds

Every series of a container is there from its first scrape on, zero or not,
so that rate() sees its first increase: about 35 series per container.
examples/prometheus.yml is a scrape configuration, examples/l3iso-rules.yml
two alerts (isolation not intact; denials rising).

Listen on loopback (the default) unless the network may read the counters;
a scrape takes the installation's shared lock, so it waits while a changing
command runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := metrics.New(g.bpffs)
			if once {
				return c.WriteText(cmd.OutOrStdout())
			}
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(c); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("metrics: listen on %s: %w (pass --listen HOST:PORT with a free port)", listen, err)
			}
			mux := http.NewServeMux()
			errLog := log.New(cmd.ErrOrStderr(), "l3iso metrics: ", log.LstdFlags)
			mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
				ErrorLog: errLog, ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4, Timeout: 30 * time.Second,
			}))
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/" {
					http.NotFound(w, r)
					return
				}
				fmt.Fprintf(w, "l3iso metrics of %s: /metrics\n", g.bpffs)
			})
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			// The ready line: scripts and tests wait for it (with
			// --listen HOST:0 it says which port was chosen).
			fmt.Fprintf(cmd.OutOrStdout(), "serving metrics of %s at http://%s/metrics\n", g.bpffs, ln.Addr())
			select {
			case err := <-done:
				return fmt.Errorf("metrics: %w", err)
			case <-ctx.Done():
			}
			shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(shut); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("metrics: stop: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", DefaultMetricsListen, "address (HOST:PORT) to serve /metrics on")
	cmd.Flags().BoolVar(&once, "once", false, "print one scrape on stdout and exit")
	return cmd
}
