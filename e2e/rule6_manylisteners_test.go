package e2e

// The listener registry at scale (issue 4): more listening containers than
// one registry page holds, and the purge of a deleted container's leftover
// registration.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// countAll drains socket ids[i] of agents[i] (skipping ids[i] < 0) in
// parallel: what each received until nothing came for 300 ms, and the
// first error or stray sender.
func countAll(agents []*sockprobe.Agent, ids []int, from netip.Addr) ([]int, error) {
	got := make([]int, len(agents))
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for i, a := range agents {
		if ids[i] < 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, src, _, err := a.RecvFrom(ids[i], 300*time.Millisecond)
				if errors.Is(err, unix.ETIMEDOUT) {
					return
				}
				if err == nil && src.Addr().Unmap() != from {
					err = fmt.Errorf("datagram from %v, want from %v", src, from)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("agent %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				got[i]++
			}
		}()
	}
	wg.Wait()
	return got, first
}

// TestGroupManyListeners: 35 of 70 shared-mode containers listen (more
// than one registry page of 32 containers; their ids span three pages).
// A broadcast and an IPv4 and an IPv6 multicast datagram from the outside
// host reach each listener exactly once per socket, and no other
// container. A socket that outlives its container (its process moved out
// of the container's cgroup) leaves a registration that `container del`
// purges, without disturbing the other listeners of the same page.
func TestGroupManyListeners(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	// The outside host sends IPv4 multicast by its default route.
	if out, err := exec.Command("ip", "-n", filepath.Base(n.outside), "route", "add", "default", "via", hostUp4.String()).CombinedOutput(); err != nil {
		t.Fatalf("outside default route: %v: %s", err, out)
	}
	const (
		count = 70
		sends = 3
	)
	g4, g6 := netip.MustParseAddr("239.2.2.2"), netip.MustParseAddr("ff15::82")
	bc := netip.MustParseAddr("10.82.0.255")
	names := make([]string, count)
	agents := make([]*sockprobe.Agent, count)
	for i := range names {
		names[i] = n.name(fmt.Sprintf("m%d", i+1))
		n.mustRun("container", "add", names[i], "--addr", fmt.Sprintf("10.82.0.%d/24", i+1),
			"--addr", fmt.Sprintf("fd82::%d/64", i+1), "--mcast", "239.2.0.0/16", "--mcast", "ff15::/16")
		agents[i] = n.agent(names[i])
	}
	// Even containers listen on grpPort (IPv4: broadcast and g4; IPv6:
	// g6), odd ones on otherPort only.
	v4, v6, other := make([]int, count), make([]int, count), make([]int, count)
	for i, a := range agents {
		v4[i], v6[i], other[i] = -1, -1, -1
		if i%2 == 1 {
			other[i] = udpBound(t, a, unix.AF_INET, otherPort)
			continue
		}
		v4[i] = udpBound(t, a, unix.AF_INET, grpPort)
		v6[i] = udpBound(t, a, unix.AF_INET6, grpPort)
		if err := a.JoinGroup(v4[i], g4, 0); err != nil {
			t.Fatalf("%s join %v: %v", names[i], g4, err)
		}
		if err := a.JoinGroup(v6[i], g6, 0); err != nil {
			t.Fatalf("%s join %v: %v", names[i], g6, err)
		}
	}
	registered := func() map[string]int {
		per := map[string]int{}
		for _, l := range n.status().Listeners {
			if l.Port == grpPort {
				per[l.Container]++
			}
		}
		return per
	}
	per := registered()
	for i, name := range names {
		// broadcast (one entry: the IPv6 socket is dual-stack, its
		// broadcasts are IPv4's), g4, g6
		if want := map[bool]int{true: 3, false: 0}[i%2 == 0]; per[name] != want {
			t.Errorf("%s has %d registry entries on port %d, want %d", name, per[name], grpPort, want)
		}
	}

	out := n.out()
	o4 := out.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := out.SetBroadcast(o4, true); err != nil {
		t.Fatal(err)
	}
	o6 := out.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	check := func(what string, skip int) {
		t.Helper()
		sendN(t, out, o4, netip.AddrPortFrom(bc, grpPort), sends)
		sendN(t, out, o4, netip.AddrPortFrom(g4, grpPort), sends)
		sendN(t, out, o6, netip.AddrPortFrom(g6, grpPort), sends)
		for _, c := range []struct {
			socks []int
			from  netip.Addr
			want  int
		}{
			{v4, outside4, 2 * sends},
			{v6, outside6, sends},
			{other, netip.Addr{}, 0},
		} {
			socks := append([]int(nil), c.socks...)
			if skip >= 0 {
				socks[skip] = -1
			}
			got, err := countAll(agents, socks, c.from)
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
			for i, k := range got {
				if socks[i] >= 0 && k != c.want {
					t.Errorf("%s: %s got %d datagrams on a socket that should get %d", what, names[i], k, c.want)
				}
			}
		}
	}
	check("35 listeners", -1)

	// Container m41 (page 1 with m33..m64) dies, but its process lives
	// on outside it, sockets and all: its entries outlive it until `del`
	// purges them.
	const gone = 40
	if err := os.WriteFile(filepath.Join(n.hostCg, "cgroup.procs"), []byte(strconv.Itoa(agents[gone].Pid())), 0o644); err != nil {
		t.Fatalf("move %s's agent out of its cgroup: %v", names[gone], err)
	}
	n.mustRun("container", "del", names[gone])
	for _, l := range n.status().Listeners {
		if l.Addr == "10.82.0.41" || l.Addr == "fd82::41" {
			t.Errorf("container del left registry entry %+v", l)
		}
	}
	if per := registered(); len(per) != count/2-1 {
		t.Errorf("%d containers registered on port %d after the delete, want %d: %v", len(per), grpPort, count/2-1, per)
	}
	check("after deleting "+names[gone], gone)
	// The leftover socket closing later changes nobody's entry.
	agents[gone].Close(v4[gone])
	agents[gone].Close(v6[gone])
	if per := registered(); len(per) != count/2-1 {
		t.Errorf("%d containers registered on port %d after the leftover sockets closed, want %d", len(per), grpPort, count/2-1)
	}
}
