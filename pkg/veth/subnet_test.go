package veth

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// subnetRoute returns how the container routes prefix p: "gateway", "onlink"
// or "" (no route), from `ip route` in its namespace.
func subnetRoute(t *testing.T, container string, p netip.Prefix) string {
	t.Helper()
	h := nsLinkHandle(t, container)
	routes, err := h.RouteList(nil, family(p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() != p.Masked().String() {
			continue
		}
		if r.Gw != nil {
			return "gateway"
		}
		return "onlink"
	}
	return ""
}

// TestSubnetRoutesAndAddrs: a container's subnets go through the gateway or
// on-link as asked, without touching its addresses; SetAddrs adds and
// removes addresses with their host routes; DeleteMany removes containers
// and waits for their veths.
func TestSubnetRoutesAndAddrs(t *testing.T) {
	requireRoot(t)
	name := uniqueName()
	sub := base + 10 // past the ranges veth_test.go hands out (R .. R+9)
	a4 := netip.PrefixFrom(v4(sub, 2), 24)
	a6 := netip.PrefixFrom(v6(sub, 2), 112)
	ep, err := Create(Spec{Container: name, Addrs: []netip.Prefix{a4, a6}, SubnetsViaGateway: true})
	if err != nil {
		t.Fatal(err)
	}
	defer DeleteMany([]string{name})
	for _, p := range []netip.Prefix{a4, a6} {
		if got := subnetRoute(t, name, p); got != "gateway" {
			t.Errorf("Create with SubnetsViaGateway: %v routed %q, want via the gateway", p.Masked(), got)
		}
	}
	if err := SetSubnetRoutes(name, false); err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{a4, a6} {
		if got := subnetRoute(t, name, p); got != "onlink" {
			t.Errorf("SetSubnetRoutes(false): %v routed %q, want on-link", p.Masked(), got)
		}
	}
	if err := SetSubnetRoutes(name, true); err != nil {
		t.Fatal(err)
	}
	if got := subnetRoute(t, name, a4); got != "gateway" {
		t.Errorf("SetSubnetRoutes(true): %v routed %q", a4.Masked(), got)
	}

	// Readdress: keep a4, drop a6, add b4.
	b4 := netip.PrefixFrom(v4(sub, 3), 24)
	if err := SetAddrs(name, []netip.Prefix{a4, b4}, true); err != nil {
		t.Fatal(err)
	}
	got, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if !sameSet(got.Addrs, []netip.Prefix{a4, b4}) {
		t.Errorf("addresses after SetAddrs: %v, want %v and %v", got.Addrs, a4, b4)
	}
	h4, _ := hostAddrs(t)
	tcp, udp := listenIn(t, name, b4.Addr())
	checkHostToContainer(t, h4, tcp, udp)
	if err := SetAddrs(name, []netip.Prefix{netip.MustParsePrefix("fe80::5/64")}, true); err == nil {
		t.Error("SetAddrs accepted a link-local address")
	}

	start := time.Now()
	if err := DeleteMany([]string{name}); err != nil {
		t.Fatal(err)
	}
	t.Logf("DeleteMany of one container: %v", time.Since(start))
	if left := leftovers(name); len(left) > 0 {
		t.Errorf("DeleteMany left %s", strings.Join(left, ", "))
	}
	_ = ep
}

func sameSet(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[netip.Prefix]bool{}
	for _, p := range a {
		m[p] = true
	}
	for _, p := range b {
		if !m[p] {
			return false
		}
	}
	return true
}
