package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Port is where a netns container meets the host: the host-side end of its
// veth pair and the MAC addresses of both ends. The TC programs (bpf/tc.c)
// deliver to it and check what leaves through it.
type Port struct {
	ID      uint32           // container id
	IfIndex int              // host-side veth, in the host network namespace
	HostMAC net.HardwareAddr // host-side veth
	PeerMAC net.HardwareAddr // eth0 inside the container
}

func (p Port) deliv() (sockL3Deliv, error) {
	v := sockL3Deliv{Ifindex: uint32(p.IfIndex), Id: p.ID}
	if len(p.HostMAC) != 6 || len(p.PeerMAC) != 6 {
		return v, fmt.Errorf("port of container %d: MAC addresses %v / %v are not Ethernet addresses", p.ID, p.HostMAC, p.PeerMAC)
	}
	copy(v.HostMac[:], p.HostMAC)
	copy(v.PeerMac[:], p.PeerMAC)
	return v, nil
}

// SetPort registers port p (veth → container) and then its container's
// addresses (address → port), so a program that finds an address also finds
// its port. Existing entries are replaced.
func (s *Set) SetPort(p Port, addrs []netip.Addr) error {
	v, err := p.deliv()
	if err != nil {
		return err
	}
	if err := s.ports.Update(uint32(p.IfIndex), sockL3Port{Id: p.ID}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update map l3_ports (ifindex %d, container %d): %w", p.IfIndex, p.ID, err)
	}
	ks := make([]sockL3Addr, 0, len(addrs))
	vs := make([]sockL3Deliv, 0, len(addrs))
	for _, a := range addrs {
		ks = append(ks, toAddr(a))
		vs = append(vs, v)
	}
	return put(s.delivs, "l3_delivs", ks, vs)
}

// DeletePort removes the addresses, then the port: the reverse of SetPort.
// Missing entries are fine.
func (s *Set) DeletePort(ifindex int, addrs []netip.Addr) error {
	ks := make([]sockL3Addr, 0, len(addrs))
	for _, a := range addrs {
		ks = append(ks, toAddr(a))
	}
	if err := del(s.delivs, "l3_delivs", ks); err != nil {
		return err
	}
	return del(s.ports, "l3_ports", []uint32{uint32(ifindex)})
}

// DeleteDeliveries removes addresses from l3_delivs (a netns container that
// loses some of its addresses keeps its port).
func (s *Set) DeleteDeliveries(addrs []netip.Addr) error {
	ks := make([]sockL3Addr, 0, len(addrs))
	for _, a := range addrs {
		ks = append(ks, toAddr(a))
	}
	return del(s.delivs, "l3_delivs", ks)
}

// Deliveries reads l3_delivs: every netns container address and its port.
func (s *Set) Deliveries() (map[netip.Addr]Port, error) {
	out := map[netip.Addr]Port{}
	var (
		k sockL3Addr
		v sockL3Deliv
	)
	it := s.delivs.Iterate()
	for it.Next(&k, &v) {
		out[fromAddr(k)] = Port{
			ID: v.Id, IfIndex: int(v.Ifindex),
			HostMAC: net.HardwareAddr(append([]byte(nil), v.HostMac[:]...)),
			PeerMAC: net.HardwareAddr(append([]byte(nil), v.PeerMac[:]...)),
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read map l3_delivs: %w", err)
	}
	return out, nil
}

// PortIDs reads l3_ports: host-side veth ifindex → container id.
func (s *Set) PortIDs() (map[int]uint32, error) {
	out := map[int]uint32{}
	var (
		k uint32
		v sockL3Port
	)
	it := s.ports.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = v.Id
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read map l3_ports: %w", err)
	}
	return out, nil
}
