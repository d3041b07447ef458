package engine

import (
	"context"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

func sockperfFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "sockperf", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The fixtures are sockperf 3.7's output on loopback (Debian 12's
// package), colour codes included.
func TestParseSockperf(t *testing.T) {
	srv, cli := sockperfFixture(t, "tp-server.txt"), sockperfFixture(t, "tp-client.txt")
	v, err := parseSockperfTP(srv, cli)
	// 41177 received over the 1.001 s the client sent (it sent 62017).
	if want := 41177 / 1.001; err != nil || math.Abs(v-want) > 0.01 {
		t.Errorf("parseSockperfTP = %v, %v; want %v", v, err, want)
	}
	if _, err := parseSockperfTP("", cli); err == nil {
		t.Error("parseSockperfTP without the server's total: no error")
	}
	if _, err := parseSockperfTP(srv, strings.Split(cli, "Summary")[0]); err == nil {
		t.Error("parseSockperfTP of a client that did not finish: no error")
	}

	v, err = parseSockperfPP(sockperfFixture(t, "pp-tcp-full-rtt-client.txt"))
	if err != nil || v != 1980.646 {
		t.Errorf("parseSockperfPP = %v, %v; want 1980.646", v, err)
	}
	// Without --full-rtt sockperf prints half the round trip: refused.
	if v, err := parseSockperfPP(sockperfFixture(t, "pp-tcp-client.txt")); err == nil {
		t.Errorf("parseSockperfPP of a one-way latency run = %v, want an error", v)
	}
	if _, err := parseSockperfPP("sockperf: ERROR: Can`t connect socket (errno=111 Connection refused)\n"); err == nil {
		t.Error("parseSockperfPP of a failed run: no error")
	}
}

// freePort returns a port that is free for UDP and TCP on 127.0.0.1 (other
// sessions may run this test on the same machine at the same time).
func freePort(t *testing.T) string {
	t.Helper()
	for i := 0; i < 20; i++ {
		u, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
		u.Close()
		if err == nil {
			l.Close()
			return strconv.Itoa(port)
		}
	}
	t.Fatal("no free port")
	return ""
}

// children lists this process's child processes named sockperf, nsenter
// or taskset, zombies included.
func children(t *testing.T) []string {
	t.Helper()
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		comm := s[strings.IndexByte(s, '(')+1 : i]
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) && (comm == "sockperf" || comm == "nsenter" || comm == "taskset") {
			out = append(out, d+" "+comm+" "+f[0])
		}
	}
	return out
}

// sockperfRun on loopback in this network namespace: both modes give a
// figure, and a cancelled run returns soon and leaves no process behind.
func TestSockperfRun(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	bin, err := exec.LookPath("sockperf")
	if err != nil {
		if sockprobe.Required() {
			t.Fatalf("sockperf is not installed (.ci/run installs it): %v", err)
		}
		t.Skip("sockperf is not installed")
	}
	lo := netip.MustParseAddr("127.0.0.1")
	tg := &target{config: Loopback, containers: 1, server: Place{Addr: lo, CPU: -1}, client: Place{Addr: lo, CPU: -1}}
	ctx := context.Background()

	srv, cli, err := sockperfRun(ctx, bin, tg, freePort(t), 1, "throughput")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := parseSockperfTP(srv, cli); err != nil || v <= 0 {
		t.Errorf("throughput: %v, %v\nserver:\n%s\nclient:\n%s", v, err, srv, cli)
	}
	_, cli, err = sockperfRun(ctx, bin, tg, freePort(t), 1, "ping-pong", "--tcp", "--full-rtt")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := parseSockperfPP(cli); err != nil || v <= 0 {
		t.Errorf("ping-pong: %v, %v\nclient:\n%s", v, err, cli)
	}
	if c := children(t); len(c) > 0 {
		t.Errorf("left behind: %v", c)
	}

	// Cancelled while the client runs (it would run 30 s).
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(700*time.Millisecond, cancel)
	start := time.Now()
	if _, _, err := sockperfRun(cctx, bin, tg, freePort(t), 30, "ping-pong", "--tcp", "--full-rtt"); err == nil {
		t.Error("cancelled run: no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled run returned after %v", d)
	}
	if c := children(t); len(c) > 0 {
		t.Errorf("left behind after cancel: %v", c)
	}
}
