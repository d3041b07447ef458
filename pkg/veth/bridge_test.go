package veth

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// useTestBridge points the bridge functions at a bridge of this test run, so
// a real l3iso-br0 on the machine is never touched.
func useTestBridge(t *testing.T) {
	t.Helper()
	bridgeName = "l3tbr" + runID
	t.Cleanup(func() {
		if err := DeleteBridge(); err != nil {
			t.Errorf("DeleteBridge: %v", err)
		}
		if _, err := netlink.LinkByName(bridgeName); err == nil {
			t.Errorf("bridge %s left behind", bridgeName)
		}
		bridgeName = BridgeName
	})
}

// checkDelivery checks where the host reaches ep's addresses (dev: the veth
// or the bridge) and what the container's gateways resolve to (gwMAC).
func checkDelivery(t *testing.T, ep *Endpoint, dev netlink.Link, gwMAC net.HardwareAddr) {
	t.Helper()
	for _, p := range ep.Addrs {
		routes, err := netlink.RouteListFiltered(family(p.Addr()), &netlink.Route{Dst: ipNet(HostPrefix(p.Addr()))}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) != 1 || routes[0].LinkIndex != dev.Attrs().Index || routes[0].Protocol != RouteProtocol {
			t.Errorf("host routes to %v = %+v, %v; want one via %s", p.Addr(), routes, err, dev.Attrs().Name)
		}
		checkNeigh(t, "host", netlink.NeighList, dev.Attrs().Index, p.Addr(), ep.PeerMAC)
	}
	ns := nsLinkHandle(t, ep.Container)
	checkNeigh(t, "container", ns.NeighList, ep.PeerIfIndex, GatewayIPv4, gwMAC)
	checkNeigh(t, "container", ns.NeighList, ep.PeerIfIndex, GatewayIPv6, gwMAC)
}

// TestBridge runs the Docker-style baseline: two containers on one subnet
// enslaved to the bridge talk to each other over L2 and to the host through
// the bridge; Release and DeleteBridge restore routed delivery.
func TestBridge(t *testing.T) {
	requireRoot(t)
	useTestBridge(t)
	h4, h6 := hostAddrs(t)
	sub := base + 1
	gw4, gw6 := netip.PrefixFrom(v4(sub, 1), 24), netip.PrefixFrom(v6(sub, 1), 112)

	a, b := uniqueName(), uniqueName()
	epA := mustCreate(t, Spec{Container: a, Addrs: []netip.Prefix{netip.PrefixFrom(v4(sub, 2), 24), netip.PrefixFrom(v6(sub, 2), 112)}})
	epB := mustCreate(t, Spec{Container: b, Addrs: []netip.Prefix{netip.PrefixFrom(v4(sub, 3), 24), netip.PrefixFrom(v6(sub, 3), 112)}})
	vethA, err := netlink.LinkByName(epA.HostIf)
	if err != nil {
		t.Fatal(err)
	}

	if err := Enslave(epA.HostIf); !errors.Is(err, ErrNotFound) {
		t.Errorf("Enslave without a bridge = %v, want ErrNotFound", err)
	}
	idx, err := EnsureBridge([]netip.Prefix{gw4}, []netip.Prefix{gw6})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := EnsureBridge([]netip.Prefix{gw4}, []netip.Prefix{gw6}); err != nil || again != idx {
		t.Fatalf("second EnsureBridge = %d, %v; want %d", again, err, idx)
	}
	br, err := netlink.LinkByName(bridgeName)
	if err != nil || br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 || br.Attrs().Index != idx {
		t.Fatalf("bridge = %+v, %v", br, err)
	}
	brMAC := br.Attrs().HardwareAddr

	for _, tc := range []struct {
		hostIf string
		want   error
	}{{"l3i-nonexistent", ErrNotFound}, {dummyName, ErrInvalid}, {bridgeName, ErrInvalid}} {
		if err := Enslave(tc.hostIf); !errors.Is(err, tc.want) {
			t.Errorf("Enslave(%s) = %v, want %v", tc.hostIf, err, tc.want)
		}
	}

	for _, ep := range []*Endpoint{epA, epB, epA} { // twice is fine
		if err := Enslave(ep.HostIf); err != nil {
			t.Fatal(err)
		}
	}
	br, _ = netlink.LinkByName(bridgeName)
	if !bytes.Equal(br.Attrs().HardwareAddr, brMAC) {
		t.Errorf("bridge MAC changed from %v to %v when ports joined", brMAC, br.Attrs().HardwareAddr)
	}
	for _, ep := range []*Endpoint{epA, epB} {
		l, _ := netlink.LinkByName(ep.HostIf)
		if l.Attrs().MasterIndex != idx {
			t.Errorf("%s master = %d, want bridge %d", ep.HostIf, l.Attrs().MasterIndex, idx)
		}
		checkDelivery(t, ep, br, brMAC)
		if lk, err := Lookup(ep.Container); err != nil || !lk.Bridged {
			t.Errorf("Lookup(%s) = %+v, %v; want Bridged", ep.Container, lk, err)
		}
	}

	traffic := func(t *testing.T, bridged bool) {
		for i, host := range []netip.Addr{h4, h6} {
			t.Run(fmt.Sprintf("ipv%d", 4+2*i), func(t *testing.T) {
				addrA, addrB := epA.Addrs[i].Addr(), epB.Addrs[i].Addr()
				tcp, udp := listenIn(t, a, addrA)
				checkHostToContainer(t, host, tcp, udp)
				tcp, udp = listenHost(t, host)
				checkFromContainer(t, a, addrA, tcp, udp)
				if bridged {
					tcp, udp = listenIn(t, b, addrB)
					checkFromContainer(t, a, addrA, tcp, udp)
					tcp, udp = listenIn(t, a, addrA)
					checkFromContainer(t, b, addrB, tcp, udp)
					// The bridge's own gateway address is on-link.
					gw := []netip.Prefix{gw4, gw6}[i].Addr()
					tcp, udp = listenHost(t, gw)
					checkFromContainer(t, b, addrB, tcp, udp)
				}
			})
		}
	}
	t.Run("bridged", func(t *testing.T) { traffic(t, true) })

	if err := Release(epA.HostIf); err != nil {
		t.Fatal(err)
	}
	if err := Release(epA.HostIf); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	vethA, _ = netlink.LinkByName(epA.HostIf)
	if vethA.Attrs().MasterIndex != 0 {
		t.Errorf("%s still has master %d", epA.HostIf, vethA.Attrs().MasterIndex)
	}
	checkDelivery(t, epA, vethA, epA.HostMAC)
	t.Run("released", func(t *testing.T) { traffic(t, false) })

	// Deleting an enslaved container removes its routes from the bridge.
	if err := Delete(b); err != nil {
		t.Fatal(err)
	}
	for _, p := range epB.Addrs {
		if routes, _ := netlink.RouteListFiltered(family(p.Addr()), &netlink.Route{Dst: ipNet(HostPrefix(p.Addr()))}, netlink.RT_FILTER_DST); len(routes) != 0 {
			t.Errorf("deleted container's route stays: %+v", routes)
		}
		if neighs, _ := netlink.NeighList(idx, family(p.Addr())); len(neighs) != 0 {
			for _, n := range neighs {
				if n.IP.Equal(p.Addr().AsSlice()) {
					t.Errorf("deleted container's neighbour entry stays on the bridge: %+v", n)
				}
			}
		}
	}

	// DeleteBridge hands enslaved containers back to routed delivery.
	if err := Enslave(epA.HostIf); err != nil {
		t.Fatal(err)
	}
	if err := DeleteBridge(); err != nil {
		t.Fatal(err)
	}
	if err := DeleteBridge(); err != nil {
		t.Fatalf("second DeleteBridge: %v", err)
	}
	if _, err := netlink.LinkByName(bridgeName); err == nil {
		t.Fatal("bridge still exists")
	}
	vethA, _ = netlink.LinkByName(epA.HostIf)
	checkDelivery(t, epA, vethA, epA.HostMAC)
	t.Run("after DeleteBridge", func(t *testing.T) { traffic(t, false) })
}
