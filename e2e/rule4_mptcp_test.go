package e2e

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMPTCPSubflows checks rule 4 for the subflows the kernel's MPTCP path
// manager opens by itself. With an endpoint of the host marked "subflow"
// (`ip mptcp endpoint add ADDR subflow`), every MPTCP connection gets a
// second subflow from ADDR once it is established — created by a kernel
// worker, bound and connected without any socket hook of the container's,
// but charged to the container's cgroup. A container's connection must
// not carry the host's address: the egress backstop drops the join
// (egress_dropped_spoof), no MP_JOIN reaches the peer, and the connection
// goes on over its first subflow.
func TestMPTCPSubflows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	nsIP := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("nsenter", append([]string{"--net=" + e.netns, "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// Host addresses (owned by no container) as MPTCP subflow endpoints.
	nsIP("addr", "add", "10.99.0.1/32", "dev", "lo")
	nsIP("addr", "add", "fd99::1/128", "dev", "lo", "nodad")
	nsIP("mptcp", "limits", "set", "subflow", "2", "add_addr_accepted", "2")
	nsIP("mptcp", "endpoint", "add", "10.99.0.1", "dev", "lo", "subflow")
	nsIP("mptcp", "endpoint", "add", "fd99::1", "dev", "lo", "subflow")
	e.apply(basePolicy)
	web, db := e.agent("web"), e.agent("db")

	for _, fam := range []struct {
		name     string
		af       int
		web, dst string
	}{
		{"v4", unix.AF_INET, "10.77.0.1", "10.77.0.2:7300"},
		{"v6", unix.AF_INET6, "fd77::1", "[fd77::2]:7301"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			joinTx, joinRx := netCounter(t, e.netns, "MPTcpExt:MPJoinSynTx"), netCounter(t, e.netns, "MPTcpExt:MPJoinSynRx")
			spoof := e.counters()["web"]["egress_dropped_spoof"]

			lid := listen(t, db, proto{"mptcp", fam.af, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, false}, fam.dst)
			defer db.Close(lid)
			cid := web.Socket(fam.af, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
			defer web.Close(cid)
			if err := web.Connect(cid, ap(fam.dst)); err != nil {
				t.Fatalf("MPTCP connect to %s: %v", fam.dst, err)
			}
			if got, _ := web.SockName(cid); got.Addr() != netip.MustParseAddr(fam.web) {
				t.Fatalf("MPTCP connection's source %s, want web's %s", got.Addr(), fam.web)
			}
			aid, _, err := db.Accept(lid, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close(aid)

			// Data makes the connection fully established; then the path
			// manager tries its subflow from the endpoint...
			if err := web.Write(cid, []byte("ping")); err != nil {
				t.Fatal(err)
			}
			if b, err := db.Read(aid, 3*time.Second); err != nil || string(b) != "ping" {
				t.Fatalf("read %q, %v; want ping", b, err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for netCounter(t, e.netns, "MPTcpExt:MPJoinSynTx") == joinTx && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if netCounter(t, e.netns, "MPTcpExt:MPJoinSynTx") == joinTx {
				t.Fatal("the path manager sent no MP_JOIN from its subflow endpoint: the test proves nothing")
			}
			// ...which the backstop stops on its way out.
			for e.counters()["web"]["egress_dropped_spoof"] == spoof && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if got := e.counters()["web"]["egress_dropped_spoof"]; got == spoof {
				t.Errorf("egress_dropped_spoof did not count the join from the host's endpoint")
			}
			if got := netCounter(t, e.netns, "MPTcpExt:MPJoinSynRx"); got != joinRx {
				t.Errorf("%d MP_JOIN SYNs from the host's endpoint reached the listener", got-joinRx)
			}
			// The connection lives on over its first subflow.
			if err := web.Write(cid, []byte("pong")); err != nil {
				t.Fatal(err)
			}
			if b, err := db.Read(aid, 3*time.Second); err != nil || string(b) != "pong" {
				t.Fatalf("read %q, %v; want pong", b, err)
			}
		})
	}
}
