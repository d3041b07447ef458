package bench

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// floor is what the kernel alone costs for the host state l3iso makes per
// shared-mode container, measured in a scratch netns and cgroup with batched
// rtnetlink (512 requests per sendmsg, as pkg/control sends them): µs per
// item, next to about 1,000 and about 10,000 of the same kind.
type floor struct {
	V6AddAt1k, V6AddAt10k float64 // RTM_NEWADDR: a /128 on lo, nodad, noprefixroute (the private IPv6 loopback)
	V6DelAt1k, V6DelAt10k float64 // RTM_DELADDR of the same
	V4AddAt1k, V4AddAt10k float64 // RTM_NEWROUTE: a local /32 in table local (an IPv4 address)
	V4DelAt10k            float64 // RTM_DELROUTE of the same
	Mkdir, Rmdir          float64 // a cgroup, 1,000 of them
}

// floorStep is how many items each timed step adds or removes.
const floorStep = 500

// measureFloor runs the kernel baseline. It leaves 10,000 addresses and
// 10,000 routes in its netns, which the world's cleanup deletes with it
// (removing them one by one would take seconds: that is the finding).
func measureFloor(tb testing.TB, w *world) floor {
	tb.Helper()
	path := w.newNetns()
	fd, err := netlinkIn(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(fd)
	nl := &nlSender{fd: fd, tb: tb}
	v6 := func(i int) netip.Addr {
		b := [16]byte{0xfd, 0x6c, 0x33, 0x69, 0x73, 0x6f}
		binary.BigEndian.PutUint32(b[12:], uint32(i))
		return netip.AddrFrom16(b)
	}
	v4 := func(i int) netip.Addr { return nthAddr(netip.MustParseAddr("10.90.0.0"), i) }
	// timed runs op for items [from, to) and returns µs per item.
	timed := func(op func(int), from, to int) float64 {
		start := time.Now()
		for i := from; i < to; i++ {
			op(i)
		}
		nl.flush(tb)
		return float64(time.Since(start).Microseconds()) / float64(to-from)
	}
	addV6 := func(i int) { nl.addr(true, v6(i)) }
	delV6 := func(i int) { nl.addr(false, v6(i)) }
	addV4 := func(i int) { nl.route(true, v4(i)) }
	delV4 := func(i int) { nl.route(false, v4(i)) }

	var f floor
	const small, big = 1000, 10_000
	timed(addV6, 1, small+1)
	timed(addV4, 1, small+1)
	f.V6AddAt1k = timed(addV6, small+1, small+1+floorStep)
	f.V4AddAt1k = timed(addV4, small+1, small+1+floorStep)
	f.V6DelAt1k = timed(delV6, small+1, small+1+floorStep)
	timed(delV4, small+1, small+1+floorStep)
	timed(addV6, small+1, big+1)
	timed(addV4, small+1, big+1)
	f.V6AddAt10k = timed(addV6, big+1, big+1+floorStep)
	f.V4AddAt10k = timed(addV4, big+1, big+1+floorStep)
	f.V6DelAt10k = timed(delV6, big+1, big+1+floorStep)
	f.V4DelAt10k = timed(delV4, big+1, big+1+floorStep)
	if nl.errs > 0 {
		tb.Fatalf("kernel baseline: %d of the netlink requests failed (first: %v)", nl.errs, nl.first)
	}

	// Cgroups: mkdir and rmdir of 1,000 below the world's subtree.
	dir := filepath.Join(w.top, "floor")
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(dir)
	const n = 1000
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprint(i)), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	f.Mkdir = float64(time.Since(start).Microseconds()) / n
	start = time.Now()
	for i := 0; i < n; i++ {
		if err := os.Remove(filepath.Join(dir, fmt.Sprint(i))); err != nil {
			tb.Fatal(err)
		}
	}
	f.Rmdir = float64(time.Since(start).Microseconds()) / n
	return f
}

// netlinkIn opens an rtnetlink socket in the netns at path (a socket stays
// in the netns it was made in).
func netlinkIn(path string) (int, error) {
	type result struct {
		fd  int
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with a foreign netns if the switch back fails
		orig, err := netns.Get()
		if err != nil {
			res <- result{-1, err}
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			res <- result{-1, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			res <- result{-1, err}
			return
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err == nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		}
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		res <- result{fd, err}
	}()
	r := <-res
	if r.err != nil {
		return -1, fmt.Errorf("rtnetlink socket in netns %s: %w", path, r.err)
	}
	return r.fd, nil
}

// nlSender batches rtnetlink requests like pkg/control's nlBatch.
type nlSender struct {
	fd    int
	seq   uint32
	buf   []byte
	n     int
	errs  int
	first error
	tb    testing.TB
}

func nlAttr(typ uint16, data []byte) []byte {
	a := make([]byte, (4+len(data)+3)&^3)
	binary.NativeEndian.PutUint16(a[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(a[2:], typ)
	copy(a[4:], data)
	return a
}

func nlU32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func (s *nlSender) add(typ, flags uint16, body []byte) {
	s.seq++
	h := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(h[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:], s.seq)
	s.buf = append(append(s.buf, h...), body...)
	if s.n++; s.n == 512 {
		s.flush(s.tb)
	}
}

func (s *nlSender) flush(tb testing.TB) {
	if s.n == 0 {
		return
	}
	if err := unix.Sendto(s.fd, s.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		tb.Fatalf("rtnetlink send: %v", err)
	}
	pending := s.n
	s.buf, s.n = s.buf[:0], 0
	rb := make([]byte, 1<<16)
	for pending > 0 {
		n, _, err := unix.Recvfrom(s.fd, rb, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			tb.Fatalf("rtnetlink receive: %v", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			tb.Fatalf("rtnetlink parse: %v", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			pending--
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				s.errs++
				if s.first == nil {
					s.first = unix.Errno(-code)
				}
			}
		}
	}
}

// addr adds or deletes ip/128 on lo (ifindex 1), as pkg/control configures
// a private IPv6 loopback.
func (s *nlSender) addr(add bool, ip netip.Addr) {
	body := make([]byte, 8)
	body[0], body[1], body[2] = unix.AF_INET6, 128, unix.IFA_F_NODAD
	binary.NativeEndian.PutUint32(body[4:], 1)
	body = append(body, nlAttr(unix.IFA_LOCAL, ip.AsSlice())...)
	body = append(body, nlAttr(unix.IFA_ADDRESS, ip.AsSlice())...)
	if add {
		body = append(body, nlAttr(unix.IFA_FLAGS, nlU32(unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE))...)
		s.add(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body)
		return
	}
	s.add(unix.RTM_DELADDR, 0, body)
}

// route adds or deletes a local route for IPv4 ip in table local, as
// pkg/control makes an IPv4 container address local.
func (s *nlSender) route(add bool, ip netip.Addr) {
	body := []byte{unix.AF_INET, 32, 0, 0, unix.RT_TABLE_LOCAL, 76, unix.RT_SCOPE_HOST, unix.RTN_LOCAL, 0, 0, 0, 0}
	body = append(body, nlAttr(unix.RTA_DST, ip.AsSlice())...)
	body = append(body, nlAttr(unix.RTA_OIF, nlU32(1))...)
	if add {
		s.add(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body)
		return
	}
	s.add(unix.RTM_DELROUTE, 0, body)
}
