package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The sockperf cross-check (issue 5): where sockperf is installed, each
// main configuration gets one UDP throughput run (udp_pps) and one TCP
// ping-pong run (tcp_rr_p99_us) with 64-byte messages, server and client
// in the same places and on the same CPUs as the load generator's. Its
// ports are not iperf3's (5299).
const (
	sockperfUDPPort = "5301"
	sockperfTCPPort = "5302"
	sockperfMsgSize = "64"
)

// sockperfQuick are the configurations --quick cross-checks with
// sockperf: the ones the udp_pps and p99 targets compare. A
// sockperf client sleeps 2 s before every run, so the two runs cost about
// 7 s per configuration, which would lengthen a quick run by half.
var sockperfQuick = map[string]bool{Loopback: true, Bridge: true, Direct: true}

// Tool labels of the sockperf cells: what each figure is.
const (
	// Messages the server received (its total, printed when it is
	// interrupted) over the client's sending time. sockperf tp's own
	// "Message Rate" is what the client sent.
	sockperfTPTool = "sockperf tp (received)"
	// The 99th percentile of the round trip (--full-rtt; without it
	// sockperf prints half the round trip), as tcp_rr_p99_us is.
	sockperfPPTool = "sockperf pp (p99 round trip)"
)

// sockperfCross measures udp_pps and tcp_rr_p99_us in t with sockperf.
// A failed measurement leaves its cell out and is returned as an error
// beside the other's figure.
func (b *bench) sockperfCross(ctx context.Context, bin string, t *target, secs int) ([]Cross, []error) {
	var out []Cross
	var errs []error
	srv, cli, err := sockperfRun(ctx, bin, t, sockperfUDPPort, secs, "throughput")
	if err == nil {
		var v float64
		if v, err = parseSockperfTP(srv, cli); err == nil {
			out = append(out, Cross{Config: t.config, Workload: UDPPPS, Tool: sockperfTPTool, Value: v, Unit: units[UDPPPS]})
		}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("udp throughput: %w", err))
	}
	if ctx.Err() != nil {
		return out, append(errs, ctx.Err())
	}
	_, cli, err = sockperfRun(ctx, bin, t, sockperfTCPPort, secs, "ping-pong", "--tcp", "--full-rtt")
	if err == nil {
		var v float64
		if v, err = parseSockperfPP(cli); err == nil {
			out = append(out, Cross{Config: t.config, Workload: TCPRRP99, Tool: sockperfPPTool, Value: v, Unit: units[TCPRRP99]})
		}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("tcp ping-pong: %w", err))
	}
	return out, errs
}

// sockperfRun starts `sockperf server` in t's server place, waits until it
// receives, runs `sockperf <mode>` for secs seconds in t's client place,
// then interrupts the server (it prints its total then) and returns both
// outputs. Both processes are bounded by a timeout and are killed and
// reaped before it returns, on a cancelled ctx too. args are the mode's
// extra arguments; --tcp is passed to the server as well.
func sockperfRun(ctx context.Context, bin string, t *target, port string, secs int, mode string, args ...string) (srvOut, cliOut string, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
	defer cancel()
	srvArgs := []string{"server", "-i", t.server.Addr.String(), "-p", port}
	for _, a := range args {
		if a == "--tcp" {
			srvArgs = append(srvArgs, a)
		}
	}
	srv, release, err := pinned(ctx, t.server, bin, srvArgs...)
	if err != nil {
		return "", "", err
	}
	defer release()
	var sout lockedBuffer
	srv.Stdout, srv.Stderr = &sout, &sout
	if err := startIn(t.server.Netns, srv); err != nil {
		return "", "", err
	}
	exited := make(chan struct{})
	go func() { srv.Wait(); close(exited) }()
	stopped := false
	// stop interrupts the server, and kills its process group if it has
	// not exited within 3 s (or at once when ctx is done).
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		srv.Process.Signal(os.Interrupt)
		select {
		case <-exited:
			return
		case <-time.After(3 * time.Second):
		case <-ctx.Done():
		}
		syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	defer stop()

	// The server prints "using <iomux> to block on socket(s)" when it
	// has bound (and listens, with --tcp) and waits for messages.
	ready := time.NewTimer(5 * time.Second)
	defer ready.Stop()
	for !strings.Contains(sout.String(), "to block on socket") {
		select {
		case <-exited:
			return sout.String(), "", fmt.Errorf("sockperf server exited: %s", tail(sout.String()))
		case <-ctx.Done():
			return sout.String(), "", ctx.Err()
		case <-ready.C:
			return sout.String(), "", fmt.Errorf("sockperf server not ready after 5 s: %s", tail(sout.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}

	cliArgs := append([]string{mode, "-i", t.client.Addr.String(), "-p", port, "-m", sockperfMsgSize, "-t", fmt.Sprint(secs)}, args...)
	cli, rel, err := pinned(ctx, t.client, bin, cliArgs...)
	if err != nil {
		return sout.String(), "", err
	}
	defer rel()
	var cliOutB bytes.Buffer
	cli.Stdout, cli.Stderr = &cliOutB, &cliOutB
	cerr := runIn(t.client.Netns, cli)
	cliB := cliOutB.Bytes()
	stop()
	if cerr != nil {
		if ctx.Err() != nil {
			cerr = ctx.Err()
		}
		return sout.String(), string(cliB), fmt.Errorf("sockperf %s: %v: %s", mode, cerr, tail(string(cliB)))
	}
	return sout.String(), string(cliB), nil
}

// pinned is command for sockperf in p's cgroup (start it in p's netns), pinned to p's CPU with
// taskset the way iperf3 pins itself with -A.
func pinned(ctx context.Context, p Place, bin string, args ...string) (*exec.Cmd, func(), error) {
	return command(ctx, p.Cgroup, "taskset", append([]string{"-c", fmt.Sprint(max(p.CPU, 0)), bin}, args...)...)
}

// tail is the end of a tool's output for an error message.
func tail(s string) string {
	s = strings.TrimSpace(ansi().ReplaceAllString(s, ""))
	if len(s) > 300 {
		s = "…" + s[len(s)-300:]
	}
	return strings.ReplaceAll(s, "\n", " | ")
}

// Compiled on first use: the engine is part of every l3iso process.
var (
	ansi = lazyRE(`\x1b\[[0-9;]*m`)
	// sockperf throughput, client: "Total of 62017 messages sent in
	// 1.001 sec" and "Summary: Message Rate is 61983 [msg/sec]".
	tpSent    = lazyRE(`Total of (\d+) messages sent in ([0-9.]+) sec`)
	tpSummary = lazyRE(`Summary: Message Rate is ([0-9.]+) \[msg/sec\]`)
	// sockperf server, when interrupted: "Total 41177 messages received
	// and handled".
	srvTotal = lazyRE(`Total (\d+) messages received and handled`)
	// sockperf ping-pong --full-rtt: "Summary: Round trip is 124.241
	// usec" and "---> percentile 99.000 = 1980.646".
	ppSummary = lazyRE(`Summary: Round trip is ([0-9.]+) usec`)
	ppP99     = lazyRE(`percentile 99\.000 =\s*([0-9.]+)`)
)

// lazyRE compiles expr on first use.
func lazyRE(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// parseSockperfTP returns the message rate the server received: its total
// over the client's sending time.
func parseSockperfTP(srv, cli string) (float64, error) {
	cli = ansi().ReplaceAllString(cli, "")
	if tpSummary().FindStringSubmatch(cli) == nil {
		return 0, fmt.Errorf("no \"Summary: Message Rate\" in the client's output: %s", tail(cli))
	}
	m := tpSent().FindStringSubmatch(cli)
	if m == nil {
		return 0, fmt.Errorf("no \"Total of … messages sent in … sec\" in the client's output: %s", tail(cli))
	}
	secs, err := strconv.ParseFloat(m[2], 64)
	if err != nil || secs <= 0 {
		return 0, fmt.Errorf("sending time %q", m[2])
	}
	r := srvTotal().FindStringSubmatch(ansi().ReplaceAllString(srv, ""))
	if r == nil {
		return 0, fmt.Errorf("no \"Total … messages received\" in the server's output: %s", tail(srv))
	}
	n, err := strconv.ParseFloat(r[1], 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("the server received %q messages", r[1])
	}
	return n / secs, nil
}

// parseSockperfPP returns the 99th percentile of the round trip in µs.
func parseSockperfPP(cli string) (float64, error) {
	cli = ansi().ReplaceAllString(cli, "")
	if ppSummary().FindStringSubmatch(cli) == nil {
		return 0, fmt.Errorf("no \"Summary: Round trip is\" in the client's output (was --full-rtt given?): %s", tail(cli))
	}
	m := ppP99().FindStringSubmatch(cli)
	if m == nil {
		return 0, errors.New("no \"percentile 99.000\" in the client's output")
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("p99 %q", m[1])
	}
	return v, nil
}
