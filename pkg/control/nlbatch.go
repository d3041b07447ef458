package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes and addresses l3iso configures on the host
// ("proto 76" in `ip route` / `ip addr`), so they can be told from the
// operator's.
const RouteProtocol = 76

// nlBatch sends many rtnetlink requests with one sendmsg and collects the
// acknowledgements: 10,000 addresses cost one round trip per batch, not one
// per address.
type nlBatch struct {
	fd    int
	seq   uint32
	buf   []byte
	what  map[uint32]string // seq → description, for errors
	quiet map[uint32][]unix.Errno
	errs  []error
	count int
}

func newNLBatch() (*nlBatch, error) {
	fd, err := openRtnetlink(false)
	if err != nil {
		return nil, err
	}
	return &nlBatch{fd: fd, what: map[uint32]string{}, quiet: map[uint32][]unix.Errno{}}, nil
}

// openRtnetlink opens and binds an rtnetlink socket with a large receive
// buffer and extended acknowledgements; strict asks the kernel to check
// requests strictly, which dumps need to filter in the kernel.
func openRtnetlink(strict bool) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("open rtnetlink: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	if strict {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("rtnetlink strict checking: %w", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind rtnetlink: %w", err)
	}
	return fd, nil
}

// appendMsg appends a netlink message (header, then body) to buf.
func appendMsg(buf []byte, typ, flags uint16, seq uint32, body []byte) []byte {
	h := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(h[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	return append(append(buf, h...), body...)
}

// nlReceive reads messages from fd until f says it has all it waits for.
// A message's Data is valid only during the call of f.
func nlReceive(fd int, f func(syscall.NetlinkMessage) bool) error {
	rb := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, rb, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("rtnetlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			return fmt.Errorf("rtnetlink parse: %w", err)
		}
		done := false
		for _, m := range msgs {
			done = f(m) || done
		}
		if done {
			return nil
		}
	}
}

func (b *nlBatch) Close() { unix.Close(b.fd) }

func align4(n int) int { return (n + 3) &^ 3 }

func attr(typ uint16, data []byte) []byte {
	a := make([]byte, align4(4+len(data)))
	binary.NativeEndian.PutUint16(a[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(a[2:], typ)
	copy(a[4:], data)
	return a
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// add queues one request; errors in ignore count as success.
func (b *nlBatch) add(typ, flags uint16, body []byte, what string, ignore ...unix.Errno) error {
	b.seq++
	b.buf = appendMsg(b.buf, typ, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, b.seq, body)
	b.what[b.seq] = what
	if len(ignore) > 0 {
		b.quiet[b.seq] = ignore
	}
	b.count++
	if len(b.buf) > 128<<10 || b.count >= 512 {
		return b.flush()
	}
	return nil
}

// flush sends the queued requests and waits for every acknowledgement.
func (b *nlBatch) flush() error {
	if b.count == 0 {
		return nil
	}
	if err := unix.Sendto(b.fd, b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("rtnetlink send: %w", err)
	}
	pending := b.count
	b.buf, b.count = b.buf[:0], 0
	return nlReceive(b.fd, func(m syscall.NetlinkMessage) bool {
		if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
			return false
		}
		pending--
		code := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
		seq := m.Header.Seq
		if code != 0 {
			e := unix.Errno(code)
			ok := false
			for _, q := range b.quiet[seq] {
				ok = ok || e == q
			}
			if !ok {
				b.errs = append(b.errs, fmt.Errorf("%s: %w", b.what[seq], e))
			}
		}
		delete(b.what, seq)
		delete(b.quiet, seq)
		return pending == 0
	})
}

// done flushes and returns the first few failures.
func (b *nlBatch) done() error {
	if err := b.flush(); err != nil {
		return err
	}
	if len(b.errs) > 3 {
		return fmt.Errorf("%w (and %d more)", errors.Join(b.errs[:3]...), len(b.errs)-3)
	}
	return errors.Join(b.errs...)
}

// route queues a route in the local table: RTN_LOCAL makes an IPv4 address
// local (bindable, answered) without putting it on an interface — the
// host never picks it as a source; RTN_BROADCAST makes a subnet's
// broadcast address deliver to sockets.
func (b *nlBatch) route(add bool, ip netip.Addr, typ uint8, ifindex int) error {
	fam, scope := uint8(unix.AF_INET), uint8(unix.RT_SCOPE_HOST)
	if ip.Is6() {
		fam = unix.AF_INET6
	}
	if typ == unix.RTN_BROADCAST {
		scope = unix.RT_SCOPE_LINK
	}
	body := []byte{fam, uint8(ip.BitLen()), 0, 0, unix.RT_TABLE_LOCAL, RouteProtocol, scope, typ, 0, 0, 0, 0}
	body = append(body, attr(unix.RTA_DST, ip.AsSlice())...)
	body = append(body, attr(unix.RTA_OIF, u32(uint32(ifindex)))...)
	body = append(body, attr(unix.RTA_TABLE, u32(unix.RT_TABLE_LOCAL))...)
	kind := "local"
	if typ == unix.RTN_BROADCAST {
		kind = "broadcast"
	}
	if add {
		return b.add(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body, "add route "+kind+" "+ip.String())
	}
	return b.add(unix.RTM_DELROUTE, 0, body, "delete route "+kind+" "+ip.String(), unix.ESRCH, unix.ENOENT)
}

// address queues an IPv6 address on ifindex (IPv6 binds need a configured
// address): no duplicate address detection, tagged with RouteProtocol, and
// no prefix route (the address's own route in table local is all that
// delivery needs; for a /128 the prefix route in table main only doubles
// it, and removing it on delete costs the kernel another walk of its
// routes: 10,000 deletions took 5 s instead of 11 s here).
func (b *nlBatch) address(add bool, p netip.Prefix, ifindex int) error {
	ip := p.Addr()
	body := make([]byte, 8)
	body[0] = unix.AF_INET6
	body[1] = uint8(p.Bits())
	body[2] = unix.IFA_F_NODAD
	body[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(body[4:], uint32(ifindex))
	body = append(body, attr(unix.IFA_LOCAL, ip.AsSlice())...)
	body = append(body, attr(unix.IFA_ADDRESS, ip.AsSlice())...)
	if add {
		body = append(body, attr(unix.IFA_FLAGS, u32(unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE))...)
		body = append(body, attr(ifaProto, []byte{RouteProtocol})...)
		// Deprecated (preferred lifetime 0, valid forever): bindable, and
		// usable as an explicit source, but never the kernel's choice of
		// source for a host socket (RFC 6724 rule 3), which would
		// otherwise take a container's address, or the host's address
		// toward containers, for a destination whose prefix it shares.
		cache := make([]byte, 16)
		binary.NativeEndian.PutUint32(cache[4:], ^uint32(0))
		body = append(body, attr(unix.IFA_CACHEINFO, cache)...)
		return b.add(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body, "add address "+p.String())
	}
	return b.add(unix.RTM_DELADDR, 0, body, "delete address "+p.String(), unix.EADDRNOTAVAIL, unix.ENOENT, unix.ENODEV)
}

// ifaProto is IFA_PROTO (linux/if_addr.h, Linux 6.1+), not in x/sys yet.
const ifaProto = 11
