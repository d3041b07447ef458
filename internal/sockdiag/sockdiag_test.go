package sockdiag

import (
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// TestList opens real sockets in this process — a TCP listener, both ends
// of a connection to it, a bound UDP socket, a dual-stack IPv6 listener
// reached over IPv4 — and finds each in the dump with its addresses,
// state, inode and this process's cgroup; a closed one is gone.
func TestList(t *testing.T) {
	cg := ownCgroup(t)
	for _, fam := range []struct {
		network, lo string
	}{{"4", "127.0.0.1"}, {"6", "::1"}} {
		t.Run("ip"+fam.network, func(t *testing.T) {
			ln, err := net.Listen("tcp"+fam.network, net.JoinHostPort(fam.lo, "0"))
			if err != nil {
				t.Skipf("no %s: %v", fam.lo, err)
			}
			defer ln.Close()
			lap := netip.MustParseAddrPort(ln.Addr().String())
			cli, srv := dial(t, ln, "tcp"+fam.network, lap.String())
			udp, err := net.ListenPacket("udp"+fam.network, net.JoinHostPort(fam.lo, "0"))
			if err != nil {
				t.Fatal(err)
			}
			uap := netip.MustParseAddrPort(udp.LocalAddr().String())
			cap := netip.MustParseAddrPort(cli.LocalAddr().String())

			socks, err := List()
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct {
				what          string
				proto, state  uint8
				local, remote netip.AddrPort
				inode         uint32
			}{
				{"listener", unix.IPPROTO_TCP, StateListen, lap, netip.AddrPortFrom(unspec(lap.Addr()), 0), inode(t, ln)},
				{"accepted", unix.IPPROTO_TCP, StateEstablished, lap, cap, inode(t, srv)},
				{"client", unix.IPPROTO_TCP, StateEstablished, cap, lap, inode(t, cli)},
				{"udp", unix.IPPROTO_UDP, StateClose, uap, netip.AddrPortFrom(unspec(uap.Addr()), 0), inode(t, udp)},
			} {
				s, ok := find(socks, w.proto, w.local, w.remote)
				if !ok {
					t.Errorf("%s %s → %s not in the dump", w.what, w.local, w.remote)
					continue
				}
				if s.State != w.state || s.Inode != w.inode || s.Cgroup != cg || !s.Live() {
					t.Errorf("%s: %+v, want state %d, inode %d, cgroup %d", w.what, s, w.state, w.inode, cg)
				}
			}
			udp.Close()
			socks, err = List()
			if err != nil {
				t.Fatal(err)
			}
			if s, ok := find(socks, unix.IPPROTO_UDP, uap, netip.AddrPortFrom(unspec(uap.Addr()), 0)); ok {
				t.Errorf("closed UDP socket still listed: %+v", s)
			}
		})
	}
	// A dual-stack IPv6 socket's connection from IPv4 is listed as IPv4.
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	cli, _ := dial(t, ln, "tcp4", "127.0.0.1:"+strconv.Itoa(int(port)))
	socks, err := List()
	if err != nil {
		t.Fatal(err)
	}
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	if s, ok := find(socks, unix.IPPROTO_TCP, local, netip.MustParseAddrPort(cli.LocalAddr().String())); !ok || s.Cgroup != cg {
		t.Errorf("the dual-stack listener's IPv4 connection: %+v (found %v), want local %s, cgroup %d", s, ok, local, cg)
	}
}

// dial connects to listener ln at addr and accepts: both ends, closed by
// the test's cleanup.
func dial(t *testing.T, ln net.Listener, network, addr string) (cli, srv net.Conn) {
	t.Helper()
	cli, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if srv, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return cli, srv
}

func find(socks []Socket, proto uint8, local, remote netip.AddrPort) (Socket, bool) {
	for _, s := range socks {
		if s.Proto == proto && s.Local == local && s.Remote == remote {
			return s, true
		}
	}
	return Socket{}, false
}

func unspec(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// inode is the inode of a Go socket's file descriptor.
func inode(t *testing.T, c any) uint32 {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) })
	if serr != nil {
		t.Fatal(serr)
	}
	return uint32(st.Ino)
}

// ownCgroup is the cgroup v2 id of this process.
func ownCgroup(t *testing.T) uint64 {
	t.Helper()
	dir, err := cgroup.Current()
	if err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	id, err := cgroup.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
