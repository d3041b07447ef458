package maps

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TC return codes (linux/pkt_cls.h).
const (
	tcOK       = 0
	tcShot     = 2
	tcRedirect = 7
	tcNext     = 0xffffffff // TCX_NEXT (-1): on to the next program
)

var (
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	peerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0} // lo's address: test runs see PACKET_HOST
	bcast   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// frame builds an Ethernet frame carrying a UDP datagram from src to dst.
func frame(dstMAC net.HardwareAddr, src, dst string) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	b := append([]byte{}, dstMAC...)
	b = append(b, peerMAC...)
	udp := []byte{0x30, 0x39, 0x1f, 0x90, 0, 12, 0, 0, 'p', 'i', 'n', 'g'}
	if s.Is4() {
		b = append(b, 0x08, 0x00)
		ip := make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		copy(ip[12:], s.AsSlice())
		copy(ip[16:], d.AsSlice())
		return append(append(b, ip...), udp...)
	}
	b = append(b, 0x86, 0xdd)
	ip := make([]byte, 40)
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	copy(ip[8:], s.AsSlice())
	copy(ip[24:], d.AsSlice())
	return append(append(b, ip...), udp...)
}

// TestTCVerdicts runs the TC programs on hand-made frames (BPF_PROG_TEST_RUN,
// on lo: ifindex 1 plays the container's host-side veth) and checks the
// verdict and the counter of every path that does not need a route lookup.
func TestTCVerdicts(t *testing.T) {
	s := newTestSet(t)
	spec, err := loadTc()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: s.Replacements()})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	for id := uint32(0); id <= 2; id++ {
		if err := s.InitCounters(id); err != nil {
			t.Fatal(err)
		}
	}
	// Container 1 is behind lo (ifindex 1), container 2 behind ifindex 77.
	a := Port{ID: 1, IfIndex: 1, HostMAC: hostMAC, PeerMAC: peerMAC}
	b := Port{ID: 2, IfIndex: 77, HostMAC: hostMAC, PeerMAC: peerMAC}
	if err := s.SetPort(a, []netip.Addr{netip.MustParseAddr("10.78.0.1"), netip.MustParseAddr("fd78::1")}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPort(b, []netip.Addr{netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("fd78::2")}); err != nil {
		t.Fatal(err)
	}
	arp := append(append(append([]byte{}, bcast...), peerMAC...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)
	// (A truncated IP header cannot be tested here: BPF_PROG_TEST_RUN
	// refuses such frames before the program runs.)

	rows := []struct {
		name, prog string
		pkt        []byte
		want       uint32
		counter    string // of container 1 ("" none); "host:" prefix: of id 0
	}{
		{"veth/to-sibling-v4", "l3_tc_veth", frame(zeroMAC, "10.78.0.1", "10.78.0.2"), tcRedirect, "tc_redirected_out"},
		{"veth/to-sibling-v6", "l3_tc_veth", frame(zeroMAC, "fd78::1", "fd78::2"), tcRedirect, "tc_redirected_out"},
		{"veth/spoof-sibling", "l3_tc_veth", frame(zeroMAC, "10.78.0.2", "192.0.2.2"), tcShot, "tc_dropped_spoof"},
		{"veth/spoof-unowned-v6", "l3_tc_veth", frame(zeroMAC, "fd78::99", "2001:db8::2"), tcShot, "tc_dropped_spoof"},
		{"veth/spoof-to-sibling", "l3_tc_veth", frame(zeroMAC, "10.78.0.99", "10.78.0.2"), tcShot, "tc_dropped_spoof"},
		{"veth/arp", "l3_tc_veth", arp, tcOK, ""},
		{"veth/ndp-from-link-local", "l3_tc_veth", frame(zeroMAC, "fe80::1:2", "ff02::1:ff00:1"), tcOK, "tc_to_host"},
		{"veth/link-scope-spoof", "l3_tc_veth", frame(zeroMAC, "10.78.0.2", "224.0.0.251"), tcShot, "tc_dropped_spoof"},
		{"veth/l2-broadcast", "l3_tc_veth", frame(bcast, "10.78.0.1", "10.78.0.255"), tcOK, "tc_to_host"},
		{"guard/own", "l3_tc_guard", frame(zeroMAC, "10.78.0.1", "192.0.2.2"), tcOK, ""},
		{"guard/spoof", "l3_tc_guard", frame(zeroMAC, "10.78.0.2", "192.0.2.2"), tcShot, "tc_dropped_spoof"},
		{"guard/spoof-v6", "l3_tc_guard", frame(zeroMAC, "fd78::2", "2001:db8::2"), tcShot, "tc_dropped_spoof"},
		{"uplink/to-container", "l3_tc_uplink", frame(zeroMAC, "192.0.2.2", "10.78.0.1"), tcRedirect, "tc_redirected_in"},
		{"uplink/to-container-v6", "l3_tc_uplink", frame(zeroMAC, "2001:db8::2", "fd78::1"), tcRedirect, "tc_redirected_in"},
		{"uplink/to-host", "l3_tc_uplink", frame(zeroMAC, "192.0.2.2", "192.0.2.1"), tcNext, ""},
		{"uplink/not-for-us", "l3_tc_uplink", frame(bcast, "192.0.2.2", "10.78.0.1"), tcNext, ""},
		{"uplink/spoofed-container-source", "l3_tc_uplink", frame(zeroMAC, "10.78.0.2", "10.78.0.1"), tcShot, "host:tc_dropped_spoof"},
		{"uplink/arp", "l3_tc_uplink", arp, tcNext, ""},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			id, name := uint32(1), r.counter
			if len(name) > 5 && name[:5] == "host:" {
				id, name = 0, name[5:]
			}
			before, _ := s.ReadCounters(id)
			ret, err := coll.Programs[r.prog].Run(&ebpf.RunOptions{Data: r.pkt})
			if err != nil {
				t.Fatalf("run %s: %v", r.prog, err)
			}
			if ret != r.want {
				t.Errorf("%s: verdict %d, want %d", r.prog, ret, r.want)
			}
			if name != "" {
				after, _ := s.ReadCounters(id)
				if after[name] != before[name]+1 {
					t.Errorf("counter %s of id %d: %d → %d, want +1", name, id, before[name], after[name])
				}
			}
		})
	}

	// A veth l3iso knows no container of: everything is dropped.
	if err := s.DeletePort(1, []netip.Addr{netip.MustParseAddr("10.78.0.1"), netip.MustParseAddr("fd78::1")}); err != nil {
		t.Fatal(err)
	}
	ret, err := coll.Programs["l3_tc_veth"].Run(&ebpf.RunOptions{Data: frame(zeroMAC, "10.78.0.1", "10.78.0.2")})
	if err != nil || ret != tcShot {
		t.Errorf("unknown port: verdict %d, %v; want %d", ret, err, tcShot)
	}
	if c, _ := s.ReadCounters(0); c["tc_dropped_unknown_port"] != 1 {
		t.Errorf("tc_dropped_unknown_port = %d, want 1", c["tc_dropped_unknown_port"])
	}
	if d, err := s.Deliveries(); err != nil || len(d) != 2 {
		t.Errorf("Deliveries after deleting a's port: %v, %v; want b's two", d, err)
	}
}
