package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/veth"
)

// The benchmark's topology is made with netlink (vishvananda/netlink and
// netns, as pkg/veth makes the product's), never by running ip.

// inNetns runs fn on an OS thread that has entered the network namespace
// at path (veth.DoAt, the product's helper): system calls fn makes — a
// socket, a write to /proc/sys/net, a fork — happen in that namespace;
// goroutines fn starts do not.
func inNetns(path string, fn func() error) error { return veth.DoAt(path, fn) }

// netnsHandle is a netlink handle whose socket lives in the network
// namespace at path.
func netnsHandle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	return h, nil
}

// newNamedNetns creates the named network namespace (bind-mounted at
// /run/netns/NAME, as `ip netns add` does) with lo up, and returns its
// path.
func newNamedNetns(name string) (string, error) {
	path := filepath.Join(veth.NetnsDir, name)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: NewNamed moves the thread into the new namespace
		ns, err := netns.NewNamed(name)
		if err != nil {
			os.Remove(path) // NewNamed may leave the mount point file behind
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		ns.Close()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return "", err
	}
	h, err := netnsHandle(path)
	if err != nil {
		return path, err
	}
	defer h.Close()
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: 1}}); err != nil {
		return path, fmt.Errorf("bring lo up in netns %s: %w", name, err)
	}
	return path, nil
}

// deleteNamedNetns removes the namespace's bind mount; the kernel frees
// the namespace (and its interfaces) once nothing else holds it.
func deleteNamedNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// hostPrefix is a with a prefix length as a netlink address.
func nlAddr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
}

// joinUplink joins the namespaces host and outside with a veth pair,
// up0 (host) — eth0 (outside), addresses hostUp4/24 and outside4/24, both
// up; the outside host routes 10/8 via the host, the host routes
// everything else via the outside.
func joinUplink(host, outside string) error {
	h, err := netnsHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	o, err := netnsHandle(outside)
	if err != nil {
		return err
	}
	defer o.Close()
	ons, err := netns.GetFromPath(outside)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", outside, err)
	}
	defer ons.Close()
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ons)}
	if err := h.LinkAdd(up); err != nil {
		return fmt.Errorf("add veth up0 (netns %s) / eth0 (netns %s): %w", filepath.Base(host), filepath.Base(outside), err)
	}
	eth0, err := o.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0 in netns %s: %w", filepath.Base(outside), err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"address of up0", func() error { return h.AddrAdd(up, nlAddr(hostUp4, 24)) }},
		{"address of eth0", func() error { return o.AddrAdd(eth0, nlAddr(outside4, 24)) }},
		{"up0 up", func() error { return h.LinkSetUp(up) }},
		{"eth0 up", func() error { return o.LinkSetUp(eth0) }},
		{"outside route to 10/8", func() error {
			return o.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 0, 0, 0), Mask: net.CIDRMask(8, 32)}, Gw: hostUp4.AsSlice()})
		}},
		{"host default route", func() error { return h.RouteAdd(&netlink.Route{Gw: outside4.AsSlice()}) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("uplink of %s: %s: %w", filepath.Base(host), s.what, err)
		}
	}
	return nil
}

// addLoAddress adds a/32 (or /128) to lo in the namespace at path, as
// `ip addr add A dev lo` would.
func addLoAddress(path string, a netip.Addr) error {
	h, err := netnsHandle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: 1}}
	if err := h.AddrAdd(lo, nlAddr(a, a.BitLen())); err != nil {
		return fmt.Errorf("address %s on lo in netns %s: %w", a, filepath.Base(path), err)
	}
	return nil
}

// addBroadcastRoute adds, in the namespace at path, the broadcast route
// `ip route add broadcast ADDR dev DEV table local scope link` would.
func addBroadcastRoute(path string, a netip.Addr, dev string) error {
	h, err := netnsHandle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s in netns %s: %w", dev, filepath.Base(path), err)
	}
	r := &netlink.Route{Type: unix.RTN_BROADCAST, Dst: nlAddr(a, 32).IPNet, LinkIndex: l.Attrs().Index,
		Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_LINK}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("broadcast route %s dev %s in netns %s: %w", a, dev, filepath.Base(path), err)
	}
	return nil
}

// writeSysctl writes value to /proc/sys/KEY (slashes) in the namespace at
// path: net sysctls are those of the writing thread's namespace.
func writeSysctl(path, key, value string) error {
	return inNetns(path, func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in netns %s: %w", key, value, filepath.Base(path), err)
		}
		return nil
	})
}

// readNetFile reads /proc/net/NAME of the namespace at path (through
// /proc/thread-self: /proc/self/net is the main thread's namespace's).
func readNetFile(path, name string) ([]byte, error) {
	var b []byte
	err := inNetns(path, func() error {
		var err error
		b, err = os.ReadFile(filepath.Join("/proc/thread-self/net", name))
		return err
	})
	return b, err
}
