package sockprobe

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// connectTimeout bounds Connect on raw sockets.
const connectTimeout = 3 * time.Second

// sendTimeout bounds waiting for send buffer space.
const sendTimeout = 3 * time.Second

// MaybeServe turns the current process into a sockprobe agent when it was
// started by Start (environment L3ISO_SOCKPROBE=1): it serves commands on
// stdin/stdout and exits. Otherwise it returns at once. Call it first thing
// in TestMain of every package that uses Start:
//
//	func TestMain(m *testing.M) {
//		sockprobe.MaybeServe()
//		os.Exit(m.Run())
//	}
func MaybeServe() {
	if os.Getenv(envVar) != "1" {
		return
	}
	os.Exit(serve())
}

// serve runs the agent until stdin is closed.
func serve() int {
	out := os.Stdout
	// Anything else printing to stdout would corrupt the protocol.
	os.Stdout = os.Stderr

	srv := &server{socks: map[int]*sock{}, enc: json.NewEncoder(out)}
	srv.send(&reply{Seq: 0, Pid: os.Getpid()})

	in := bufio.NewReader(os.Stdin)
	dec := json.NewDecoder(in)
	for {
		req := new(request)
		if err := dec.Decode(req); err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintf(os.Stderr, "sockprobe agent: read command: %v\n", err)
			return 1
		}
		go func() { srv.send(srv.handle(req)) }()
	}
}

// sock is one socket-like object owned by the agent.
type sock struct {
	fd     int // raw socket; -1 for objects created through package net
	family int
	typ    int

	ln       net.Listener      // GoListen
	pc       *net.UDPConn      // GoListenPacket
	raw      syscall.RawConn   // fd access for ln and pc
	accepted chan acceptResult // GoListen: connections accepted in the background

	mu    sync.Mutex
	conns []net.Conn // GoListen: accepted connections kept open
}

type acceptResult struct {
	peer netip.AddrPort
	err  error
}

// server is the agent's state.
type server struct {
	mu    sync.Mutex
	next  int
	socks map[int]*sock

	outMu sync.Mutex
	enc   *json.Encoder
}

// misuseError reports a bug in the calling test rather than a socket
// result; it fails the test on the other side.
type misuseError struct{ msg string }

func (e *misuseError) Error() string { return e.msg }

func misusef(format string, args ...any) error {
	return &misuseError{msg: fmt.Sprintf(format, args...)}
}

func (srv *server) send(rep *reply) {
	srv.outMu.Lock()
	defer srv.outMu.Unlock()
	if err := srv.enc.Encode(rep); err != nil {
		fmt.Fprintf(os.Stderr, "sockprobe agent: write reply: %v\n", err)
		os.Exit(1)
	}
}

func (srv *server) add(s *sock) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.next++
	srv.socks[srv.next] = s
	return srv.next
}

func (srv *server) get(id int) (*sock, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	s, ok := srv.socks[id]
	if !ok {
		return nil, misusef("socket id %d: no such socket in the agent", id)
	}
	return s, nil
}

func (srv *server) getRaw(id int, op string) (*sock, error) {
	s, err := srv.get(id)
	if err != nil {
		return nil, err
	}
	if s.fd < 0 {
		return nil, misusef("%s on socket id %d: only for sockets made by Socket or Accept", op, id)
	}
	return s, nil
}

// withFD runs fn on the file descriptor of any kind of socket.
func (s *sock) withFD(fn func(fd int) error) error {
	if s.fd >= 0 {
		return fn(s.fd)
	}
	var opErr error
	if err := s.raw.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return err
	}
	return opErr
}

func (srv *server) handle(req *request) *reply {
	rep := &reply{Seq: req.Seq}
	err := srv.dispatch(req, rep)
	var m *misuseError
	if errors.As(err, &m) {
		rep.Fatal = m.msg
	} else {
		rep.Err = encodeErr(err)
	}
	return rep
}

func (srv *server) dispatch(req *request, rep *reply) error {
	switch req.Op {
	case opSocket:
		id, err := srv.socket(req.Family, req.Type, req.Proto)
		rep.ID = id
		return err
	case opCaps:
		var err error
		rep.CapEff, rep.CapBnd, err = readCaps()
		return err
	case opClone3Cgroup, opBPFObjGet, opWriteFile, opKill, opPtrace, opPidfdOpen:
		return containOp(req)
	case opGoListen:
		return srv.goListen(req, rep)
	case opGoListenPkt:
		return srv.goListenPacket(req, rep)
	case opGoDial:
		return goDial(req, rep)
	case opGoSendTo:
		return goSendTo(req, rep)
	}

	s, err := srv.get(req.ID)
	if err != nil {
		return err
	}
	switch req.Op {
	case opSetsockopt32:
		return s.withFD(func(fd int) error { return setsockopt32(fd, req.Level, req.Opt, req.Payload, req.Value == 1) })
	case opSetsockoptInt:
		return s.withFD(func(fd int) error { return unix.SetsockoptInt(fd, req.Level, req.Opt, req.Value) })
	case opSetsockoptRaw:
		return s.withFD(func(fd int) error { return unix.SetsockoptString(fd, req.Level, req.Opt, string(req.Payload)) })
	case opGetsockoptInt:
		return s.withFD(func(fd int) error {
			v, err := unix.GetsockoptInt(fd, req.Level, req.Opt)
			rep.Value = v
			return err
		})
	case opSockInfo:
		return s.withFD(func(fd int) error {
			for _, opt := range []int{unix.SO_DOMAIN, unix.SO_TYPE, unix.SO_PROTOCOL} {
				v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
				if err != nil {
					return err
				}
				rep.Values = append(rep.Values, v)
			}
			return nil
		})
	case opSockName:
		return s.withFD(func(fd int) error {
			sa, err := unix.Getsockname(fd)
			rep.Local = fromSockaddr(sa)
			return err
		})
	case opPeerName:
		return s.withFD(func(fd int) error {
			sa, err := unix.Getpeername(fd)
			rep.Remote = fromSockaddr(sa)
			return err
		})
	case opJoinGroup, opLeaveGroup:
		return s.withFD(func(fd int) error { return membership(fd, req.Op == opJoinGroup, req.Src, req.Ifindex) })
	case opSourceFilter:
		return s.withFD(func(fd int) error { return sourceFilter(fd, req.Opt, req.Group, req.Src, req.Ifindex) })
	case opSendTo:
		if s.pc != nil {
			return goPacketSend(s.pc, req)
		}
		if s.fd < 0 {
			return misusef("sendto on socket id %d: not a datagram socket", req.ID)
		}
		return sendTo(s.fd, req.Addr, req.Src, req.Payload)
	case opRecvFrom:
		if s.pc != nil {
			return goPacketRecv(s.pc, req.Timeout, rep)
		}
		if s.fd < 0 {
			return misusef("recvfrom on socket id %d: not a datagram socket", req.ID)
		}
		return recvFrom(s.fd, req.Timeout, rep)
	case opClose:
		return srv.close(req.ID, s)
	case opGoAccept:
		if s.accepted == nil {
			return misusef("GoAccept on socket id %d: not made by GoListen", req.ID)
		}
		return goAccept(s, req.Timeout, rep)
	}

	// The rest works on raw sockets only.
	s, err = srv.getRaw(req.ID, req.Op)
	if err != nil {
		return err
	}
	switch req.Op {
	case opBind:
		sa, err := toSockaddr(req.Addr)
		if err != nil {
			return err
		}
		return unix.Bind(s.fd, sa)
	case opListen:
		return unix.Listen(s.fd, 128)
	case opConnect:
		return connect(s.fd, req.Addr)
	case opAccept:
		return srv.accept(s, req.Timeout, rep)
	case opWrite:
		return writeAll(s.fd, req.Payload)
	case opRead:
		return read(s.fd, req.Timeout, rep)
	}
	return misusef("unknown operation %q", req.Op)
}

func (srv *server) socket(family, typ, proto int) (int, error) {
	fd, err := unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return 0, err
	}
	if typ == unix.SOCK_DGRAM {
		// Report the destination address of every datagram.
		switch family {
		case unix.AF_INET:
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		case unix.AF_INET6:
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
		if err != nil {
			unix.Close(fd)
			return 0, fmt.Errorf("enable packet info: %w", err)
		}
	}
	return srv.add(&sock{fd: fd, family: family, typ: typ}), nil
}

func (srv *server) close(id int, s *sock) error {
	srv.mu.Lock()
	delete(srv.socks, id)
	srv.mu.Unlock()
	switch {
	case s.fd >= 0:
		return unix.Close(s.fd)
	case s.ln != nil:
		err := s.ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.conns = nil
		s.mu.Unlock()
		return err
	case s.pc != nil:
		return s.pc.Close()
	}
	return nil
}

// waitFD polls fd for events until timeout; it returns ETIMEDOUT when
// nothing happened.
func waitFD(fd int, events int16, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		ms := int((left + time.Millisecond - 1) / time.Millisecond)
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return unix.ETIMEDOUT
		}
	}
}

// retry runs a non-blocking operation until it stops saying EAGAIN or the
// timeout passes.
func retry(fd int, events int16, timeout time.Duration, op func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := op()
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if err := waitFD(fd, events, time.Until(deadline)); err != nil {
			return err
		}
	}
}

func connect(fd int, ap netip.AddrPort) error {
	sa, err := toSockaddr(ap)
	if err != nil {
		return err
	}
	err = unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINPROGRESS) {
		return err
	}
	if err := waitFD(fd, unix.POLLOUT, connectTimeout); err != nil {
		return err
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}

func (srv *server) accept(s *sock, timeout time.Duration, rep *reply) error {
	var nfd int
	var sa unix.Sockaddr
	err := retry(s.fd, unix.POLLIN, timeout, func() (err error) {
		nfd, sa, err = unix.Accept4(s.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return err
	})
	if err != nil {
		return err
	}
	rep.ID = srv.add(&sock{fd: nfd, family: s.family, typ: s.typ})
	rep.Remote = fromSockaddr(sa)
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		var n int
		err := retry(fd, unix.POLLOUT, sendTimeout, func() (err error) {
			n, err = unix.SendmsgN(fd, b, nil, nil, unix.MSG_NOSIGNAL)
			return err
		})
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func read(fd int, timeout time.Duration, rep *reply) error {
	buf := make([]byte, 64<<10)
	var n int
	err := retry(fd, unix.POLLIN, timeout, func() (err error) {
		n, err = unix.Read(fd, buf)
		return err
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return io.EOF
	}
	rep.Payload = buf[:n]
	return nil
}

func sendTo(fd int, dst netip.AddrPort, src netip.Addr, payload []byte) error {
	var to unix.Sockaddr
	if dst.IsValid() {
		var err error
		if to, err = toSockaddr(dst); err != nil {
			return err
		}
	}
	var oob []byte
	switch {
	case src.Is4():
		oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
	case src.Is6():
		oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.As16()})
	}
	return retry(fd, unix.POLLOUT, sendTimeout, func() error {
		_, err := unix.SendmsgN(fd, payload, oob, to, unix.MSG_NOSIGNAL)
		return err
	})
}

func recvFrom(fd int, timeout time.Duration, rep *reply) error {
	buf := make([]byte, 64<<10)
	oob := make([]byte, 512)
	var n, oobn int
	var from unix.Sockaddr
	err := retry(fd, unix.POLLIN, timeout, func() (err error) {
		n, oobn, _, from, err = unix.Recvmsg(fd, buf, oob, 0)
		return err
	})
	if err != nil {
		return err
	}
	rep.Payload = buf[:n]
	rep.Remote = fromSockaddr(from)
	rep.Dst = pktinfoDst(oob[:oobn])
	return nil
}

// pktinfoDst returns the header destination address from IP_PKTINFO or
// IPV6_PKTINFO control messages, preferring the IPv6 form (which shows
// IPv4 packets on a dual-stack socket as v4-mapped addresses).
func pktinfoDst(oob []byte) netip.Addr {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	var dst4, dst6 netip.Addr
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			dst4 = netip.AddrFrom4([4]byte(m.Data[8:12]))
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { in6_addr addr; int ifindex; }
			dst6 = netip.AddrFrom16([16]byte(m.Data[0:16]))
		}
	}
	if dst6.IsValid() {
		return dst6
	}
	return dst4
}

func membership(fd int, join bool, group netip.Addr, ifindex int) error {
	switch {
	case group.Is4():
		opt := unix.IP_ADD_MEMBERSHIP
		if !join {
			opt = unix.IP_DROP_MEMBERSHIP
		}
		return unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, opt, &unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(ifindex)})
	case group.Is6():
		opt := unix.IPV6_JOIN_GROUP
		if !join {
			opt = unix.IPV6_LEAVE_GROUP
		}
		return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, opt, &unix.IPv6Mreq{Multiaddr: group.As16(), Interface: uint32(ifindex)})
	}
	return misusef("multicast membership: invalid group address")
}

// sourceFilter sets one of the per-source multicast options (Agent.SourceFilter).
func sourceFilter(fd, opt int, group, source netip.Addr, ifindex int) error {
	if !group.IsValid() || !source.IsValid() || group.Is4() != source.Is4() {
		return misusef("source filter: group %v and source %v must be addresses of one family", group, source)
	}
	switch opt {
	case unix.IP_ADD_SOURCE_MEMBERSHIP, unix.IP_DROP_SOURCE_MEMBERSHIP, unix.IP_BLOCK_SOURCE, unix.IP_UNBLOCK_SOURCE:
		if !group.Is4() {
			return misusef("source filter: option %d takes an IPv4 group and source", opt)
		}
		// struct ip_mreq_source: imr_multiaddr, imr_interface, imr_sourceaddr.
		var b [12]byte
		g, s := group.As4(), source.As4()
		copy(b[0:4], g[:])
		copy(b[8:12], s[:])
		if ifindex != 0 {
			ifa, err := ifaceAddr4(ifindex)
			if err != nil {
				return err
			}
			copy(b[4:8], ifa[:])
		}
		return setsockoptBytes(fd, unix.IPPROTO_IP, opt, b[:])
	case unix.MCAST_JOIN_SOURCE_GROUP, unix.MCAST_LEAVE_SOURCE_GROUP, unix.MCAST_BLOCK_SOURCE, unix.MCAST_UNBLOCK_SOURCE:
		// struct group_source_req on 64-bit Linux: gsr_interface (4 bytes,
		// 4 of padding), then two 128-byte sockaddr_storage: the group at 8,
		// the source at 136.
		var b [8 + 2*128]byte
		binary.NativeEndian.PutUint32(b[0:4], uint32(ifindex))
		putSockaddr(b[8:136], group)
		putSockaddr(b[136:264], source)
		level := unix.IPPROTO_IPV6
		if group.Is4() {
			level = unix.IPPROTO_IP
		}
		return setsockoptBytes(fd, level, opt, b[:])
	}
	return misusef("source filter: option %d is not a per-source multicast option", opt)
}

// ifaceAddr4 is the first IPv4 address of interface ifindex: the IPv4
// multicast API names interfaces by address.
func ifaceAddr4(ifindex int) ([4]byte, error) {
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return [4]byte{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return [4]byte{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, ok := netip.AddrFromSlice(n.IP); ok && p.Unmap().Is4() {
				return p.Unmap().As4(), nil
			}
		}
	}
	return [4]byte{}, fmt.Errorf("interface %s has no IPv4 address", ifi.Name)
}

// putSockaddr writes a as a sockaddr_in (IPv4) or sockaddr_in6 into b.
func putSockaddr(b []byte, a netip.Addr) {
	if a.Is4() {
		binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
		v := a.As4()
		copy(b[4:8], v[:])
		return
	}
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	v := a.As16()
	copy(b[8:24], v[:])
}

// setsockoptBytes is setsockopt(2) with a struct given as bytes.
func setsockoptBytes(fd, level, opt int, b []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// toSockaddr keeps the exact form of the address: an IPv4 address becomes
// a sockaddr_in, anything IPv6 (v4-mapped included) a sockaddr_in6.
func toSockaddr(ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	switch {
	case a.Is4():
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}, nil
	case a.Is6():
		sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if n, err := strconv.Atoi(z); err == nil {
				sa.ZoneId = uint32(n)
			} else if ifi, err := net.InterfaceByName(z); err == nil {
				sa.ZoneId = uint32(ifi.Index)
			} else {
				return nil, fmt.Errorf("zone %q: %w", z, err)
			}
		}
		return sa, nil
	}
	return nil, misusef("invalid address %v", ap)
}

// fromSockaddr keeps the exact form too: v4-mapped IPv6 stays v4-mapped.
func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			zone := strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
			a = a.WithZone(zone)
		}
		return netip.AddrPortFrom(a, uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func readCaps() (eff, bnd uint64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	var haveEff, haveBnd bool
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "CapEff":
			dst, haveEff = &eff, true
		case "CapBnd":
			dst, haveBnd = &bnd, true
		default:
			continue
		}
		if *dst, err = strconv.ParseUint(strings.TrimSpace(val), 16, 64); err != nil {
			return 0, 0, fmt.Errorf("parse %s in /proc/self/status: %w", key, err)
		}
	}
	if !haveEff || !haveBnd {
		return 0, 0, errors.New("/proc/self/status has no CapEff or CapBnd line")
	}
	return eff, bnd, nil
}

// Go-net operations: these use package net exactly as an application
// would, and report addresses as the kernel has them (getsockname and
// getpeername on the file descriptor), not as package net converts them.

func rawNames(c syscall.Conn) (local, remote netip.AddrPort) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			local = fromSockaddr(sa)
		}
		if sa, err := unix.Getpeername(int(fd)); err == nil {
			remote = fromSockaddr(sa)
		}
	})
	return local, remote
}

func (srv *server) goListen(req *request, rep *reply) error {
	if !strings.HasPrefix(req.Network, "tcp") {
		return misusef("GoListen %q: only tcp networks; use GoListenPacket for udp", req.Network)
	}
	ln, err := net.Listen(req.Network, req.Address)
	if err != nil {
		return err
	}
	tl := ln.(*net.TCPListener)
	raw, err := tl.SyscallConn()
	if err != nil {
		ln.Close()
		return err
	}
	s := &sock{fd: -1, ln: ln, raw: raw, accepted: make(chan acceptResult, 1024)}
	rep.Local, _ = rawNames(tl)
	rep.ID = srv.add(s)
	go s.acceptLoop()
	return nil
}

// acceptLoop accepts connections as a server application would, echoes
// the first read of each back and keeps it open until the listener is
// closed.
func (s *sock) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.accepted <- acceptResult{err: err}
			}
			return
		}
		_, peer := rawNames(c.(*net.TCPConn))
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		go func() {
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := c.Read(buf)
			if n > 0 && err == nil {
				c.Write(buf[:n])
			}
		}()
		s.accepted <- acceptResult{peer: peer}
	}
}

func goAccept(s *sock, timeout time.Duration, rep *reply) error {
	select {
	case r := <-s.accepted:
		rep.Remote = r.peer
		return r.err
	default:
	}
	if timeout <= 0 {
		return unix.ETIMEDOUT
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-s.accepted:
		rep.Remote = r.peer
		return r.err
	case <-t.C:
		return unix.ETIMEDOUT
	}
}

func goDial(req *request, rep *reply) error {
	d := net.Dialer{Timeout: req.Timeout}
	c, err := d.Dial(req.Network, req.Address)
	if err != nil {
		return err
	}
	defer c.Close()
	if sc, ok := c.(syscall.Conn); ok {
		rep.Local, rep.Remote = rawNames(sc)
	}
	c.SetDeadline(time.Now().Add(req.Timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("dial %s %s: echo returned %q, want \"ping\"", req.Network, req.Address, buf[:n])
	}
	return nil
}

func (srv *server) goListenPacket(req *request, rep *reply) error {
	if !strings.HasPrefix(req.Network, "udp") {
		return misusef("GoListenPacket %q: only udp networks", req.Network)
	}
	pc, err := net.ListenPacket(req.Network, req.Address)
	if err != nil {
		return err
	}
	uc := pc.(*net.UDPConn)
	raw, err := uc.SyscallConn()
	if err != nil {
		pc.Close()
		return err
	}
	rep.Local, _ = rawNames(uc)
	rep.ID = srv.add(&sock{fd: -1, pc: uc, raw: raw})
	return nil
}

func goPacketSend(pc *net.UDPConn, req *request) error {
	if req.Src.IsValid() {
		return misusef("SendFrom: not supported on GoListenPacket sockets")
	}
	var err error
	if req.Addr.IsValid() {
		_, err = pc.WriteToUDPAddrPort(req.Payload, req.Addr)
	} else {
		_, err = pc.Write(req.Payload)
	}
	return err
}

func goPacketRecv(pc *net.UDPConn, timeout time.Duration, rep *reply) error {
	buf := make([]byte, 64<<10)
	oob := make([]byte, 512)
	pc.SetReadDeadline(time.Now().Add(timeout))
	n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		return err
	}
	rep.Payload = buf[:n]
	rep.Remote = from
	rep.Dst = pktinfoDst(oob[:oobn])
	return nil
}

func goSendTo(req *request, rep *reply) error {
	if !strings.HasPrefix(req.Network, "udp") {
		return misusef("GoSendTo %q: only udp networks", req.Network)
	}
	c, err := net.Dial(req.Network, req.Address)
	if err != nil {
		return err
	}
	defer c.Close()
	if sc, ok := c.(syscall.Conn); ok {
		rep.Local, rep.Remote = rawNames(sc)
	}
	_, err = c.Write(req.Payload)
	return err
}
