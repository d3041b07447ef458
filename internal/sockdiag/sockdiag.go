// Package sockdiag lists the TCP and UDP sockets of a network namespace,
// IPv4 and IPv6, with NETLINK_SOCK_DIAG (what ss(8) reads): each socket's
// local and remote address, state, inode and cgroup. One dump per family
// and protocol, O(sockets), and nothing parsed from /proc text.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Socket is one socket as the kernel reports it.
type Socket struct {
	// Proto is unix.IPPROTO_TCP or unix.IPPROTO_UDP. An MPTCP socket shows
	// as its TCP subflows.
	Proto uint8
	// State is the TCP state (StateListen, StateEstablished, ...); a UDP
	// socket is StateClose unless it is connected (StateEstablished).
	State uint8
	// Local and Remote are unmapped: an IPv6 socket's IPv4-mapped address
	// is an IPv4 address here.
	Local, Remote netip.AddrPort
	// Inode is the socket's inode: 0 when no file refers to it any more
	// (TIME_WAIT, an orphan closing after its last descriptor went).
	Inode uint32
	// Cgroup is the cgroup v2 id of the process that made the socket (an
	// accepted connection: its listener's); 0 if the kernel gave none.
	Cgroup uint64
}

// TCP states (include/net/tcp_states.h) and their idiag_states bits.
const (
	StateEstablished = 1
	StateTimeWait    = 6
	StateClose       = 7
	StateListen      = 10
	StateNewSynRecv  = 12
)

// Live reports whether a process still holds s: it has a file (an inode).
// Sockets in TIME_WAIT and orphans that are only finishing their close do
// not.
func (s Socket) Live() bool { return s.Inode != 0 }

// Conn is a NETLINK_SOCK_DIAG socket; it dumps the sockets of the network
// namespace it was opened in, wherever it is used from.
type Conn struct {
	fd  int
	seq uint32
}

// Open opens a NETLINK_SOCK_DIAG socket in the calling thread's network
// namespace.
func Open() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open NETLINK_SOCK_DIAG: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind NETLINK_SOCK_DIAG: %w", err)
	}
	return &Conn{fd: fd}, nil
}

// Close closes the netlink socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// List dumps every TCP and UDP socket of c's network namespace but those
// in TIME_WAIT and SYN_RECV (request sockets), which no process holds.
func (c *Conn) List() ([]Socket, error) {
	var out []Socket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			var err error
			if out, err = c.dump(out, fam, proto); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// List dumps the sockets of the calling thread's network namespace (see
// Conn.List).
func List() ([]Socket, error) {
	c, err := Open()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.List()
}

// Sizes of struct inet_diag_req_v2, struct inet_diag_sockid and struct
// inet_diag_msg (include/uapi/linux/inet_diag.h).
const (
	sizeofReq    = 8 + sizeofSockID
	sizeofSockID = 48
	sizeofMsg    = 4 + sizeofSockID + 20
	// INET_DIAG_CGROUP_ID (Linux 5.7+): the kernel puts it in every
	// message of a full socket, unasked.
	attrCgroupID = 21
)

func (c *Conn) dump(out []Socket, fam, proto uint8) ([]Socket, error) {
	c.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+sizeofReq)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], c.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = fam, proto
	states := uint32(0xffffffff) &^ (1<<StateTimeWait | 1<<StateNewSynRecv)
	binary.NativeEndian.PutUint32(r[4:], states)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("sock_diag dump request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("sock_diag dump: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return out, fmt.Errorf("sock_diag dump: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.Data)); e < 0 {
						return out, fmt.Errorf("sock_diag dump of family %d protocol %d: %w", fam, proto, unix.Errno(-e))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if s, ok := parse(m.Data, proto); ok {
					out = append(out, s)
				}
			}
		}
	}
}

// parse decodes one struct inet_diag_msg and its attributes.
func parse(b []byte, proto uint8) (Socket, bool) {
	if len(b) < sizeofMsg {
		return Socket{}, false
	}
	s := Socket{Proto: proto, State: b[1]}
	id := b[4 : 4+sizeofSockID]
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	switch b[0] {
	case unix.AF_INET:
		src, dst = netip.AddrFrom4([4]byte(id[4:8])), netip.AddrFrom4([4]byte(id[20:24]))
	case unix.AF_INET6:
		src, dst = netip.AddrFrom16([16]byte(id[4:20])).Unmap(), netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	default:
		return Socket{}, false
	}
	s.Local, s.Remote = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	s.Inode = binary.NativeEndian.Uint32(b[4+sizeofSockID+16:])
	for a := b[sizeofMsg:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		if l < 4 || l > len(a) {
			break
		}
		if binary.NativeEndian.Uint16(a[2:])&0x3fff == attrCgroupID && l >= 12 {
			s.Cgroup = binary.NativeEndian.Uint64(a[4:])
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return s, true
}
