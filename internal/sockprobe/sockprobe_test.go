package sockprobe_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

func TestMain(m *testing.M) {
	sockprobe.MaybeServe()
	os.Exit(m.Run())
}

const wait = 3 * time.Second

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// inode returns device and inode of a file, following symlinks.
func inode(t *testing.T, path string) [2]uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// cgroupOf returns the cgroup v2 path of pid relative to the mount.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	t.Fatalf("no cgroup v2 line in /proc/%d/cgroup:\n%s", pid, b)
	return ""
}

func relCgroup(t *testing.T, dir string) string {
	t.Helper()
	mnt, err := sockprobe.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(mnt, dir)
	if err != nil {
		t.Fatal(err)
	}
	return "/" + rel
}

func TestAgent(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	o := sockprobe.Options{NetnsPath: sockprobe.NewNetns(t), CgroupDir: sockprobe.NewCgroup(t, "")}
	a := sockprobe.Start(t, o)

	t.Run("placement", func(t *testing.T) {
		if got, want := cgroupOf(t, a.Pid()), relCgroup(t, o.CgroupDir); got != want {
			t.Errorf("agent cgroup = %q, want %q", got, want)
		}
		procNs := "/proc/" + strconv.Itoa(a.Pid()) + "/ns/net"
		if got, want := inode(t, procNs), inode(t, o.NetnsPath); got != want {
			t.Errorf("agent netns = %v, want %v (%s)", got, want, o.NetnsPath)
		}
		if inode(t, "/proc/self/ns/net") == inode(t, o.NetnsPath) {
			t.Errorf("the test process itself is in the new netns")
		}
		eff, bnd, err := a.Caps()
		if err != nil {
			t.Fatal(err)
		}
		if eff&(1<<unix.CAP_NET_ADMIN) == 0 || bnd&(1<<unix.CAP_NET_ADMIN) == 0 {
			t.Errorf("root agent lacks CAP_NET_ADMIN: CapEff %#x CapBnd %#x", eff, bnd)
		}
	})

	t.Run("tcp4", func(t *testing.T) {
		ln := a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer a.Close(ln)
		if err := a.SetReuseAddr(ln); err != nil {
			t.Fatal(err)
		}
		if err := a.Bind(ln, mustAddrPort(t, "127.0.0.1:0")); err != nil {
			t.Fatal(err)
		}
		if err := a.Listen(ln); err != nil {
			t.Fatal(err)
		}
		laddr, err := a.SockName(ln)
		if err != nil || laddr.Addr() != netip.MustParseAddr("127.0.0.1") || laddr.Port() == 0 {
			t.Fatalf("listener SockName = %v, %v", laddr, err)
		}

		c := a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer a.Close(c)
		if err := a.Connect(c, laddr); err != nil {
			t.Fatalf("Connect(%v): %v", laddr, err)
		}
		caddr, _ := a.SockName(c)
		if peer, _ := a.PeerName(c); peer != laddr {
			t.Errorf("client PeerName = %v, want %v", peer, laddr)
		}
		s, peer, err := a.Accept(ln, wait)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(s)
		if peer != caddr {
			t.Errorf("Accept peer = %v, want client's %v", peer, caddr)
		}
		if err := a.Write(c, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if b, err := a.Read(s, wait); err != nil || string(b) != "hello" {
			t.Errorf("Read = %q, %v; want \"hello\"", b, err)
		}
		if _, _, err := a.Accept(ln, 0); !errors.Is(err, unix.ETIMEDOUT) {
			t.Errorf("Accept with nothing pending: err = %v, want ETIMEDOUT", err)
		}
	})

	t.Run("udp-pktinfo", func(t *testing.T) {
		tests := []struct {
			name     string
			family   int
			bind     string
			sendTo   string // %d is the receiver's port
			src      string // SendFrom source; "" means SendTo
			wantDst  string
			wantFrom string // address of the sender as the receiver sees it
		}{
			{"v4", unix.AF_INET, "127.0.0.1:0", "127.0.0.1", "", "127.0.0.1", "127.0.0.1"},
			{"v4-sendfrom", unix.AF_INET, "127.0.0.1:0", "127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"},
			{"dualstack-gets-v4", unix.AF_INET6, "[::]:0", "127.0.0.1", "", "::ffff:127.0.0.1", "::ffff:127.0.0.1"},
			{"v6", unix.AF_INET6, "[::1]:0", "::1", "", "::1", "::1"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := a.Socket(tt.family, unix.SOCK_DGRAM, 0)
				defer a.Close(r)
				if err := a.Bind(r, mustAddrPort(t, tt.bind)); err != nil {
					t.Fatal(err)
				}
				raddr, _ := a.SockName(r)
				dst := netip.AddrPortFrom(netip.MustParseAddr(tt.sendTo), raddr.Port())
				sfam := unix.AF_INET
				if dst.Addr().Is6() {
					sfam = unix.AF_INET6
				}
				s := a.Socket(sfam, unix.SOCK_DGRAM, 0)
				defer a.Close(s)
				var err error
				if tt.src == "" {
					err = a.SendTo(s, dst, []byte("x"))
				} else {
					err = a.SendFrom(s, netip.MustParseAddr(tt.src), dst, []byte("x"))
				}
				if err != nil {
					t.Fatalf("send to %v: %v", dst, err)
				}
				saddr, _ := a.SockName(s)
				payload, from, gotDst, err := a.RecvFrom(r, wait)
				if err != nil {
					t.Fatal(err)
				}
				wantFrom := netip.AddrPortFrom(netip.MustParseAddr(tt.wantFrom), saddr.Port())
				if string(payload) != "x" || from != wantFrom || gotDst != netip.MustParseAddr(tt.wantDst) {
					t.Errorf("RecvFrom = %q from %v dst %v; want \"x\" from %v dst %s", payload, from, gotDst, wantFrom, tt.wantDst)
				}
			})
		}
	})

	t.Run("errno", func(t *testing.T) {
		s := a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer a.Close(s)
		err := a.Bind(s, mustAddrPort(t, "192.0.2.1:80"))
		if _, ok := err.(unix.Errno); !ok || !errors.Is(err, unix.EADDRNOTAVAIL) {
			t.Errorf("Bind(192.0.2.1:80) = %#v, want unix.EADDRNOTAVAIL", err)
		}
		// Nothing listens on port 1.
		if err := a.Connect(s, mustAddrPort(t, "127.0.0.1:1")); err != unix.ECONNREFUSED {
			t.Errorf("Connect(127.0.0.1:1) = %v, want ECONNREFUSED", err)
		}
		u := a.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer a.Close(u)
		if _, _, _, err := a.RecvFrom(u, 50*time.Millisecond); err != unix.ETIMEDOUT {
			t.Errorf("RecvFrom on an idle socket = %v, want ETIMEDOUT", err)
		}
		if _, _, err := a.GoDial("tcp", "127.0.0.1:1", time.Second); !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("GoDial(127.0.0.1:1) = %v, want an error wrapping ECONNREFUSED", err)
		}
	})

	t.Run("multicast", func(t *testing.T) {
		u := a.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer a.Close(u)
		group := netip.MustParseAddr("239.1.2.3")
		if err := a.JoinGroup(u, group, 1); err != nil {
			t.Fatalf("JoinGroup(%v, lo): %v", group, err)
		}
		if err := a.LeaveGroup(u, group, 1); err != nil {
			t.Fatalf("LeaveGroup(%v, lo): %v", group, err)
		}

		// Per-source options, both APIs, both families: the kernel takes
		// the structs as built (a malformed one would be EINVAL at once)
		// and keeps include and exclude filters apart.
		for _, tc := range []struct {
			fam                int
			group, s1, s2      string
			join, leave, block int
			ifindex            int
		}{
			{unix.AF_INET, "239.1.2.3", "127.0.0.2", "127.0.0.3", unix.IP_ADD_SOURCE_MEMBERSHIP, unix.IP_DROP_SOURCE_MEMBERSHIP, unix.IP_BLOCK_SOURCE, 1},
			{unix.AF_INET, "239.1.2.3", "127.0.0.2", "127.0.0.3", unix.MCAST_JOIN_SOURCE_GROUP, unix.MCAST_LEAVE_SOURCE_GROUP, unix.MCAST_BLOCK_SOURCE, 1},
			{unix.AF_INET6, "ff15::1", "fd00::2", "fd00::3", unix.MCAST_JOIN_SOURCE_GROUP, unix.MCAST_LEAVE_SOURCE_GROUP, unix.MCAST_BLOCK_SOURCE, 1},
		} {
			g, s1, s2 := netip.MustParseAddr(tc.group), netip.MustParseAddr(tc.s1), netip.MustParseAddr(tc.s2)
			u := a.Socket(tc.fam, unix.SOCK_DGRAM, 0)
			if err := a.SourceFilter(u, tc.join, g, s1, tc.ifindex); err != nil {
				t.Errorf("option %d: join (%v, %v): %v", tc.join, s1, g, err)
			}
			if err := a.SourceFilter(u, tc.join, g, s2, tc.ifindex); err != nil {
				t.Errorf("option %d: join (%v, %v): %v", tc.join, s2, g, err)
			}
			// Include mode: blocking a source is an error.
			if err := a.SourceFilter(u, tc.block, g, s1, tc.ifindex); err != unix.EINVAL {
				t.Errorf("option %d: block %v in include mode = %v, want EINVAL", tc.block, s1, err)
			}
			for _, src := range []netip.Addr{s1, s2} {
				if err := a.SourceFilter(u, tc.leave, g, src, tc.ifindex); err != nil {
					t.Errorf("option %d: leave (%v, %v): %v", tc.leave, src, g, err)
				}
			}
			// The last source dropped left the group.
			if err := a.SourceFilter(u, tc.leave, g, s1, tc.ifindex); err == nil {
				t.Errorf("option %d: leave (%v, %v) after the group was left: no error", tc.leave, s1, g)
			}
			a.Close(u)
		}
	})

	t.Run("go-tcp", func(t *testing.T) {
		ln, local, err := a.GoListen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(ln)
		if local.Addr() != netip.IPv6Unspecified() {
			t.Errorf("GoListen(tcp, :0) local = %v, want a dual-stack [::] listener", local)
		}
		fam, _, proto, err := a.SockInfo(ln)
		if err != nil || fam != unix.AF_INET6 {
			t.Errorf("SockInfo = family %d, %v; want AF_INET6", fam, err)
		}
		t.Logf("Go listener %v protocol %d (MPTCP is %d)", local, proto, unix.IPPROTO_MPTCP)

		tests := []struct {
			addr     string
			wantPeer string // as the listener's accept sees the client
		}{
			{"[::1]", "::1"},
			{"127.0.0.1", "::ffff:127.0.0.1"},
		}
		for _, tt := range tests {
			t.Run(tt.addr, func(t *testing.T) {
				target := tt.addr + ":" + strconv.Itoa(int(local.Port()))
				clocal, remote, err := a.GoDial("tcp", target, wait)
				if err != nil {
					t.Fatalf("GoDial(%s): %v", target, err)
				}
				if remote.Port() != local.Port() {
					t.Errorf("GoDial remote = %v, want port %d", remote, local.Port())
				}
				peer, err := a.GoAccept(ln, wait)
				if err != nil {
					t.Fatal(err)
				}
				want := netip.AddrPortFrom(netip.MustParseAddr(tt.wantPeer), clocal.Port())
				if peer != want {
					t.Errorf("GoAccept peer = %v, want %v (dialer's local %v)", peer, want, clocal)
				}
			})
		}
	})

	t.Run("go-udp", func(t *testing.T) {
		pc, local, err := a.GoListenPacket("udp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(pc)
		target := "127.0.0.1:" + strconv.Itoa(int(local.Port()))
		slocal, _, err := a.GoSendTo("udp", target, []byte("hi"))
		if err != nil {
			t.Fatalf("GoSendTo(%s): %v", target, err)
		}
		payload, from, _, err := a.RecvFrom(pc, wait)
		want := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), slocal.Port())
		if err != nil || string(payload) != "hi" || from != want {
			t.Errorf("RecvFrom = %q from %v, %v; want \"hi\" from %v", payload, from, err, want)
		}
	})

	t.Run("python", func(t *testing.T) {
		ln := a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		defer a.Close(ln)
		if err := a.Bind(ln, mustAddrPort(t, "127.0.0.1:0")); err != nil {
			t.Fatal(err)
		}
		if err := a.Listen(ln); err != nil {
			t.Fatal(err)
		}
		laddr, _ := a.SockName(ln)
		const script = `
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
print(s.getsockname()[1])
print(open("/proc/self/cgroup").read().strip().splitlines()[-1])
`
		out, err := sockprobe.Python(t, o, script, strconv.Itoa(int(laddr.Port())))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("python printed %q, want 2 lines", out)
		}
		if want := "0::" + relCgroup(t, o.CgroupDir); lines[1] != want {
			t.Errorf("python's cgroup = %q, want %q", lines[1], want)
		}
		_, peer, err := a.Accept(ln, wait)
		if err != nil {
			t.Fatal(err)
		}
		if strconv.Itoa(int(peer.Port())) != lines[0] || peer.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("accepted peer %v, python's local port %s", peer, lines[0])
		}
		if _, err := sockprobe.Python(t, o, "import sys; sys.exit('boom')"); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Errorf("failing script: err = %v, want one naming its stderr", err)
		}
	})
}

// TestCleanup checks that netns, cgroups (with a child cgroup and a live
// process in it), agents and bpffs mounts (with a pin in them) are gone once
// the test that made them ends.
func TestCleanup(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	var ns, cg, bpffs string
	var pid int
	t.Run("make", func(t *testing.T) {
		ns = sockprobe.NewNetns(t)
		cg = sockprobe.NewCgroup(t, "")
		bpffs = sockprobe.NewBPFFS(t)
		var st unix.Statfs_t
		if err := unix.Statfs(bpffs, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			t.Fatalf("NewBPFFS %s: file system type %#x (err %v), want bpf (%#x)", bpffs, st.Type, err, unix.BPF_FS_MAGIC)
		}
		pinMap(t, filepath.Join(bpffs, "m"))
		child := sockprobe.NewCgroup(t, cg)
		grandchild := filepath.Join(child, "sub")
		if err := os.Mkdir(grandchild, 0o755); err != nil {
			t.Fatal(err)
		}
		// A process the test forgets about; cleanup must kill it.
		cmd := sockprobe.Command(context.Background(), t, sockprobe.Options{CgroupDir: grandchild, NetnsPath: ns}, "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		pid = sockprobe.Start(t, sockprobe.Options{CgroupDir: cg, NetnsPath: ns}).Pid()
	})
	for _, p := range []string{ns, cg, bpffs} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after cleanup (stat: %v)", p, err)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err != nil || strings.Contains(string(mi), " "+bpffs+" ") {
		t.Errorf("bpffs %s still mounted after cleanup (mountinfo: %v)", bpffs, err)
	}
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("agent %d still alive after cleanup (kill 0: %v)", pid, err)
	}
}

// pinMap pins a small new array map at path.
func pinMap(t *testing.T, path string) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create a map to pin: %v", err)
	}
	defer m.Close()
	if err := m.Pin(path); err != nil {
		t.Fatalf("pin a map in the bpffs: %v", err)
	}
}
