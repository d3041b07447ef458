package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/netstat"
	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/veth"
)

// commandTimeout bounds one setup or teardown command (an l3iso apply of
// 10,000 containers included).
const commandTimeout = 5 * time.Minute

// world is one benchmark run's private environment: a cgroup subtree, a
// bpffs mount, a temporary directory, and the network namespaces and l3iso
// installations made in them. Everything made is recorded on an undo stack
// the moment it exists; teardown runs it in reverse, also after a failure
// or an interrupt.
type world struct {
	bin       string // the run's copy of the l3iso binary
	worker    string // the run's copy of the worker binary (l3iso-bench)
	id        string // random, in every name this run makes
	top       string // the run's cgroup subtree
	unmanaged string // a cgroup below top that no l3iso installation covers
	mnt       string // the private bpffs mount
	tmp       string // policies

	installs []*install
	floor    *DoNothing // hook_floor's programs
	nice     int        // the workers' nice value (Options.Nice)

	mu   sync.Mutex
	undo []undoStep
}

type undoStep struct {
	what string
	fn   func() error
}

// doNothingFloor makes the place of the hook_floor configuration: a
// network namespace of its own (l3b-ID-fl) and a cgroup below top, with a
// do-nothing program at each of l3iso's hooks (AttachDoNothing): the
// cgroup's socket hooks, and the namespace's sk_lookup and lo's TCX
// ingress. It returns the cgroup and the namespace.
func (w *world) doNothingFloor() (cg, ns string, err error) {
	cg = filepath.Join(w.top, "floor")
	if err := cgroup.Create(cg); err != nil {
		return "", "", err
	}
	if ns, err = w.newNetns("fl"); err != nil {
		return "", "", err
	}
	var d *DoNothing
	err = inNetns(ns, func() (err error) {
		d, err = AttachDoNothing(cg)
		return err
	})
	if err != nil {
		return "", "", err
	}
	w.floor = d
	w.onTeardown("detach the do-nothing programs", d.Close)
	return cg, ns, nil
}

// onTeardown records fn to run at teardown (last recorded, first run).
func (w *world) onTeardown(what string, fn func() error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.undo = append(w.undo, undoStep{what, fn})
}

// teardown runs the undo stack and returns every failure; it goes on after
// one, so a failed step leaves as little as possible behind.
func (w *world) teardown() error {
	w.mu.Lock()
	steps := w.undo
	w.undo = nil
	w.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("teardown: %s: %w", steps[i].what, err))
		}
	}
	return errors.Join(errs...)
}

// newWorld makes the cgroup subtree, the bpffs mount and the temp dir,
// with copies of the l3iso binary bin and of the worker binary.
func newWorld(bin, worker, id string) (*world, error) {
	if id == "" {
		b := make([]byte, 3)
		rand.Read(b)
		id = hex.EncodeToString(b)
	}
	w := &world{bin: bin, id: "b" + id}
	mount, err := cgroup.Mount()
	if err != nil {
		return w, err
	}
	w.top = filepath.Join(mount, "l3iso-bench-"+w.id)
	if err := cgroup.Create(w.top); err != nil {
		return w, err
	}
	w.onTeardown("remove cgroup "+w.top, func() error { return cgroup.Remove(w.top) })
	w.unmanaged = filepath.Join(w.top, "unmanaged")
	if err := cgroup.Create(w.unmanaged); err != nil {
		return w, err
	}
	if w.tmp, err = os.MkdirTemp("", "l3iso-bench-"); err != nil {
		return w, err
	}
	w.onTeardown("remove "+w.tmp, func() error { return os.RemoveAll(w.tmp) })
	// The run's own copies of the binaries: every worker and every l3iso
	// command of the run is then the same program, even when bin/l3iso is
	// rebuilt while the run goes on (a make build elsewhere).
	if w.bin, err = copyBinary(bin, filepath.Join(w.tmp, "l3iso")); err != nil {
		return w, err
	}
	if w.worker, err = copyBinary(worker, filepath.Join(w.tmp, "worker")); err != nil {
		return w, err
	}
	w.mnt = filepath.Join(w.tmp, "bpffs")
	if err := os.Mkdir(w.mnt, 0o700); err != nil {
		return w, err
	}
	if err := unix.Mount("bpf", w.mnt, "bpf", 0, "mode=0700"); err != nil {
		return w, fmt.Errorf("mount a private bpffs at %s: %w", w.mnt, err)
	}
	w.onTeardown("unmount "+w.mnt, func() error { return unix.Unmount(w.mnt, unix.MNT_DETACH) })
	return w, nil
}

// copyBinary copies the executable from to to.
func copyBinary(from, to string) (string, error) {
	src, err := os.Open(from)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", from, err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", from, err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return to, nil
}

// run runs a setup or teardown command in network namespace netns ("":
// the benchmark's own) and returns its combined output and how long it
// took, from the fork to the exit.
func run(ctx context.Context, netns, name string, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd, release, err := command(ctx, "", name, args...)
	if err != nil {
		return "", 0, err
	}
	defer release()
	// The run's l3iso commands tell the machine's syslog nothing: their
	// changes are the benchmark's, in its own namespaces (their audit log
	// is in the run's directory, see install.l3iso).
	cmd.Env = append(os.Environ(), "L3ISO_SYSLOG=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err = startIn(netns, cmd); err == nil {
		err = cmd.Wait()
	}
	d := time.Since(start)
	if err != nil {
		where := ""
		if netns != "" {
			where = " (in netns " + filepath.Base(netns) + ")"
		}
		// %v, not %w: an *exec.ExitError in the chain would make a
		// command line exit with the child's status and print nothing.
		return out.String(), d, fmt.Errorf("%s %s%s: %v: %s", name, strings.Join(args, " "), where, err, strings.TrimSpace(out.String()))
	}
	return out.String(), d, nil
}

// newNetns creates the named network namespace l3b-ID-TAG with lo up and
// returns its path.
func (w *world) newNetns(tag string) (string, error) {
	path, err := newNamedNetns("l3b-" + w.id + "-" + tag)
	if path != "" {
		w.onTeardown("delete netns "+filepath.Base(path), func() error { return deleteNamedNetns(path) })
	}
	return path, err
}

// Addresses of the netns installations. Each has its own host and outside
// namespace, so all of them use the same ones.
var (
	hostUp4   = netip.MustParseAddr("192.0.2.1")
	outside4  = netip.MustParseAddr("192.0.2.2")
	netnsBase = netip.MustParseAddr("10.78.0.0") // container i: 10.78.0.0 + i
	sharedBas = netip.MustParseAddr("10.80.0.0") // container i: 10.80.0.0 + i
)

// The bcast_fanout installations: container i owns 10.78.0.i/24 (netns or
// shared mode), so 10.78.0.255 is its subnet's directed broadcast address;
// containers 1 and N listen on the wildcard address, port fanoutPort.
const (
	// FanoutContainers is the default number of containers of each
	// bcast_fanout installation: the 100.
	FanoutContainers = 100
	fanoutListeners  = 2
	fanoutPort       = 7400
	fanoutPrefix     = 24
)

var (
	fanoutBase  = netip.MustParseAddr("10.78.0.0")
	fanoutBcast = netip.MustParseAddr("10.78.0.255")
)

// install is one l3iso installation: `l3iso up` in its own "host"
// namespace, attached at its own cgroup below the run's, pinned in its own
// directory of the private bpffs. netns installations also have an
// "outside" namespace joined to the host by the veth uplink up0.
type install struct {
	w          *world
	tag        string
	host       string // netns path
	outside    string // netns path; "" for shared installations
	cgroot     string
	bpffs      string
	first      string // the container the workloads use
	containers int
	up         time.Duration
	letter     byte   // see namePrefix
	mode       string // of the containers: "shared" or "netns"; "" = netns if there is an uplink
	fanout     bool   // a bcast_fanout installation: addresses 10.78.0.i/24

	barePeerProg *ebpf.Program // the bare_peer prototype's program, if attached here (bpf_stats)
}

// l3iso runs the l3iso binary with this installation's --bpffs in its host
// namespace.
func (in *install) l3iso(ctx context.Context, args ...string) (time.Duration, error) {
	// Its audit log stays in the run's own directory.
	_, d, err := run(ctx, in.host, in.w.bin, append([]string{"--bpffs", in.bpffs, "--state-dir", filepath.Join(in.w.tmp, "state")}, args...)...)
	return d, err
}

// newInstall brings l3iso up in a new host namespace; uplink and delivery
// are "" for a shared-mode installation.
func (w *world) newInstall(ctx context.Context, tag, delivery string, conntrack bool) (*install, error) {
	in := &install{w: w, tag: tag, cgroot: filepath.Join(w.top, tag), bpffs: filepath.Join(w.mnt, tag), letter: 'a' + byte(len(w.installs))}
	w.installs = append(w.installs, in)
	var err error
	if in.host, err = w.newNetns(tag + "h"); err != nil {
		return nil, err
	}
	if err := cgroup.Create(in.cgroot); err != nil {
		return nil, err
	}
	up := []string{"up", "--cgroup-root", in.cgroot}
	if delivery != "" {
		if in.outside, err = w.newNetns(tag + "o"); err != nil {
			return nil, err
		}
		if err := joinUplink(in.host, in.outside); err != nil {
			return nil, err
		}
		up = append(up, "--uplink", "up0", "--delivery", delivery)
	}
	w.onTeardown("l3iso down ("+tag+")", func() error { return in.down() })
	if in.up, err = in.l3iso(ctx, up...); err != nil {
		return nil, err
	}
	if conntrack {
		if err := in.conntrack(ctx); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// conntrackRules make the host namespace of bridge_ct a Docker-like host:
// netfilter with connection tracking on the forward path. br_netfilter is
// built into this kernel and on (bridge-nf-call-iptables=1) in every new
// namespace, so the bridge's frames go through the IP hooks too.
const conntrackRules = `table inet l3bench {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related counter accept
		ct state new counter accept
	}
}
`

func (in *install) conntrack(ctx context.Context) error {
	f := filepath.Join(in.w.tmp, in.tag+".nft")
	if err := os.WriteFile(f, []byte(conntrackRules), 0o644); err != nil {
		return err
	}
	_, _, err := run(ctx, in.host, "nft", "-f", f)
	return err
}

// conntracked is how many packets the conntrack rules counted.
func (in *install) conntracked(ctx context.Context) (uint64, error) {
	out, _, err := run(ctx, in.host, "nft", "list", "table", "inet", "l3bench")
	if err != nil {
		return 0, err
	}
	var total uint64
	f := strings.Fields(out)
	for i := 0; i+2 < len(f); i++ {
		if f[i] == "counter" && f[i+1] == "packets" {
			var n uint64
			fmt.Sscan(f[i+2], &n)
			total += n
		}
	}
	return total, nil
}

// down removes the installation's containers and pins; container
// namespaces `down` missed are removed as well, and the failure reported.
func (in *install) down() error {
	if _, err := os.Stat(in.bpffs); errors.Is(err, os.ErrNotExist) {
		return nil // never came up
	}
	_, err := in.l3iso(context.Background(), "down")
	if in.outside != "" {
		prefix := veth.NetnsName(in.key(in.namePrefix()))
		entries, _ := os.ReadDir(veth.NetnsDir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) {
				p := filepath.Join(veth.NetnsDir, e.Name())
				unix.Unmount(p, unix.MNT_DETACH)
				os.Remove(p)
				err = errors.Join(err, fmt.Errorf("down left network namespace %s (removed now)", e.Name()))
			}
		}
	}
	return err
}

// containerName is the name of container i (1-based) of the installation.
// netns containers carry the run's id, so that the tests can find what a
// run left (their namespace is /run/netns/l3iso-TAG_NAME, TAG being the
// installation's name tag: pkg/veth.Key); their host-side veths have
// hashed names ("l3i-TAG_" and 30 bits of the key's hash).
func (in *install) containerName(i int) string {
	if in.outside == "" {
		return fmt.Sprintf("c%05d", i)
	}
	return fmt.Sprintf("%s%04d", in.namePrefix(), i)
}

// key is netns container name's key in pkg/veth: l3iso names its
// namespace and veth after it and the installation's name tag.
func (in *install) key(name string) string { return veth.Key(loader.NameTag(in.bpffs), name) }

// namePrefix starts the names of the installation's netns containers:
// 4 hex digits of the run's id and one letter per installation.
func (in *install) namePrefix() string {
	return in.w.id[1:5] + string(in.letter)
}

func nthAddr(base netip.Addr, i int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// containerAddr is container i's one address.
func (in *install) containerAddr(i int) netip.Addr {
	switch {
	case in.fanout:
		return nthAddr(fanoutBase, i)
	case in.outside == "":
		return nthAddr(sharedBas, i)
	}
	return nthAddr(netnsBase, i)
}

// addrSpec is container i's address as the policy gives it: with the
// subnet's prefix length in the bcast_fanout installations, so the
// subnet's broadcast address is theirs.
func (in *install) addrSpec(i int) string {
	if in.fanout {
		return fmt.Sprintf("%s/%d", in.containerAddr(i), fanoutPrefix)
	}
	return in.containerAddr(i).String()
}

// containerMode is the mode of the installation's containers.
func (in *install) containerMode() string {
	switch {
	case in.mode != "":
		return in.mode
	case in.outside == "":
		return "shared"
	}
	return "netns"
}

// policy writes a policy of n containers (mode shared or netns) and
// returns its path.
func (in *install) policy(n int, mode string) (string, error) {
	var b bytes.Buffer
	b.WriteString("# generated by l3iso-bench\ncontainers:\n")
	if n == 0 {
		b.WriteString("  {}\n")
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  %s:\n    mode: %s\n    addresses: [%s]\n", in.containerName(i), mode, in.addrSpec(i))
	}
	p := filepath.Join(in.w.tmp, fmt.Sprintf("%s-%s-%d.yaml", in.tag, mode, n))
	return p, os.WriteFile(p, b.Bytes(), 0o644)
}

// populate registers n containers with one `l3iso apply -f`.
func (in *install) populate(ctx context.Context, n int) (time.Duration, error) {
	p, err := in.policy(n, in.containerMode())
	if err != nil {
		return 0, err
	}
	in.first, in.containers = in.containerName(1), n
	if n == 0 {
		return in.l3iso(ctx, "apply", "-f", p, "--allow-empty") // refused without
	}
	return in.l3iso(ctx, "apply", "-f", p)
}

// server and client are where the workload's two ends run in this
// installation. Shared: both in its first container, over its own
// address. netns: the server in the first container, the client on the
// outside host (in no l3iso cgroup).
func (in *install) server(cpu int) Place {
	if in.outside == "" {
		return Place{filepath.Join(in.cgroot, "l3iso", in.first), in.host, in.containerAddr(1), cpu}
	}
	return Place{filepath.Join(in.cgroot, "l3iso", in.first), veth.NetnsPath(in.key(in.first)), in.containerAddr(1), cpu}
}

func (in *install) client(cpu int) Place {
	if in.outside == "" {
		return Place{filepath.Join(in.cgroot, "l3iso", in.first), in.host, in.containerAddr(1), cpu}
	}
	return Place{in.w.unmanaged, in.outside, in.containerAddr(1), cpu}
}

// listener is where the bcast_fanout listener in container i runs: in its
// cgroup and its network namespace (shared mode: the host's), on the
// wildcard address.
func (in *install) listener(i, cpu int) Place {
	name := in.containerName(i)
	netns := in.host
	if in.containerMode() == "netns" {
		netns = veth.NetnsPath(in.key(name))
	}
	return Place{filepath.Join(in.cgroot, "l3iso", name), netns, netip.IPv4Unspecified(), cpu}
}

// listening are the containers of a bcast_fanout installation that
// listen: the first and the last, so neither end of the bridge's port
// list is favoured.
func (in *install) listening() []int { return []int{1, in.containers} }

// broadcaster is where the bcast_fanout sender runs: the outside host, in
// no l3iso cgroup, sending to the containers' directed broadcast address.
func (in *install) broadcaster(cpu int) Place {
	return Place{in.w.unmanaged, in.outside, fanoutBcast, cpu}
}

// forwardBroadcasts makes the host of a bridge installation forward a
// directed broadcast to the container subnet from the uplink onto the
// bridge, which floods it to every port. Linux does not by default. The
// local table needs the subnet's broadcast route on the bridge — the one
// the kernel adds by itself for a bridge with an address on the subnet, as
// Docker's docker0 has; l3iso's bridge has none. Without it the host routes
// 10.78.0.255 like a unicast address, back out of the uplink. And
// bc_forwarding must be on for "all" and for the receiving interface, up0:
// without it the host takes the datagram itself (the bridge's own setting
// is not consulted). Checked on 6.18. Only this installation's host
// namespace is changed.
func (in *install) forwardBroadcasts() error {
	if err := addBroadcastRoute(in.host, fanoutBcast, veth.BridgeName); err != nil {
		return err
	}
	for _, dev := range []string{"all", "up0"} {
		if err := writeSysctl(in.host, "net/ipv4/conf/"+dev+"/bc_forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}

// counters are the l3iso verdict counters of container name.
func (in *install) counters(ctx context.Context, name string) (map[string]uint64, error) {
	out, _, err := run(ctx, in.host, in.w.bin, "--bpffs", in.bpffs, "stats", name, "-o", "json")
	if err != nil {
		return nil, err
	}
	var all map[string]map[string]uint64
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		return nil, fmt.Errorf("l3iso stats %s -o json: %w", name, err)
	}
	return all[name], nil
}

// udpCounter reads one counter of the Udp lines of /proc/net/snmp in
// netns, e.g. IgnoredMulti: broadcasts and multicasts the stack received
// for a port no socket listens on.
func udpCounter(netns, name string) (uint64, error) {
	out, err := readNetFile(netns, "snmp")
	if err != nil {
		return 0, err
	}
	v, ok := netstat.Parse(out)["Udp:"+name]
	if !ok {
		return 0, fmt.Errorf("no Udp counter %s in /proc/net/snmp of %s", name, netns)
	}
	return v, nil
}

// startWorker starts the run's worker binary in p with the given role;
// teardown stops it (the cgroup removal would kill it anyway).
func (w *world) startWorker(ctx context.Context, what, role string, p Place, env ...string) (*Worker, error) {
	if w.nice != 0 {
		env = append(env, fmt.Sprintf("%s=%d", envNice, w.nice))
	}
	wk, err := StartWorker(ctx, w.worker, what, role, p, env...)
	if err != nil {
		return nil, err
	}
	w.onTeardown("stop "+what, func() error { wk.Stop(); return nil })
	return wk, nil
}
