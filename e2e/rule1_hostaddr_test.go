package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHostAddresses: `container add` and `apply` refuse an address the
// host uses — one of its own (always), a route's gateway, a neighbour it
// knows, one it reaches through a route (unless --force) — saying what the
// address is on this host, and change nothing; they accept private
// addresses only the default route covers and unused addresses on the
// uplink's subnet, which then work as IP aliases on the LAN.
func TestHostAddresses(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	// The host: uplink up0 192.0.2.1/24, 2001:db8:1::1/64, default routes
	// via the outside host (192.0.2.2, 2001:db8:1::2); and more routes
	// and neighbours, as a real host has.
	hostNS := filepath.Base(n.netns)
	for _, args := range [][]string{
		{"route", "add", "198.51.100.0/24", "via", outside4.String()},
		{"route", "add", "10.200.0.0/16", "via", outside4.String()},
		{"route", "add", "10.201.0.0/24", "via", "192.0.2.3"}, // a gateway nobody used yet: no neighbour entry
		{"route", "add", "203.0.113.0/24", "nexthop", "via", outside4.String(), "nexthop", "via", "192.0.2.4"},
		{"-6", "route", "add", "2001:db8:99::/48", "via", outside6.String()},
		{"-6", "route", "add", "fd99::/16", "via", outside6.String()},
		{"-6", "route", "add", "fd98::/16", "via", "2001:db8:1::3"},
		{"neigh", "add", "192.0.2.7", "lladdr", "02:00:00:00:00:07", "dev", "up0", "nud", "reachable"},
		{"neigh", "add", "192.0.2.8", "lladdr", "02:00:00:00:00:08", "dev", "up0", "nud", "permanent"},
		{"neigh", "add", "192.0.2.9", "dev", "up0", "nud", "failed"},
		{"neigh", "add", "192.0.2.10", "dev", "up0", "nud", "incomplete"},
		{"-6", "neigh", "add", "2001:db8:1::7", "lladdr", "02:00:00:00:00:07", "dev", "up0", "nud", "stale"},
		{"-6", "neigh", "add", "2001:db8:1::9", "dev", "up0", "nud", "failed"},
		{"route", "add", "local", "10.202.0.0/24", "dev", "lo", "table", "local"},
		{"-6", "route", "add", "local", "fd97::/64", "dev", "lo", "table", "local"},
		{"tuntap", "add", "t0", "mode", "tun"},
		{"link", "set", "t0", "up"},
		{"route", "add", "10.203.0.0/24", "dev", "t0"},
		{"-6", "route", "add", "fd96::/64", "dev", "t0"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", hostNS}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}

	const force, noForce = true, false
	refused := []struct {
		addr      string
		forceable bool
		fragments []string
	}{
		// the host's own
		{"192.0.2.1", noForce, []string{"one of the host's own addresses (on up0)"}},
		{"2001:db8:1::1", noForce, []string{"one of the host's own addresses (on up0)"}},
		{"10.202.0.5", noForce, []string{"local route 10.202.0.0/24 on lo"}},
		{"fd97::5", noForce, []string{"local route fd97::/64 on lo"}},
		{"192.0.2.255", noForce, []string{"broadcast address of a subnet on up0"}},
		// a route's gateway
		{"192.0.2.2", force, []string{"the gateway of the default route via up0"}},
		{"192.0.2.3", force, []string{"the gateway of route 10.201.0.0/24 via up0"}},
		{"2001:db8:1::2", force, []string{"the gateway of the default route via up0"}},
		{"2001:db8:1::3", force, []string{"the gateway of route fd98::/16 via up0"}},
		{"192.0.2.4", force, []string{"the gateway of route 203.0.113.0/24 via up0"}}, // a multipath route's second
		// a neighbour it knows
		{"192.0.2.7", force, []string{"a neighbour this host knows on up0", "02:00:00:00:00:07"}},
		{"192.0.2.8", force, []string{"a neighbour this host knows on up0", "PERMANENT"}},
		{"2001:db8:1::7", force, []string{"a neighbour this host knows on up0", "STALE"}},
		// reached through a route
		{"8.8.8.8", force, []string{"reached through the default route via 192.0.2.2 on up0"}},
		{"2001:4860:4860::8888", force, []string{"reached through the default route via 2001:db8:1::2 on up0"}},
		{"198.51.100.5", force, []string{"reached through route 198.51.100.0/24 via 192.0.2.2 on up0"}},
		{"203.0.113.5", force, []string{"reached through route 203.0.113.0/24 via 192.0.2.2 on up0 (and 1 more next hop)"}},
		{"10.200.0.5", force, []string{"reached through route 10.200.0.0/16 via 192.0.2.2 on up0"}}, // private, but not only the default route's
		{"2001:db8:99::5", force, []string{"reached through route 2001:db8:99::/48 via 2001:db8:1::2 on up0"}},
		{"fd99::5", force, []string{"reached through route fd99::/16 via 2001:db8:1::2 on up0"}},
		{"10.203.0.5", force, []string{"point-to-point link t0"}},
		{"fd96::5", force, []string{"point-to-point link t0"}},
	}
	before := n.snapshot()
	for _, c := range refused {
		t.Run("refused/"+c.addr, func(t *testing.T) {
			for _, args := range [][]string{
				{"container", "add", "x", "--addr", c.addr},
				{"container", "add", "x", "--mode", "netns", "--addr", c.addr},
				{"apply", "-f", policyFile(t, fmt.Sprintf("containers:\n  x:\n    addresses: [%q]\n", c.addr))},
			} {
				frags := append([]string{c.addr, `"x"`}, c.fragments...)
				if c.forceable {
					frags = append(frags, "pass --force")
				} else {
					frags = append(frags, "--force cannot")
				}
				msg := n.mustFail(frags, args...)
				if strings.Contains(msg, "addr del") || strings.Contains(msg, "ip addr") {
					t.Errorf("l3iso %s: the error suggests removing an address from the host: %q", strings.Join(args, " "), msg)
				}
			}
			// --force takes what the host uses, never what it is.
			if !c.forceable {
				n.mustFail([]string{c.addr, "--force cannot"}, "container", "add", "x", "--addr", c.addr, "--force")
				n.mustFail([]string{c.addr, "--force cannot"}, "apply", "-f", policyFile(t, fmt.Sprintf("containers:\n  x:\n    addresses: [%q]\n", c.addr)), "--force")
			}
		})
	}
	n.unchanged(before, "refused addresses")

	// The overrides. A forced address stays the container's: an apply
	// that keeps the container as it is does not ask again.
	for _, a := range []string{"8.8.8.8", "192.0.2.7", "192.0.2.3", "2001:db8:1::7", "fd96::5"} {
		n.mustRun("container", "add", "x", "--addr", a, "--force")
		n.mustRun("container", "del", "x")
	}
	x := n.name("x")
	n.names = append(n.names, x)
	n.mustRun("container", "add", x, "--mode", "netns", "--addr", "198.51.100.5", "--force")
	n.mustRun("container", "del", x)
	forced := "containers:\n  p:\n    addresses: [8.8.8.8, \"2001:db8:99::5\"]\n"
	n.mustFail([]string{"8.8.8.8", "--force"}, "apply", "-f", policyFile(t, forced))
	n.mustRun("apply", "-f", policyFile(t, forced), "--force")
	n.mustRun("apply", "-f", policyFile(t, forced+"  q:\n    addresses: [10.77.0.9]\n"))
	n.mustRun("apply", "-f", policyFile(t, "containers: {}\n"), "--allow-empty")

	// Allowed without --force: private addresses only the default route
	// covers, and unused addresses on the uplink's subnet (neighbour
	// entries that failed do not count).
	n.mustRun("container", "add", "private", "--addr", "10.77.0.1/24", "--addr", "fd77::1", "--addr", "100.64.0.5", "--addr", "172.16.0.5", "--addr", "192.168.0.5")
	n.mustRun("container", "add", "alias", "--addr", "192.0.2.50", "--addr", "2001:db8:1::50")
	n.mustRun("container", "add", "failed", "--addr", "192.0.2.9", "--addr", "192.0.2.10", "--addr", "2001:db8:1::9")
	n.mustRun("apply", "-f", policyFile(t, "containers:\n  private:\n    addresses: [10.77.0.1/24, fd77::1, 100.64.0.5, 172.16.0.5, 192.168.0.5]\n  alias:\n    addresses: [192.0.2.50, \"2001:db8:1::50\"]\n  more:\n    addresses: [192.0.2.51, \"2001:db8:1::51\", 10.77.0.2/24]\n"))
	// IP aliases on the LAN: the outside host reaches them straight on
	// its link.
	out, in := n.out(), n.agent("alias")
	reach(t, unix.SOCK_STREAM, out, in, netip.MustParseAddrPort("192.0.2.50:8200"), outside4)
	reach(t, unix.SOCK_STREAM, out, in, netip.MustParseAddrPort("[2001:db8:1::50]:8200"), outside6)
}
