package loader_test

// TestUpgradeTCInPlace: `l3iso up` with a newer binary replaces the TC (TCX)
// programs in place, like TestUpgradeInPlace does for the cgroup socket
// programs. Everything happens in private network namespaces, a private
// cgroup subtree and a private bpffs mount:
//
//	outside netns               host netns (l3iso runs here)              container netns l3iso-NAME
//	eth0 192.0.2.2  ──veth──  up0 192.0.2.1      l3i-NAME ────veth────  eth0 10.78.0.1/24
//	     2001:db8:1::2             2001:db8:1::1                              fd78::1
//	UDP clients (this test)   up0 ingress: l3_tc_group, l3_tc_uplink       UDP echo server (python3, in
//	                          up0 egress:  l3_tc_group_out                 the container's cgroup)
//	                          lo ingress:  l3_tc_group
//	                          l3i-NAME ingress: l3_tc_veth
//
// Each datagram from the outside enters up0, where l3_tc_uplink puts it
// into the container (bpf_redirect_peer); each echo enters l3i-NAME, where
// l3_tc_veth sends it out of up0 (FIB lookup, bpf_redirect). The host
// itself forwards nothing: IP forwarding is off on up0, so without
// l3_tc_uplink a datagram is dropped, and a reply that skipped l3_tc_veth
// would be forwarded by the kernel (forwarding is on on the veth), which the
// host's forwarding counters show.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/netstat"
	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

var (
	tcuHost4 = netip.MustParseAddr("192.0.2.1")
	tcuHost6 = netip.MustParseAddr("2001:db8:1::1")
	tcuOut4  = netip.MustParseAddr("192.0.2.2")
	tcuOut6  = netip.MustParseAddr("2001:db8:1::2")
	tcuCont4 = netip.MustParseAddr("10.78.0.1")
	tcuCont6 = netip.MustParseAddr("fd78::1")
)

const (
	tcuUplink = "up0"
	tcuPort   = 7900
	// tcuEchoTimeout is how long an exchange waits for its echo: far
	// beyond any delay of a veth round trip, so a miss is a lost datagram.
	tcuEchoTimeout = 5 * time.Second
	// tcuPhase is how many exchanges each flow completes before the
	// upgrade starts and after it ends.
	tcuPhase = 300
	// tcuDeadline bounds the traffic phases (the upgrade itself included).
	tcuDeadline = 60 * time.Second
)

// The echo server in the container: one UDP socket per family, bound to
// the container's address; it echoes every datagram to its sender.
const tcuEchoServer = `
import selectors, socket, sys
sel = selectors.DefaultSelector()
for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[3])))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(65535)
        key.fileobj.sendto(data, peer)
`

// TestUpgradeTCInPlace installs an "older binary" of the socket and TC
// programs with an uplink (direct delivery) and a netns container, then
// runs Up with the current build while UDP flows from an outside host to
// the container and back through l3_tc_uplink and l3_tc_veth. It checks
// that every pinned link (the TCX links on up0, lo and the container's veth
// included) keeps its id and its place in the kernel's TCX chain and now
// runs the current build's program (the one pinned in <bpffs>/progs); that
// no link was lost or added, and the kernel never showed one missing while
// Up ran; and that not one datagram was lost or refused before, during or
// after the swap, every one of them going through the TC programs (exact
// counters, no drop counted, nothing forwarded by the kernel).
func TestUpgradeTCInPlace(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("the container's echo server needs python3: %v", err)
	}
	hostNS := sockprobe.NewNetns(t)
	outNS := sockprobe.NewNetns(t)
	root := sockprobe.NewCgroup(t, "")
	dir := filepath.Join(sockprobe.NewBPFFS(t), "l3iso")

	// The uplink: a veth pair between the host and the outside namespace,
	// made directly in them (nothing appears in the machine's namespace).
	hostName, outName := filepath.Base(hostNS), filepath.Base(outNS)
	// The host forwards nothing (see the top of this file): a new
	// namespace inherits the machine's ip_forward, which may be on.
	for _, kv := range []string{"net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"} {
		if out, err := exec.Command("ip", "netns", "exec", hostName, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s: %v: %s", kv, err, out)
		}
	}
	for _, args := range [][]string{
		{"link", "add", tcuUplink, "netns", hostName, "type", "veth", "peer", "name", "eth0", "netns", outName},
		{"-n", hostName, "addr", "add", tcuHost4.String() + "/24", "dev", tcuUplink},
		{"-n", hostName, "addr", "add", tcuHost6.String() + "/64", "dev", tcuUplink, "nodad"},
		{"-n", outName, "addr", "add", tcuOut4.String() + "/24", "dev", "eth0"},
		{"-n", outName, "addr", "add", tcuOut6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", hostName, "link", "set", tcuUplink, "up"},
		{"-n", outName, "link", "set", "eth0", "up"},
		// One plain route via the host per family, as on any peer.
		{"-n", outName, "route", "add", "10.0.0.0/8", "via", tcuHost4.String()},
		{"-n", outName, "route", "add", "fd00::/8", "via", tcuHost6.String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}

	// The container's namespace is named machine-wide (/run/netns/l3iso-NAME).
	b := make([]byte, 3)
	rand.Read(b)
	name := "tcu-" + hex.EncodeToString(b)
	key := veth.Key(loader.NameTag(dir), name) // its namespace and veth are named by it
	vethIf := veth.HostIfName(key)
	t.Cleanup(func() { // runs after the down below
		if p := veth.NetnsPath(key); fileExists(p) {
			unix.Unmount(p, unix.MNT_DETACH)
			os.Remove(p)
			t.Errorf("down left network namespace %s (removed now)", veth.NetnsName(key))
		}
	})
	t.Cleanup(func() {
		err := inNetns(hostNS, func() error {
			c, err := control.OpenForDown(dir)
			if errors.Is(err, loader.ErrNotUp) {
				return nil
			}
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Down()
		})
		if err != nil {
			t.Errorf("l3iso down: %v", err)
		}
	})
	opts := loader.Options{CgroupRoot: root, BPFFS: dir, Uplink: tcuUplink, Delivery: maps.DeliveryDirect}

	// The "older binary", then the container, as `l3iso up` and
	// `l3iso container add --mode netns` do.
	older, err := olderTCSpec()
	if err != nil {
		t.Fatal(err)
	}
	restoreSock := loader.SetSocketSpec(loader.VariantSpec)
	restoreTC := loader.SetTCSpec(func() (*ebpf.CollectionSpec, error) {
		spec, err := olderTCSpec()
		return spec, err
	})
	t.Cleanup(restoreSock)
	t.Cleanup(restoreTC)
	var k maps.Container
	err = inNetns(hostNS, func() error {
		st, changed, err := loader.Up(opts)
		if err != nil {
			return fmt.Errorf("up with the older binary: %w", err)
		}
		if !changed {
			st.Close()
			return errors.New("up with the older binary on a fresh bpffs: changed=false")
		}
		c, err := control.FromState(st)
		if err != nil {
			st.Close()
			return fmt.Errorf("up with the older binary (reconcile): %w", err)
		}
		defer c.Close()
		addrs := []policy.Address{}
		for _, s := range []string{tcuCont4.String() + "/24", tcuCont6.String()} {
			a, err := policy.ParseAddress(s)
			if err != nil {
				return err
			}
			addrs = append(addrs, a)
		}
		k, err = c.Add(policy.Container{Name: name, Mode: policy.ModeNetns, Addresses: addrs})
		if err != nil {
			return fmt.Errorf("container add %s --mode netns: %w", name, err)
		}
		return nil
	})
	restoreSock()
	restoreTC()
	if err != nil {
		t.Fatal(err)
	}

	curSpec, err := loader.TCSpec()
	if err != nil {
		t.Fatal(err)
	}
	oldTags, err := programTags(dir, older)
	if err != nil {
		t.Fatalf("tags of the older build: %v", err)
	}
	curTags, err := programTags(dir, curSpec)
	if err != nil {
		t.Fatalf("tags of the current build: %v", err)
	}
	if len(oldTags) != len(curTags) {
		t.Fatalf("the older build has programs %v, the current one %v", keys(oldTags), keys(curTags))
	}
	for n, tag := range curTags {
		if oldTags[n] == tag {
			t.Fatalf("%s: the older build has the current build's tag %s: the upgrade would change nothing to observe", n, tag)
		}
	}

	// The hooks: ingress and egress of lo, the uplink and the veth.
	var hooks []tcxHook
	err = inNetns(hostNS, func() error {
		for _, ifname := range []string{"lo", tcuUplink, vethIf} {
			ifc, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				hooks = append(hooks, tcxHook{ifname, ifc.Index, at})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	before := snapshot(t, dir, hostNS, hooks)
	before.log(t, "before the upgrade")
	// The setup: each program where direct delivery puts it, every link
	// running the older build.
	for _, want := range []struct {
		hook int // index in hooks
		prog string
	}{{0, loader.ProgGroup}, {2, loader.ProgGroup}, {2, loader.ProgUplink}, {3, loader.ProgGroupOut}, {4, loader.ProgVeth}} {
		h := hooks[want.hook]
		if !before.runs(h, want.prog) {
			t.Fatalf("%s runs no %s: %v", h, want.prog, before.kernel[h])
		}
	}
	for _, l := range before.links {
		if l.TCX && l.Tag != oldTags[l.Prog] {
			t.Fatalf("before the upgrade: %v, want the older build's tag %s", l, oldTags[l.Prog])
		}
	}
	for n, p := range before.progs {
		if p.Tag != oldTags[n] {
			t.Fatalf("before the upgrade: %s pinned with tag %s, want the older build's %s", n, p.Tag, oldTags[n])
		}
	}

	// Traffic: the echo server in the container, the clients outside.
	startEchoServer(t, sockprobe.Options{CgroupDir: filepath.Join(root, loader.ContainersDir, name), NetnsPath: veth.NetnsPath(key)})
	flows := []*udpFlow{
		newUDPFlow(t, outNS, "udp4", netip.AddrPortFrom(tcuCont4, tcuPort)),
		newUDPFlow(t, outNS, "udp6", netip.AddrPortFrom(tcuCont6, tcuPort)),
	}
	for _, f := range flows {
		if err := f.warmUp(10 * time.Second); err != nil {
			t.Fatalf("%s: no echo from the container before the upgrade, the setup is broken: %v", f.name, err)
		}
	}
	set, err := maps.OpenPinned(filepath.Join(dir, "maps"))
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	cnt0 := readCounters(t, set, k.ID)
	fwd0 := forwarded(t, hostNS)

	ctx, cancel := context.WithTimeout(context.Background(), tcuDeadline)
	defer cancel()
	var wg sync.WaitGroup
	for _, f := range flows {
		wg.Add(1)
		go func() { defer wg.Done(); f.run(ctx) }()
	}
	stopFlows := func() { cancel(); wg.Wait() }
	defer stopFlows()
	// waitFor waits until every flow has tcuPhase more echoes than base.
	waitFor := func(base map[*udpFlow]int64) error {
		for _, f := range flows {
			for f.ok.Load()-base[f] < tcuPhase {
				if f.failed.Load() > 0 || ctx.Err() != nil {
					return fmt.Errorf("%s: %d of %d exchanges done, %d failed: %v", f.name, f.ok.Load()-base[f], tcuPhase, f.failed.Load(), f.errs())
				}
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	}
	if err := waitFor(nil); err != nil {
		stopFlows()
		t.Fatalf("before the upgrade: %v", err)
	}

	// The upgrade, watched by a sampler of the kernel's TCX chains.
	sampler := startSampler(hostNS, hooks, before)
	var st *loader.State
	var changed bool
	upStart := time.Now()
	err = inNetns(hostNS, func() error {
		var err error
		st, changed, err = loader.Up(opts)
		return err
	})
	upEnd := time.Now()
	samples := sampler.stop()
	if err != nil {
		stopFlows()
		t.Fatalf("up with the current binary: %v", err)
	}
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	okAtEnd := map[*udpFlow]int64{}
	for _, f := range flows {
		okAtEnd[f] = f.ok.Load()
	}
	if err := waitFor(okAtEnd); err != nil {
		t.Errorf("after the upgrade: %v", err)
	}
	stopFlows()
	cnt1 := readCounters(t, set, k.ID)
	fwd1 := forwarded(t, hostNS)
	t.Logf("up with the current binary took %v", upEnd.Sub(upStart).Round(time.Millisecond))

	if !changed {
		t.Errorf("up with the current binary: changed=false, want true")
	}

	// Links: the same ones, in the same places, now running the current
	// build's programs, the very ones pinned in <bpffs>/progs.
	after := snapshot(t, dir, hostNS, hooks)
	after.log(t, "after the upgrade")
	for n, tag := range curTags {
		p, ok := after.progs[n]
		switch {
		case !ok:
			t.Errorf("%s is not pinned in %s/progs after the upgrade", n, dir)
		case p.Tag != tag:
			t.Errorf("%s/progs/%s: tag %s after the upgrade, want the current build's %s (older build: %s)", dir, n, p.Tag, tag, oldTags[n])
		}
	}
	for n := range after.progs {
		if _, ok := curTags[n]; !ok {
			t.Errorf("%s/progs/%s: left over after the upgrade", dir, n)
		}
	}
	for pin, b := range before.links {
		a, ok := after.links[pin]
		if !ok {
			t.Errorf("link %s is gone after the upgrade (was %v)", pin, b)
			continue
		}
		if a.ID != b.ID {
			t.Errorf("%s: link %d replaced by link %d: detached and attached again, want the same link updated in place", pin, b.ID, a.ID)
		}
		if a.Target != b.Target || a.Attach != b.Attach {
			t.Errorf("%s: moved from %s %s to %s %s", pin, b.Target, b.Attach, a.Target, a.Attach)
		}
		if a.Prog != b.Prog {
			t.Errorf("%s: ran %s, now runs %s", pin, b.Prog, a.Prog)
		}
		if !a.TCX {
			continue // the socket programs' upgrade: TestUpgradeInPlace
		}
		if a.ProgID == b.ProgID {
			t.Errorf("%s: still runs program id %d (tag %s): not upgraded", pin, a.ProgID, a.Tag)
		}
		if a.Tag != curTags[a.Prog] {
			t.Errorf("%s: runs %s with tag %s, want the current build's %s (older build: %s): not upgraded in place", pin, a.Prog, a.Tag, curTags[a.Prog], oldTags[a.Prog])
		}
		if p, ok := after.progs[a.Prog]; ok && a.ProgID != p.ID {
			t.Errorf("%s: runs program id %d, not the %s pinned in progs (id %d)", pin, a.ProgID, a.Prog, p.ID)
		}
	}
	for pin, a := range after.links {
		if _, ok := before.links[pin]; !ok {
			t.Errorf("link %s appeared during the upgrade: %v", pin, a)
		}
	}
	for _, h := range hooks {
		if !sameLinkIDs(before.kernel[h], after.kernel[h]) {
			t.Errorf("%s: TCX links %v before the upgrade, %v after", h, before.kernel[h], after.kernel[h])
			continue
		}
		// One revision per link update, none more: no link was detached
		// and attached again, not even for a moment.
		updated := 0
		for i, e := range after.kernel[h] {
			if e.Prog != before.kernel[h][i].Prog {
				updated++
			}
		}
		if d := after.rev[h] - before.rev[h]; d != uint64(updated) {
			t.Errorf("%s: revision %d before the upgrade, %d after: %d changes to the chain for %d link updates", h, before.rev[h], after.rev[h], d, updated)
		}
	}
	samples.check(t, before, after)

	// Traffic: nothing lost or refused, before, during and after.
	var total int64
	for _, f := range flows {
		n := f.summary(upStart, upEnd)
		t.Logf("%s: %d exchanges before, %d during (longest pause between echoes while Up ran: %v, ending %v after Up started), %d after the upgrade",
			f.name, n.before, n.during, n.maxGap.Round(time.Microsecond), n.maxGapAt.Round(time.Millisecond), n.after)
		if f.failed.Load() > 0 {
			t.Errorf("%s: %d of %d exchanges failed: %v", f.name, f.failed.Load(), f.sent.Load(), f.errs())
		}
		if n.before == 0 || n.during == 0 || n.after == 0 {
			t.Errorf("%s: %d exchanges before, %d during, %d after the upgrade: want traffic in each", f.name, n.before, n.during, n.after)
		}
		total += f.sent.Load()
	}
	// Every datagram went through the TC programs both ways, nothing
	// l3iso counts was dropped, and the kernel forwarded nothing.
	for _, id := range []uint32{k.ID, 0} {
		for c, v := range cnt1[id] {
			d := v - cnt0[id][c]
			if d != 0 && (strings.Contains(c, "drop") || strings.Contains(c, "denied") || strings.Contains(c, "lost")) {
				t.Errorf("counter %s of %s went up by %d during the traffic", c, who(id), d)
			}
		}
	}
	if t.Failed() {
		return
	}
	for _, c := range []string{"tc_redirected_in", "tc_redirected_out"} {
		if d := cnt1[k.ID][c] - cnt0[k.ID][c]; d != uint64(total) {
			t.Errorf("counter %s of the container went up by %d, want %d (one per datagram): some bypassed the TC programs", c, d, total)
		}
	}
	if fwd1 != fwd0 {
		t.Errorf("the host forwarded %d IPv4 and %d IPv6 packets during the traffic: some bypassed l3_tc_veth", fwd1[0]-fwd0[0], fwd1[1]-fwd0[1])
	}

	// The rest of `l3iso up` (reconcile) finds nothing left to do, and a
	// second up with the same binary changes nothing.
	err = inNetns(hostNS, func() error {
		c, err := control.FromState(st)
		if err != nil {
			return err
		}
		st = nil
		return c.Close()
	})
	if err != nil {
		t.Fatalf("up with the current binary (reconcile): %v", err)
	}
	if again := snapshot(t, dir, hostNS, hooks); !again.same(after) {
		again.log(t, "after reconcile")
		t.Errorf("reconcile after the upgrade changed links")
	}
	err = inNetns(hostNS, func() error {
		st, changed, err := loader.Up(opts)
		if err != nil {
			return err
		}
		st.Close()
		if changed {
			return errors.New("changed=true, want false")
		}
		return nil
	})
	if err != nil {
		t.Errorf("repeated up: %v", err)
	}
}

// inNetns runs fn on a new OS thread inside the network namespace at path.
// The thread is never unlocked: it ends with its goroutine, so nothing else
// ever runs in that namespace by accident. l3iso acts on the namespace of
// the calling thread (TCX attach by ifindex, lo's sysctls, rtnetlink,
// host-side veths). A panic in fn is returned as an error, so the test's
// cleanups still run.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic in netns %s: %v\n%s", path, r, debug.Stack())
			}
		}()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func who(id uint32) string {
	if id == 0 {
		return "the host"
	}
	return "the container"
}

// olderTCSpec is the "older binary" of the TC programs: the L3ISO_VARIANT
// build (loader.TCVariantSpec). Every program must differ from the current
// build, or its link would have nothing to be upgraded to.
func olderTCSpec() (*ebpf.CollectionSpec, error) {
	old, err := loader.TCVariantSpec()
	if err != nil {
		return nil, err
	}
	cur, err := loader.TCSpec()
	if err != nil {
		return nil, err
	}
	for name, p := range old.Programs {
		if c, ok := cur.Programs[name]; ok && p.Instructions.String() == c.Instructions.String() {
			return nil, fmt.Errorf("loader.TCVariantSpec leaves %s identical to the current build: make the L3ISO_VARIANT change in a helper it calls (bpf/tc.c)", name)
		}
	}
	return old, nil
}

// programTags loads spec's programs against the maps pinned under dir, as
// Up does, and returns each one's kernel tag.
func programTags(dir string, spec *ebpf.CollectionSpec) (map[string]string, error) {
	set, err := maps.OpenPinned(filepath.Join(dir, "maps"))
	if err != nil {
		return nil, err
	}
	defer set.Close()
	coll, err := ebpf.NewCollectionWithOptions(spec.Copy(), ebpf.CollectionOptions{MapReplacements: set.Replacements()})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	tags := map[string]string{}
	for n, p := range coll.Programs {
		info, err := p.Info()
		if err != nil {
			return nil, err
		}
		tags[n] = info.Tag
	}
	return tags, nil
}

// pinnedLink is one link pinned under <bpffs>/links.
type pinnedLink struct {
	Pin    string
	ID     link.ID
	TCX    bool
	Target string // cgroup id or ifindex
	Attach ebpf.AttachType
	ProgID ebpf.ProgramID
	Prog   string
	Tag    string
}

func (l pinnedLink) String() string {
	return fmt.Sprintf("%s: link %d (%s, %s) runs %s id %d tag %s", l.Pin, l.ID, l.Target, l.Attach, l.Prog, l.ProgID, l.Tag)
}

// pinnedProg is one TC program pinned under <bpffs>/progs.
type pinnedProg struct {
	ID  ebpf.ProgramID
	Tag string
}

// tcxHook is the TCX ingress or egress of one interface of the host netns.
type tcxHook struct {
	If     string
	Index  int
	Attach ebpf.AttachType
}

func (h tcxHook) String() string {
	if h.Attach == ebpf.AttachTCXEgress {
		return h.If + " egress"
	}
	return h.If + " ingress"
}

// tcxEntry is one program in a TCX chain, as BPF_PROG_QUERY reports it.
type tcxEntry struct {
	Link link.ID
	Prog ebpf.ProgramID
}

// tcxState is what l3iso pinned and what the kernel runs.
type tcxState struct {
	links  map[string]pinnedLink // by pin name
	progs  map[string]pinnedProg // by program name
	kernel map[tcxHook][]tcxEntry
	// rev is each hook's revision (bpf_mprog): the kernel bumps it by one
	// for every attach, detach and link update on the hook.
	rev   map[tcxHook]uint64
	names map[ebpf.ProgramID]string
}

// snapshot reads every pinned link and TC program under dir and queries
// the kernel's TCX chains of hooks (in the host netns), and checks that
// the two agree: every program on those hooks runs through a link l3iso
// pinned, and every pinned TCX link is on one of them.
func snapshot(t *testing.T, dir, hostNS string, hooks []tcxHook) *tcxState {
	t.Helper()
	s := &tcxState{links: map[string]pinnedLink{}, progs: map[string]pinnedProg{}, names: map[ebpf.ProgramID]string{}}
	entries, err := os.ReadDir(filepath.Join(dir, "links"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "links", e.Name()), nil)
		if err != nil {
			t.Fatalf("open pinned link %s: %v", e.Name(), err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatalf("pinned link %s: %v", e.Name(), err)
		}
		pl := pinnedLink{Pin: e.Name(), ID: info.ID, ProgID: info.Program}
		if tcx := info.TCX(); tcx != nil {
			pl.TCX, pl.Target, pl.Attach = true, "ifindex "+strconv.Itoa(int(tcx.Ifindex)), ebpf.AttachType(tcx.AttachType)
		} else if cg := info.Cgroup(); cg != nil {
			pl.Target, pl.Attach = "cgroup "+strconv.FormatUint(cg.CgroupId, 10), ebpf.AttachType(cg.AttachType)
		}
		if pl.Prog, pl.Tag, err = progNameTag(info.Program); err != nil {
			t.Fatalf("program of pinned link %s: %v", e.Name(), err)
		}
		s.links[e.Name()] = pl
	}
	entries, err = os.ReadDir(filepath.Join(dir, "progs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "progs", e.Name()), nil)
		if err != nil {
			t.Fatalf("open pinned program %s: %v", e.Name(), err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatalf("pinned program %s: %v", e.Name(), err)
		}
		id, _ := info.ID()
		s.progs[e.Name()] = pinnedProg{ID: id, Tag: info.Tag}
	}
	if err := inNetns(hostNS, func() error {
		var err error
		s.kernel, s.rev, err = queryTCX(hooks)
		return err
	}); err != nil {
		t.Fatal(err)
	}

	pinned := map[link.ID]pinnedLink{}
	for _, l := range s.links {
		if l.TCX {
			pinned[l.ID] = l
		}
	}
	for _, h := range hooks {
		for _, e := range s.kernel[h] {
			l, ok := pinned[e.Link]
			if !ok {
				t.Fatalf("%s runs program %d through link %d, which is not pinned in %s/links", h, e.Prog, e.Link, dir)
			}
			if l.Target != "ifindex "+strconv.Itoa(h.Index) || l.Attach != h.Attach || l.ProgID != e.Prog {
				t.Fatalf("%s runs program %d through link %d, but the pin says %v", h, e.Prog, e.Link, l)
			}
			s.names[e.Prog] = l.Prog
			delete(pinned, e.Link)
		}
	}
	for _, l := range pinned {
		t.Fatalf("pinned TCX link %v is on none of %v", l, hooks)
	}
	return s
}

func progNameTag(id ebpf.ProgramID) (name, tag string, err error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", "", err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", "", err
	}
	return info.Name, info.Tag, nil
}

// queryTCX lists the programs of each hook in the order they run, and the
// hooks' revisions. Call it in the host netns.
func queryTCX(hooks []tcxHook) (map[tcxHook][]tcxEntry, map[tcxHook]uint64, error) {
	out, rev := map[tcxHook][]tcxEntry{}, map[tcxHook]uint64{}
	for _, h := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: h.Index, Attach: h.Attach})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", h, err)
		}
		if !res.HaveLinkInfo() {
			return nil, nil, fmt.Errorf("%s: the kernel reports no TCX links (revision 0)", h)
		}
		rev[h] = res.Revision
		for _, p := range res.Programs {
			id, _ := p.LinkID()
			out[h] = append(out[h], tcxEntry{Link: id, Prog: p.ID})
		}
	}
	return out, rev, nil
}

func (s *tcxState) runs(h tcxHook, prog string) bool {
	for _, e := range s.kernel[h] {
		if s.names[e.Prog] == prog {
			return true
		}
	}
	return false
}

func (s *tcxState) log(t *testing.T, when string) {
	t.Helper()
	var b strings.Builder
	for _, pin := range keys(s.links) {
		fmt.Fprintf(&b, "\n  %v", s.links[pin])
	}
	var hooks []tcxHook
	for h := range s.kernel {
		hooks = append(hooks, h)
	}
	sort.Slice(hooks, func(i, j int) bool { return hooks[i].String() < hooks[j].String() })
	for _, h := range hooks {
		fmt.Fprintf(&b, "\n  %s (revision %d):", h, s.rev[h])
		for _, e := range s.kernel[h] {
			fmt.Fprintf(&b, " %s (link %d, prog %d)", s.names[e.Prog], e.Link, e.Prog)
		}
	}
	t.Logf("%s:%s", when, b.String())
}

func (s *tcxState) same(o *tcxState) bool {
	if len(s.links) != len(o.links) || len(s.kernel) != len(o.kernel) {
		return false
	}
	for pin, l := range s.links {
		if o.links[pin] != l {
			return false
		}
	}
	for h, es := range s.kernel {
		if fmt.Sprint(es) != fmt.Sprint(o.kernel[h]) || s.rev[h] != o.rev[h] {
			return false
		}
	}
	return true
}

func sameLinkIDs(a, b []tcxEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Link != b[i].Link {
			return false
		}
	}
	return true
}

// tcxSampler queries the TCX chains of the hooks over and over while Up
// runs: each chain must always hold the same links, in the same order, each
// running its old or its new program.
type tcxSampler struct {
	done   chan struct{}
	result chan *tcxSamples
}

type tcxSamples struct {
	n      int
	nbad   int                                 // samples that differ
	bad    []string                            // the first few of them
	seen   map[link.ID]map[ebpf.ProgramID]bool // programs seen per link
	err    error
	before *tcxState
}

func startSampler(hostNS string, hooks []tcxHook, before *tcxState) *tcxSampler {
	s := &tcxSampler{done: make(chan struct{}), result: make(chan *tcxSamples, 1)}
	res := &tcxSamples{seen: map[link.ID]map[ebpf.ProgramID]bool{}, before: before}
	ready := make(chan struct{})
	var once sync.Once
	go func() {
		res.err = inNetns(hostNS, func() error {
			once.Do(func() { close(ready) })
			for {
				select {
				case <-s.done:
					return nil
				default:
				}
				cur, _, err := queryTCX(hooks)
				if err != nil {
					return err
				}
				res.n++
				for _, h := range hooks {
					if !sameLinkIDs(before.kernel[h], cur[h]) {
						if res.nbad++; len(res.bad) < 5 {
							res.bad = append(res.bad, fmt.Sprintf("%s: %v", h, cur[h]))
						}
					}
					for _, e := range cur[h] {
						if res.seen[e.Link] == nil {
							res.seen[e.Link] = map[ebpf.ProgramID]bool{}
						}
						res.seen[e.Link][e.Prog] = true
					}
				}
			}
		})
		once.Do(func() { close(ready) })
		s.result <- res
	}()
	<-ready
	return s
}

func (s *tcxSampler) stop() *tcxSamples {
	close(s.done)
	return <-s.result
}

func (r *tcxSamples) check(t *testing.T, before, after *tcxState) {
	t.Helper()
	if r.err != nil {
		t.Errorf("sampling the TCX chains while Up ran: %v", r.err)
		return
	}
	t.Logf("the kernel's TCX chains, sampled %d times while Up ran: %d with a link missing or added", r.n, r.nbad)
	if r.n == 0 {
		t.Errorf("the TCX chains were never sampled while Up ran")
	}
	for _, b := range r.bad {
		t.Errorf("while Up ran, a TCX chain did not hold exactly its links of before: %s", b)
	}
	progs := map[link.ID][2]ebpf.ProgramID{}
	for _, l := range before.links {
		if l.TCX {
			p := progs[l.ID]
			p[0] = l.ProgID
			progs[l.ID] = p
		}
	}
	for _, l := range after.links {
		if l.TCX {
			p := progs[l.ID]
			p[1] = l.ProgID
			progs[l.ID] = p
		}
	}
	for id, seen := range r.seen {
		for p := range seen {
			if p != progs[id][0] && p != progs[id][1] {
				t.Errorf("while Up ran, link %d ran program %d: neither its old (%d) nor its new one (%d)", id, p, progs[id][0], progs[id][1])
			}
		}
	}
}

// startEchoServer runs the echo server in the container's cgroup and
// netns (a container process: l3iso's socket programs apply to it) and
// waits until it listens.
func startEchoServer(t *testing.T, o sockprobe.Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := sockprobe.Command(ctx, t, o, "python3", "-u", "-c", tcuEchoServer, tcuCont4.String(), tcuCont6.String(), strconv.Itoa(tcuPort))
	out := &readyWriter{ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start the echo server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})
	select {
	case <-out.ready:
	case err := <-exited:
		exited <- err
		t.Fatalf("the echo server exited: %v: %s", err, out)
	case <-time.After(10 * time.Second):
		t.Fatalf("the echo server did not start within 10s: %s", out)
	}
}

type readyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "ready\n") {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.TrimSpace(w.buf.String())
}

// udpFlow is a lock-step UDP exchange with the container's echo server from
// a socket in the outside netns: one datagram in flight at a time, so
// nothing queues anywhere, and a datagram lost anywhere is an exchange
// without its echo.
type udpFlow struct {
	name string
	fd   int
	seq  uint64

	sent, ok, failed atomic.Int64
	mu               sync.Mutex
	errList          []string
	times            [][2]time.Time // sent, echoed: the successful exchanges
}

func newUDPFlow(t *testing.T, outNS, name string, dst netip.AddrPort) *udpFlow {
	t.Helper()
	f := &udpFlow{name: name, fd: -1}
	err := inNetns(outNS, func() error {
		var fam int
		var sa unix.Sockaddr
		if dst.Addr().Is4() {
			fam, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		} else {
			fam, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
		}
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f.fd = fd // the socket stays in the outside netns
		tv := unix.NsecToTimeval(tcuEchoTimeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Connect(fd, sa)
	})
	if f.fd >= 0 {
		t.Cleanup(func() { unix.Close(f.fd) })
	}
	if err != nil {
		t.Fatalf("%s client to %s: %v", name, dst, err)
	}
	return f
}

// exchange sends one datagram and waits for its echo. An echo of an
// earlier datagram (one that came back after its exchange gave up, already
// counted as failed) is skipped.
func (f *udpFlow) exchange() error {
	f.seq++
	var msg, buf [16]byte
	binary.BigEndian.PutUint64(msg[:8], f.seq)
	copy(msg[8:], "l3iso-tc")
	if _, err := unix.Write(f.fd, msg[:]); err != nil {
		return fmt.Errorf("datagram %d: send: %w", f.seq, err)
	}
	for {
		n, err := unix.Read(f.fd, buf[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return fmt.Errorf("datagram %d: no echo within %v", f.seq, tcuEchoTimeout)
		case err != nil:
			return fmt.Errorf("datagram %d: %w", f.seq, err) // ECONNREFUSED: an ICMP error came back
		case n == len(msg) && buf == msg:
			return nil
		case n == len(msg) && binary.BigEndian.Uint64(buf[:8]) < f.seq:
			continue // a late echo
		default:
			return fmt.Errorf("datagram %d: got %q back", f.seq, buf[:n])
		}
	}
}

// warmUp exchanges until one echo comes back (neighbour resolution, the
// echo server's first datagram); nothing of it is counted.
func (f *udpFlow) warmUp(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := f.exchange()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run exchanges until ctx ends, recording each exchange; it gives up after
// a few failures.
func (f *udpFlow) run(ctx context.Context) {
	for ctx.Err() == nil && f.failed.Load() < 5 {
		start := time.Now()
		f.sent.Add(1)
		err := f.exchange()
		end := time.Now()
		f.mu.Lock()
		if err != nil {
			f.errList = append(f.errList, fmt.Sprintf("%v (sent %s)", err, start.Format("15:04:05.000000")))
			f.failed.Add(1)
		} else {
			f.times = append(f.times, [2]time.Time{start, end})
			f.ok.Add(1)
		}
		f.mu.Unlock()
	}
}

func (f *udpFlow) errs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.errList...)
}

type flowSummary struct {
	before, during, after int
	maxGap                time.Duration
	maxGapAt              time.Duration // when the longest pause ended, from upStart
}

// summary counts the exchanges echoed before Up started, sent and echoed
// while it ran, and sent after it returned, and the longest time between
// two echoes while it ran.
func (f *udpFlow) summary(upStart, upEnd time.Time) flowSummary {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s flowSummary
	last := upStart
	for _, x := range f.times {
		switch {
		case x[1].Before(upStart):
			s.before++
		case !x[0].Before(upStart) && !x[1].After(upEnd):
			s.during++
		case x[0].After(upEnd):
			s.after++
		}
		if !x[1].Before(upStart) && !x[1].After(upEnd) {
			if g := x[1].Sub(last); g > s.maxGap {
				s.maxGap, s.maxGapAt = g, x[1].Sub(upStart)
			}
			last = x[1]
		}
	}
	return s
}

// readCounters reads the counters of the container and of the host (id 0).
func readCounters(t *testing.T, set *maps.Set, id uint32) map[uint32]maps.Counters {
	t.Helper()
	out := map[uint32]maps.Counters{}
	for _, i := range []uint32{id, 0} {
		c, err := set.ReadCounters(i)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = c
	}
	return out
}

// forwarded returns the host netns's IPv4 and IPv6 forwarded-packet
// counters (/proc/net/snmp ForwDatagrams, /proc/net/snmp6
// Ip6OutForwDatagrams).
func forwarded(t *testing.T, hostNS string) [2]uint64 {
	t.Helper()
	var out [2]uint64
	err := inNetns(hostNS, func() error {
		// /proc/thread-self: /proc/net is the main thread's namespace.
		var all []byte
		for _, f := range []string{"snmp", "snmp6"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return err
			}
			all = append(all, b...)
		}
		c := netstat.Parse(all)
		var ok4, ok6 bool
		out[0], ok4 = c["Ip:ForwDatagrams"]
		out[1], ok6 = c["Ip6OutForwDatagrams"]
		if !ok4 || !ok6 {
			return fmt.Errorf("no Ip: ForwDatagrams or Ip6OutForwDatagrams in /proc/net/snmp, snmp6")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
