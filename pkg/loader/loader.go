// Package loader loads l3iso's BPF programs, attaches them once at the
// cgroup v2 root with bpf_links, and pins everything under bpffs.
//
// The pins are the state: a crashed or absent CLI loses nothing, and the
// programs keep enforcing while no l3iso process runs. Layout:
//
//	<bpffs>/maps/<map>     every map (moved into place with one rename)
//	<bpffs>/links/<prog>   one bpf_link per program (keeps it attached)
//
// The directory is flock()ed: shared to read, exclusive to change.
package loader

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/veth"
)

// DefaultBPFFS is where l3iso pins its objects unless told otherwise.
const DefaultBPFFS = "/sys/fs/bpf/l3iso"

// ContainersDir is the cgroup below the cgroup root that holds one cgroup
// per container.
const ContainersDir = "l3iso"

// ErrNotUp says nothing is pinned: `l3iso up` has not run (or `down` did).
var ErrNotUp = errors.New("l3iso is not up")

// Options are what `l3iso up` is told. An installation keeps them in its
// pinned l3_config: `up` without a flag keeps the installation's value
// (the Keep fields), so a bare `l3iso up` repeats the first one.
type Options struct {
	CgroupRoot string // where to attach; "" = the cgroup v2 mount's root
	BPFFS      string // "" = DefaultBPFFS
	Uplink     string // "" = shared-mode addresses live on lo
	Delivery   maps.Delivery
	// ExtraUplinks are interfaces besides Uplink where traffic for the
	// containers arrives: each gets the uplink's TCX programs (HostTC).
	// "" entries are dropped: [""] is none.
	ExtraUplinks []string
	// KeepCgroupRoot, KeepUplink, KeepDelivery and KeepExtraUplinks leave
	// the value of an existing installation as it is (the field then
	// applies only to a new one).
	KeepCgroupRoot, KeepUplink, KeepDelivery, KeepExtraUplinks bool
}

// State is an open installation: its pinned maps, with the lock held.
type State struct {
	Dir    string
	Maps   *maps.Set
	Config maps.Config
	lock   *os.File
	progs  map[string]*ebpf.Program // pinned TC programs opened so far
	// Switched is set by Up when it changed the delivery of a running
	// installation; From is the delivery before.
	Switched bool
	From     maps.Delivery
	// UplinkFrom is the uplink before, when Up changed it ("" is none);
	// UplinkSwitched says it did.
	UplinkFrom     string
	UplinkSwitched bool
	// ExtraFrom are the extra uplinks before, when Up changed them;
	// ExtraSwitched says it did.
	ExtraFrom     []string
	ExtraSwitched bool

	madeDir   bool     // OpenForUp made Dir
	addedMaps []string // maps OpenForUp created for this binary (an upgrade)
	repinned  []string // maps whose pin was missing: pinned again from the programs
	recovered []string // maps whose pin is missing: opened from the programs

	progInfos map[ebpf.ProgramID][2]string // name and tag by id (progInfo)
}

// ContainerCgroup is the cgroup directory of container name.
func (s *State) ContainerCgroup(name string) string {
	return filepath.Join(s.Config.CgroupRoot, ContainersDir, name)
}

// Close releases the maps and the lock.
func (s *State) Close() error {
	if s.Maps != nil {
		s.Maps.Close()
	}
	for _, p := range s.progs {
		p.Close()
	}
	s.progs = nil
	if s.lock != nil {
		s.lock.Close() // drops the flock
	}
	return nil
}

func mapsDir(dir string) string  { return filepath.Join(dir, "maps") }
func linksDir(dir string) string { return filepath.Join(dir, "links") }

// ensureBPFFS makes sure dir's parent is on a bpf filesystem, mounting the
// standard one at /sys/fs/bpf if nothing is mounted there yet.
func ensureBPFFS(dir string) error {
	parent := filepath.Dir(filepath.Clean(dir))
	var st unix.Statfs_t
	if err := unix.Statfs(parent, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if parent == "/sys/fs/bpf" {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w (mount it yourself: mount -t bpf bpf /sys/fs/bpf)", err)
		}
		return nil
	}
	return fmt.Errorf("%s is not on a bpf filesystem: pass --bpffs with a directory below a bpffs mount (mount -t bpf bpf DIR)", parent)
}

func lockDir(dir string, how int) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// Open opens an installation that `up` created. exclusive takes the write
// lock (for commands that change state); otherwise the read lock.
func Open(dir string, exclusive bool) (*State, error) {
	if dir == "" {
		dir = DefaultBPFFS
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	lock, err := lockDir(dir, how)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: nothing is pinned at %s; run `l3iso up` first (or pass the --bpffs that `up` used)", ErrNotUp, dir)
	} else if err != nil {
		return nil, err
	}
	s := &State{Dir: dir, lock: lock}
	if err := recordsLost(dir); err != nil {
		s.Close()
		return nil, err
	}
	// A map whose pin is missing is taken from the programs that use it
	// (Check reports it; up pins it again).
	var found map[string]*ebpf.Map
	s.Maps, err = maps.OpenPinned(mapsDir(dir), func(name string) *ebpf.Map {
		if found == nil {
			found = s.mapsOfPrograms(missingMaps(dir))
		}
		m := found[name]
		if m != nil {
			delete(found, name)
			s.recovered = append(s.recovered, name)
		}
		return m
	})
	for _, m := range found {
		m.Close()
	}
	sort.Strings(s.recovered)
	if err != nil {
		s.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no complete set of maps (%v); run `l3iso up` to finish installing or to repair", ErrNotUp, dir, err)
		}
		return nil, err
	}
	if s.Config, err = s.Maps.Config(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// hostNetnsCookie identifies the calling thread's network namespace.
func hostNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return c, nil
}

// Up installs l3iso, or checks, repairs and upgrades an existing
// installation: OpenForUp, then State.Up. The returned State holds the
// exclusive lock.
func Up(o Options) (st *State, changed bool, err error) {
	if st, err = OpenForUp(o.BPFFS); err != nil {
		return nil, false, err
	}
	if changed, err = st.Up(o); err != nil {
		st.Close()
		return nil, changed, err
	}
	return st, changed, nil
}

// OpenForUp takes the exclusive lock of the installation at dir ("" =
// DefaultBPFFS), making the directory if needed, and opens what is pinned
// there, if anything (Installed): a caller can inspect the installation
// (Check) before State.Up changes it. The only change it makes is a repair:
// it pins again maps whose pins are missing, taken from the programs that
// still use them (a fresh map would split l3iso from its programs); Check
// reports them.
func OpenForUp(dir string) (st *State, err error) {
	if dir == "" {
		dir = DefaultBPFFS
	}
	if err := ensureBPFFS(dir); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	lock, err := lockDir(dir, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	st = &State{Dir: dir, lock: lock, madeDir: errors.Is(statErr, os.ErrNotExist)}
	defer func() {
		if err != nil {
			st.Close()
			st = nil
		}
	}()
	if err := st.repinMaps(); err != nil {
		return st, err
	}
	if _, err := os.Stat(mapsDir(dir)); err != nil {
		return st, nil // nothing installed
	}
	if err := recordsLost(dir); err != nil {
		return st, err
	}
	// Maps a newer l3iso added (an upgrade): create them beside the
	// others; the programs loaded by Up use them.
	if st.addedMaps, err = maps.PinMissing(mapsDir(dir)); err != nil {
		return st, err
	}
	if st.Maps, err = maps.OpenPinned(mapsDir(dir)); err != nil {
		return st, err
	}
	if st.Config, err = st.Maps.Config(); err != nil {
		return st, err
	}
	return st, nil
}

// Installed says whether OpenForUp found an installation.
func (st *State) Installed() bool { return st.Maps != nil }

// Up makes the installation OpenForUp opened exist as o says, or creates
// it. It is idempotent: a second `up` with the same options changes
// nothing (changed is false); with a newer binary it swaps programs in
// place with link.Update, so no bind or connect ever goes unchecked; it
// attaches again links that were detached or unpinned. On a running
// installation it may change the delivery and the uplink (the caller moves
// the containers: the state stays dirty until it has), not the cgroup root.
// On an error, a directory OpenForUp made for nothing is removed.
func (st *State) Up(o Options) (changed bool, err error) {
	defer func() {
		if err != nil && st.madeDir {
			os.Remove(st.Dir) // fails unless empty
		}
	}()
	dir := st.Dir
	mount, err := cgroup.Mount()
	if err != nil {
		return false, err
	}
	installed := st.Installed()
	changed = len(st.addedMaps) > 0
	if installed {
		// What `up` was told before, for the options not given now.
		if o.KeepCgroupRoot {
			o.CgroupRoot = st.Config.CgroupRoot
		}
		if o.KeepUplink {
			o.Uplink = st.Config.Uplink
		}
		if o.KeepDelivery {
			o.Delivery = st.Config.Delivery
		}
	}
	if o.Uplink == "lo" {
		o.Uplink = "" // addresses live on lo without an uplink: it is none
	}
	if installed && o.KeepExtraUplinks {
		// Kept, less the one the uplink moves to (if it was one).
		o.ExtraUplinks = nil
		for _, x := range st.Config.ExtraUplinks {
			if x != o.Uplink {
				o.ExtraUplinks = append(o.ExtraUplinks, x)
			}
		}
	}
	extra, err := extraUplinks(o.ExtraUplinks, o.Uplink, installed && o.KeepExtraUplinks, dir)
	if err != nil {
		return false, err
	}
	root := o.CgroupRoot
	if root == "" {
		root = mount
	}
	root = filepath.Clean(root)
	if err := cgroup.Check(root); err != nil {
		return false, err
	}
	level, err := cgroup.Level(mount, root)
	if err != nil {
		return false, err
	}
	want := maps.Config{Level: uint32(level + 2), CgroupRoot: root, Uplink: o.Uplink, Delivery: o.Delivery, NameTag: NameTag(dir), ExtraUplinks: extra}
	if want.NetnsCookie, err = hostNetnsCookie(); err != nil {
		return false, err
	}
	if o.Uplink != "" {
		if want.UplinkIfindex, want.UplinkMAC, want.UplinkIP4, err = linkOf(o.Uplink); err != nil {
			if installed && o.KeepUplink {
				return false, fmt.Errorf("the uplink of the installation at %s: %w; to use another: l3iso up --uplink IF", dir, err)
			}
			return false, err
		}
		if !installed || o.Uplink != st.Config.Uplink {
			// A new uplink (one kept is checked when it was new).
			if l, err := netlink.LinkByName(o.Uplink); err == nil {
				if err := ethernet(l, "--uplink"); err != nil {
					return false, err
				}
			}
		}
	}

	if installed {
		if err := sameOptions(dir, st.Config, want); err != nil {
			return false, err
		}
		st.From, st.Switched = st.Config.Delivery, st.Config.Delivery != want.Delivery
		st.UplinkFrom, st.UplinkSwitched = st.Config.Uplink, st.Config.Uplink != want.Uplink
		// The delivery and the uplink may change on a running host (the
		// caller moves the containers: dirty until it is done), and the
		// uplink may have been recreated under its name (or given
		// another IPv4 address).
		if st.Config.Delivery != want.Delivery || st.Config.Uplink != want.Uplink || st.Config.UplinkIfindex != want.UplinkIfindex || st.Config.UplinkMAC != want.UplinkMAC || st.Config.UplinkIP4 != want.UplinkIP4 {
			cfg := st.Config
			cfg.Delivery, cfg.Uplink, cfg.UplinkIfindex, cfg.UplinkMAC, cfg.UplinkIP4, cfg.Dirty = want.Delivery, want.Uplink, want.UplinkIfindex, want.UplinkMAC, want.UplinkIP4, true
			if err := st.Maps.SetConfig(cfg); err != nil {
				return changed, err
			}
			st.Config = cfg
			changed = true
		}
		if !slices.Equal(st.Config.ExtraUplinks, want.ExtraUplinks) {
			// Their links: attached below (ensureGroupLinks) and by the
			// repair's delivery step; those of the ones dropped pruned
			// there (HostTC no longer lists them).
			st.ExtraFrom = st.Config.ExtraUplinks
			cfg := st.Config
			cfg.ExtraUplinks = want.ExtraUplinks
			if err := st.Maps.SetConfig(cfg); err != nil {
				return changed, err
			}
			st.Config = cfg
			st.ExtraSwitched, changed = true, true
		}
	} else {
		if err := st.createMaps(want); err != nil {
			return false, err
		}
		changed = true
	}
	if err := cgroup.Create(filepath.Join(root, ContainersDir)); err != nil {
		return changed, err
	}
	linked, err := st.ensureLinks()
	if err != nil {
		return changed || linked, err
	}
	tc, err := st.ensureTCPrograms()
	if err != nil {
		return changed || linked || tc, err
	}
	group, err := st.ensureGroupLinks()
	return changed || linked || tc || group, err
}

// NameTag is the name tag (see veth.Key) of a new installation pinned at
// dir: none for DefaultBPFFS, whose netns containers keep the names they
// always had (l3iso-NAME, l3i-NAME), else 4 base32 digits of the SHA-256
// of dir's absolute path, so that installations with different --bpffs on
// one host name their containers apart. An installation keeps the tag it
// was made with (l3_config); one made before tags keeps none.
func NameTag(dir string) string {
	if dir == "" {
		dir = DefaultBPFFS
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if dir == DefaultBPFFS {
		return ""
	}
	sum := sha256.Sum256([]byte(dir))
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:4]
}

// sameOptions refuses what `up` cannot change on a running installation:
// its cgroup root (every container's cgroup lives below it: its processes
// would have to move) and its network namespace.
func sameOptions(dir string, have, want maps.Config) error {
	if have.CgroupRoot != want.CgroupRoot {
		return fmt.Errorf("l3iso is already up at %s with --cgroup-root %s (asked: %s): changing the cgroup root needs `l3iso down` first (it removes every container), or leave --cgroup-root out to keep it", dir, have.CgroupRoot, want.CgroupRoot)
	}
	if have.NetnsCookie != want.NetnsCookie {
		return fmt.Errorf("l3iso at %s was brought up from another network namespace: run l3iso from that namespace, or `l3iso down` first", dir)
	}
	return nil
}

// createMaps makes fresh maps, fills in the config, pins them in a temporary
// directory and moves that into place with one rename.
func (st *State) createMaps(cfg maps.Config) error {
	set, err := maps.New()
	if err != nil {
		return err
	}
	st.Maps = set
	if err := set.SetConfig(cfg); err != nil {
		return err
	}
	if err := set.InitCounters(0); err != nil {
		return err
	}
	tmp := filepath.Join(st.Dir, "maps-tmp")
	os.RemoveAll(tmp) // leftover of a crashed `up`: unpinning is removing
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if err := set.Pin(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, mapsDir(st.Dir)); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("move pinned maps into place: %w", err)
	}
	st.Config = cfg
	return nil
}

// loadAgainstPins loads spec's programs with the pinned maps in place of
// their own, saying what to do when the kernel or the pins refuse.
func (st *State) loadAgainstPins(spec *ebpf.CollectionSpec, what string) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: st.Maps.Replacements()})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("%w: %v; run `l3iso down`, then `l3iso up`", maps.ErrIncompatible, err)
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("the kernel's verifier rejected l3iso's %s (kernel too old?): %+v", what, ve)
		}
		return nil, fmt.Errorf("load %s: %w", what, err)
	}
	return coll, nil
}

// ensureLinks loads the programs against the pinned maps and makes every
// pinned link run them: attaching missing ones, updating those whose
// program differs (an upgrade), leaving identical ones alone.
func (st *State) ensureLinks() (changed bool, err error) {
	spec, err := socketSpec()
	if err != nil {
		return false, err
	}
	coll, err := st.loadAgainstPins(spec, "programs")
	if err != nil {
		return false, err
	}
	defer coll.Close()
	if err := os.MkdirAll(linksDir(st.Dir), 0o700); err != nil {
		return false, fmt.Errorf("create %s: %w", linksDir(st.Dir), err)
	}
	names := make([]string, 0, len(coll.Programs))
	for n := range coll.Programs {
		names = append(names, n)
	}
	for _, name := range linkOrder(linksDir(st.Dir), names) {
		prog := coll.Programs[name]
		c, err := st.ensureLink(name, prog, spec.Programs[name].AttachType)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// linkOrder is the order in which ensureLinks attaches or upgrades the
// programs names: those without a pinned link in dir first, then those an
// upgrade replaces, each group sorted. On an upgrade a program that hands
// work to a new one (bind4 marks a listener, the new post_bind4 registers
// it) then never runs before the one it hands it to is attached.
func linkOrder(dir string, names []string) []string {
	var fresh, pinned []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			pinned = append(pinned, n)
		} else {
			fresh = append(fresh, n)
		}
	}
	sort.Strings(fresh)
	sort.Strings(pinned)
	return append(fresh, pinned...)
}

func (st *State) ensureLink(name string, prog *ebpf.Program, at ebpf.AttachType) (bool, error) {
	want, err := st.wantTarget(at)
	if err != nil {
		return false, err
	}
	pin := filepath.Join(linksDir(st.Dir), name)
	l, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		defer l.Close()
		if attachedTo(l, at) == want {
			same, err := sameProgram(l, prog)
			if err != nil {
				return false, fmt.Errorf("inspect pinned link %s: %w", pin, err)
			}
			if same {
				return false, nil
			}
			if err := l.Update(prog); err != nil {
				return false, fmt.Errorf("upgrade program %s in place: %w", name, err)
			}
			return true, nil
		}
		// Detached (BPF_LINK_DETACH leaves the pin), or attached
		// elsewhere: a new link takes the pin's place below.
	} else if !errors.Is(err, os.ErrNotExist) {
		// Not a link (anymore): a new link takes the pin's place.
		if err := os.Remove(pin); err != nil {
			return false, fmt.Errorf("remove pin %s, which is no link: %w", pin, err)
		}
	}
	var nl link.Link
	if at == ebpf.AttachSkLookup {
		// l3_sk_lookup: to the network namespace `up` runs in.
		if nl, err = attachNetns(prog); err != nil {
			return false, fmt.Errorf("attach %s to this network namespace: %w", name, err)
		}
	} else if nl, err = link.AttachCgroup(link.CgroupOptions{Path: st.CgroupOf(at), Attach: at, Program: prog}); err != nil {
		return false, fmt.Errorf("attach %s to cgroup %s: %w", name, st.CgroupOf(at), err)
	}
	defer nl.Close() // the pin keeps it; on error, closing detaches it
	if err := pinOver(nl, pin); err != nil {
		return false, err
	}
	return true, nil
}

// attachedTo is what a link of attach type at is attached to, as the
// kernel reports it: a cgroup link's cgroup id, a network namespace link's
// namespace inode; 0 once detached (or when it cannot say).
func attachedTo(l link.Link, at ebpf.AttachType) uint64 {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	if at == ebpf.AttachSkLookup {
		if ns := info.NetNs(); ns != nil {
			return uint64(ns.NetnsIno)
		}
		return 0
	}
	if info.Cgroup() == nil {
		return 0
	}
	return info.Cgroup().CgroupId
}

// CgroupOf is the cgroup the socket program of attach type at is attached
// to. l3_egress, the egress backstop, is attached where the containers'
// cgroups are (<root>/l3iso): it checks only a container's packets, and a
// host process under the root then does not run it for each packet it
// sends (issue 17). Every other socket program is attached at the cgroup
// root: the host's binds, connects and sends are checked (rule 2, the
// host's source toward a container), and the ingress backstop keeps
// container traffic from the host's sockets there.
func (st *State) CgroupOf(at ebpf.AttachType) string {
	if at == ebpf.AttachCGroupInetEgress {
		return filepath.Join(st.Config.CgroupRoot, ContainersDir)
	}
	return st.Config.CgroupRoot
}

// wantTarget is what a link of attach type at must be attached to: its
// cgroup's id (CgroupOf), or this thread's network namespace's inode.
func (st *State) wantTarget(at ebpf.AttachType) (uint64, error) {
	if at == ebpf.AttachSkLookup {
		return netnsIno(), nil
	}
	return cgroup.ID(st.CgroupOf(at))
}

// netnsIno is the inode of the calling thread's network namespace.
func netnsIno() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0
	}
	return st.Ino
}

// pinOver pins l at pin, replacing whatever is pinned there with one
// rename (bpffs refuses names with a dot: the temporary name has none).
func pinOver(l link.Link, pin string) error {
	tmp := pin + "-new"
	os.Remove(tmp) // a crashed up's
	if err := l.Pin(tmp); err != nil {
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	if err := os.Rename(tmp, pin); err != nil {
		l.Unpin()
		return fmt.Errorf("move pinned link %s into place: %w", pin, err)
	}
	return nil
}

func sameProgram(l link.Link, prog *ebpf.Program) (bool, error) {
	li, err := l.Info()
	if err != nil {
		return false, err
	}
	old, err := ebpf.NewProgramFromID(li.Program)
	if err != nil {
		return false, err
	}
	defer old.Close()
	oi, err := old.Info()
	if err != nil {
		return false, err
	}
	ni, err := prog.Info()
	if err != nil {
		return false, err
	}
	return oi.Tag == ni.Tag, nil
}

// LinkInfo describes one pinned link, for `status`.
type LinkInfo struct {
	Name      string `json:"name"`
	ID        uint32 `json:"link_id"`
	ProgramID uint32 `json:"program_id"`
	Tag       string `json:"program_tag"`
	Attach    string `json:"attach"`
	Target    string `json:"target"`
}

// Links lists the pinned links, with the target each is attached to as the
// kernel reports it (not the configuration): the cgroup root or the
// containers' cgroup, "(detached)" once BPF_LINK_DETACH detached it, an
// interface.
func (st *State) Links() ([]LinkInfo, error) {
	entries, err := os.ReadDir(linksDir(st.Dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", linksDir(st.Dir), err)
	}
	rootID, _ := cgroup.ID(st.Config.CgroupRoot)
	contDir := filepath.Join(st.Config.CgroupRoot, ContainersDir)
	contID, _ := cgroup.ID(contDir)
	var out []LinkInfo
	for _, e := range entries {
		li := LinkInfo{Name: e.Name()}
		l, err := link.LoadPinnedLink(filepath.Join(linksDir(st.Dir), e.Name()), nil)
		if err != nil {
			li.Target = fmt.Sprintf("(cannot open: %v)", err)
			out = append(out, li)
			continue
		}
		if info, err := l.Info(); err == nil {
			li.ID = uint32(info.ID)
			li.ProgramID = uint32(info.Program)
			if cg := info.Cgroup(); cg != nil {
				li.Attach = ebpf.AttachType(cg.AttachType).String()
				if ebpf.AttachType(cg.AttachType) == ebpf.AttachCGroupInetIngress {
					li.Attach = "CGroupInetIngress" // value 0 prints as "None"
				}
				switch cg.CgroupId {
				case 0:
					li.Target = "(detached)"
				case rootID:
					li.Target = st.Config.CgroupRoot
				case contID:
					li.Target = contDir
				default:
					li.Target = fmt.Sprintf("cgroup id %d", cg.CgroupId)
				}
			}
			if ns := info.NetNs(); ns != nil {
				li.Attach = ebpf.AttachSkLookup.String()
				switch uint64(ns.NetnsIno) {
				case 0:
					li.Target = "(detached)"
				case netnsIno():
					li.Target = "this network namespace"
				default:
					li.Target = fmt.Sprintf("network namespace inode %d", ns.NetnsIno)
				}
			}
			if tcx := info.TCX(); tcx != nil {
				li.Attach = ebpf.AttachType(tcx.AttachType).String()
				li.Target = fmt.Sprintf("ifindex %d (gone)", tcx.Ifindex)
				if tcx.Ifindex == 0 {
					li.Target = "(detached)"
				} else if name := IfName(int(tcx.Ifindex)); name != "" {
					li.Target = name
				}
			}
			_, li.Tag = st.progInfo(info.Program)
		}
		l.Close()
		out = append(out, li)
	}
	return out, nil
}

// ForceTeardown removes an installation this binary cannot read (another
// version's map layout): it detaches and unpins every link, kills and
// removes the containers' cgroups (found from the links' attach point),
// and unpins the maps. Addresses configured on the host stay: the old
// metadata cannot be read to know them.
func ForceTeardown(dir string) error {
	if dir == "" {
		dir = DefaultBPFFS
	}
	lock, err := lockDir(dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer lock.Close()
	// The containers' cgroup, from any cgroup link: the egress backstop's
	// is attached to it, every other one to its parent (CgroupOf).
	var cgid uint64
	sub := ""
	entries, _ := os.ReadDir(linksDir(dir))
	for _, e := range entries {
		pin := filepath.Join(linksDir(dir), e.Name())
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if info, err := l.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId != 0 {
				cgid, sub = info.Cgroup().CgroupId, ContainersDir
				if ebpf.AttachType(info.Cgroup().AttachType) == ebpf.AttachCGroupInetEgress {
					sub = ""
				}
			}
			l.Unpin()
			l.Close()
		}
		os.Remove(pin)
	}
	if cgid != 0 {
		// The attach point by its id (open_by_handle_at), not by a walk
		// of the whole hierarchy; one removed since is ESTALE: nothing to
		// remove.
		if mount, err := cgroup.Mount(); err == nil {
			if at, err := cgroup.PathByID(mount, cgid); err == nil {
				if err := cgroup.Remove(filepath.Join(at, sub)); err != nil {
					return err
				}
			}
		}
	}
	for _, sub := range []string{linksDir(dir), mapsDir(dir), progsDir(dir), filepath.Join(dir, "maps-tmp")} {
		if err := os.RemoveAll(sub); err != nil {
			return fmt.Errorf("remove pins in %s: %w", sub, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// Teardown detaches every link and removes every pin and the containers'
// parent cgroup. The caller has removed the containers first.
func (st *State) Teardown() error {
	if st.Config.AcceptLocal {
		if err := os.WriteFile(acceptLocal, []byte("0"), 0o644); err != nil {
			return fmt.Errorf("restore net.ipv4.conf.lo.accept_local: %w", err)
		}
	}
	entries, _ := os.ReadDir(linksDir(st.Dir))
	for _, e := range entries {
		pin := filepath.Join(linksDir(st.Dir), e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove pin %s: %w", pin, err)
			}
			continue
		}
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin link %s: %w", pin, err)
		}
		l.Close() // last reference: the program detaches
	}
	if st.Maps != nil {
		st.Maps.Close()
		st.Maps = nil
	}
	for _, p := range st.progs {
		p.Close()
	}
	st.progs = nil
	for _, sub := range []string{linksDir(st.Dir), mapsDir(st.Dir), progsDir(st.Dir), filepath.Join(st.Dir, "maps-tmp")} {
		if err := os.RemoveAll(sub); err != nil {
			return fmt.Errorf("remove pins in %s: %w", sub, err)
		}
	}
	if err := cgroup.Remove(filepath.Join(st.Config.CgroupRoot, ContainersDir)); err != nil {
		return err
	}
	if err := os.Remove(st.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", st.Dir, err)
	}
	return nil
}

// IfName returns the name of interface index in the current network
// namespace, or "" when there is none. It asks the kernel for that one link:
// net.InterfaceByIndex (and ByName) read every link of the namespace, and a
// host with 1,000 netns containers has 1,000 veths — `status`, which names
// every TCX link, took 90 s that way.
func IfName(index int) string {
	if index <= 0 {
		return ""
	}
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}

// linkOf returns an interface's ifindex and MAC address.
func linkOf(name string) (uint32, [6]byte, netip.Addr, error) {
	var (
		mac [6]byte
		ip4 netip.Addr
	)
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, mac, ip4, fmt.Errorf("interface %q: %w (check `ip link`)", name, err)
	}
	copy(mac[:], l.Attrs().HardwareAddr)
	if addrs, err := netlink.AddrList(l, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && a.Scope == unix.RT_SCOPE_UNIVERSE {
				ip4 = ip
				break
			}
		}
	}
	return uint32(l.Attrs().Index), mac, ip4, nil
}

// extraUplinks checks the extra uplinks `up` was given (or keeps, when
// kept): each an interface of this namespace, none twice, none lo, the
// uplink, or an interface l3iso makes itself, at most
// maps.MaxExtraUplinks. "" entries are dropped.
func extraUplinks(names []string, uplink string, kept bool, dir string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, x := range names {
		switch {
		case x == "":
			continue
		case seen[x]:
			return nil, fmt.Errorf("--extra-uplink %s is given twice", x)
		case x == "lo":
			return nil, errors.New("--extra-uplink lo: lo has l3iso's programs already; name a network interface")
		case x == uplink:
			return nil, fmt.Errorf("--extra-uplink %s is the uplink itself: name the other interfaces only", x)
		case x == veth.BridgeName || strings.HasPrefix(x, veth.HostIfPrefix):
			return nil, fmt.Errorf("--extra-uplink %s: l3iso makes and wires that interface itself; name an interface of the host's", x)
		}
		l, err := netlink.LinkByName(x)
		if err != nil {
			if kept {
				return nil, fmt.Errorf("extra uplink %s of the installation at %s: interface missing (%v): bring it back, or name the ones to keep (l3iso up --extra-uplink IF ..., or --extra-uplink \"\" for none)", x, dir, err)
			}
			return nil, fmt.Errorf("--extra-uplink %s: interface missing (%v; check `ip link`)", x, err)
		}
		if err := ethernet(l, "--extra-uplink"); err != nil {
			return nil, err
		}
		seen[x] = true
		out = append(out, x)
	}
	if len(out) > maps.MaxExtraUplinks {
		return nil, fmt.Errorf("%d extra uplinks: l3iso takes at most %d", len(out), maps.MaxExtraUplinks)
	}
	return out, nil
}

// ethernet refuses an interface whose frames have no Ethernet header (a
// tun, a WireGuard or IP-in-IP tunnel): l3iso's TC programs parse and
// rewrite Ethernet headers. flag names the option for the message.
func ethernet(l netlink.Link, flag string) error {
	if t := l.Attrs().EncapType; t != "ether" {
		return fmt.Errorf("%s %s is no Ethernet interface (link/%s): l3iso's TC programs read and write Ethernet headers; name an Ethernet interface (a NIC, veth, bond, VLAN or bridge)", flag, l.Attrs().Name, t)
	}
	return nil
}

// attachNetns attaches an sk_lookup program to the calling thread's
// network namespace.
func attachNetns(prog *ebpf.Program) (link.Link, error) {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return link.AttachNetNs(int(ns.Fd()), prog)
}
