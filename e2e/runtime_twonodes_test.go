package e2e

// Two nodes (issue 14): the env's host namespace (node A) and its outside
// host (node B) each run their own l3iso — own bpffs, cgroup subtree and
// uplink — on one segment (the veth pair up0 / eth0), each with a route
// to the other's pod subnet through the other's uplink address (the
// host-gw shape of a Kubernetes cluster). Pods made by the CNI plugin on
// each node reach each other both ways, IPv4 and IPv6, delivered directly
// on both ends.
//
//	node A (env netns)                               node B (outside netns)
//	pod a 10.78.0.x ─veth─ l3iso A ─ up0 ══ eth0 ─ l3iso B ─veth─ pod b 10.79.0.x
//	      fd78::x           192.0.2.1        192.0.2.2              fd79::x

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

func TestTwoNodes(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	a, b := filepath.Base(n.netns), filepath.Base(n.outside)
	// host-gw: each node routes the other's pod subnets via its uplink
	// address (the outside host's catch-all routes to 10/8 and fd00::/8
	// would make node B's own pod addresses look routed elsewhere).
	ipRun(t, [][]string{
		{"-n", b, "route", "del", "10.0.0.0/8"},
		{"-n", b, "route", "del", "fd00::/8"},
		{"-n", b, "route", "add", "10.78.0.0/24", "via", hostUp4.String()},
		{"-n", b, "route", "add", "fd78::/64", "via", hostUp6.String()},
		{"-n", a, "route", "add", "10.79.0.0/24", "via", outside4.String()},
		{"-n", a, "route", "add", "fd79::/64", "via", outside6.String()},
	}...)
	nodeB := &netEnv{env: &env{t: t, netns: n.outside, cgroot: sockprobe.NewCgroup(t, ""), bpffs: filepath.Join(sockprobe.NewBPFFS(t), "l3iso"), state: t.TempDir()}, outside: n.netns, suffix: n.suffix}
	nodeB.hostCg = filepath.Join(nodeB.cgroot, "host")
	if err := os.Mkdir(nodeB.hostCg, 0o755); err != nil {
		t.Fatal(err)
	}
	nodeB.up("--uplink", "eth0", "--delivery", "direct")
	n.installNFT()
	installNFTIn(t, n.outside)

	kit := cniKit(t)
	netA, netB := t.TempDir(), t.TempDir()
	writeJSONFile(t, filepath.Join(netA, "10-l3iso.conflist"), cniConflist("1.1.0", "l3t-a", n.env, t.TempDir(), "", "10.78.0.0/24", "fd78::/64"))
	writeJSONFile(t, filepath.Join(netB, "10-l3iso.conflist"), cniConflist("1.1.0", "l3t-b", nodeB.env, t.TempDir(), "", "10.79.0.0/24", "fd79::/64"))
	ca := &cniNet{n: n, kit: kit, confDir: netA, name: "l3t-a", sb: newSandbox(t, n.netns, kit, netA, false)}
	cb := &cniNet{n: nodeB, kit: kit, confDir: netB, name: "l3t-b", sb: newSandbox(t, n.outside, kit, netB, false)}
	podA, podB := sockprobe.NewNetns(t), sockprobe.NewNetns(t)
	addrA := parseResult(t, ca.mustCnitool("add", podA, "")).addrs()
	addrB := parseResult(t, cb.mustCnitool("add", podB, "")).addrs()
	t.Cleanup(func() {
		ca.cnitool("del", podA, "")
		cb.cnitool("del", podB, "")
	})
	inA, inB := sockprobe.Start(t, sockprobe.Options{NetnsPath: podA}), sockprobe.Start(t, sockprobe.Options{NetnsPath: podB})

	beforeA, beforeB := n.hostCounters(), nodeB.hostCounters()
	for fi, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			reach(t, unix.SOCK_STREAM, inA, inB, netip.AddrPortFrom(addrB[fi], 7800), addrA[fi])
			reach(t, unix.SOCK_STREAM, inB, inA, netip.AddrPortFrom(addrA[fi], 7801), addrB[fi])
			reach(t, unix.SOCK_DGRAM, inA, inB, netip.AddrPortFrom(addrB[fi], 7802), addrA[fi])
			reach(t, unix.SOCK_DGRAM, inB, inA, netip.AddrPortFrom(addrA[fi], 7803), addrB[fi])
		})
	}
	if after := n.hostCounters(); after != beforeA {
		t.Errorf("node A's stack saw pod traffic: counters %+v → %+v", beforeA, after)
	}
	if after := nodeB.hostCounters(); after != beforeB {
		t.Errorf("node B's stack saw pod traffic: counters %+v → %+v", beforeB, after)
	}
	for _, node := range []*netEnv{n, nodeB} {
		list := node.listJSON()
		if len(list) != 1 {
			t.Errorf("node %s lists %d containers, want its one pod: %+v", filepath.Base(node.netns), len(list), list)
		}
		for _, k := range list {
			if cnt := node.counters()[k.Name]; cnt["tc_redirected_in"] == 0 || cnt["tc_redirected_out"] == 0 {
				t.Errorf("node %s, pod %s: not delivered directly (counters %v)", filepath.Base(node.netns), k.Name, cnt)
			}
		}
	}
}

// installNFTIn puts installNFT's counting chains, for both nodes' pod
// subnets, in netns.
func installNFTIn(t *testing.T, netns string) {
	t.Helper()
	(&netEnv{env: &env{t: t, netns: netns}}).installNFT()
}
