// Package events reads l3iso's denial and drop events: the records the BPF
// programs write into the pinned ring buffer <bpffs>/maps/l3_events
// (pkg/maps, DecodeEvent), for `l3iso monitor`. It converts each record's
// CLOCK_BOOTTIME stamp to wall time, names containers (a container deleted
// since shows its id), filters, and reports events the per-container rate
// limit or a full ring kept out: the events_lost counters (pkg/maps
// CounterNames), read once a second, never silently.
//
// One reader at a time: a BPF ring buffer has one consumer position, and
// whatever one reader consumes the others never see. A Monitor holds an
// exclusive flock on <bpffs>/maps; a second one fails and names the
// process that holds it (/proc/locks). It holds no lock of the
// installation: changing commands run while it reads.
package events

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
)

// Options say what a Monitor reads and shows.
type Options struct {
	BPFFS     string   // the installation
	Container string   // only this container's events ("" = all; maps.HostName: the host's)
	Match     []string // only events whose type, reason, verdict or a word of the reason is one of these
	// Backlog shows the events already in the ring when the Monitor
	// started (written while nobody read); without it they are skipped,
	// and counted in the first line.
	Backlog bool
	// Tick is how often the loss counters are read (default 1 s).
	Tick time.Duration
}

// Monitor reads the ring buffer.
type Monitor struct {
	o     Options
	dir   string // <bpffs>/maps
	lock  *os.File
	set   *maps.Set
	rd    *ringbuf.Reader
	start uint64 // CLOCK_BOOTTIME when it started
	skew  int64  // wall clock minus CLOCK_BOOTTIME, ns

	names     map[uint32]string
	namesRead time.Time
	only      uint32 // the id of Options.Container; all if !filtered
	filtered  bool
	lost      map[uint32]uint64 // events_lost counters at the last report
	lostKnown bool              // this binary has the events_lost counter
}

// ErrBusy says another reader holds the ring buffer.
var ErrBusy = errors.New("another l3iso monitor reads the events")

// Open opens the ring buffer of the installation at o.BPFFS.
func Open(o Options) (_ *Monitor, err error) {
	if o.Tick <= 0 {
		o.Tick = time.Second
	}
	if err := CheckMatch(o.Match); err != nil {
		return nil, err
	}
	m := &Monitor{o: o, dir: filepath.Join(o.BPFFS, "maps"), lost: map[uint32]uint64{}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	pin := filepath.Join(m.dir, maps.EventsPin)
	if _, err := os.Stat(pin); err != nil {
		if _, derr := os.Stat(m.dir); derr != nil {
			return nil, fmt.Errorf("l3iso is not up: nothing is pinned at %s; run `l3iso up` first (or pass the --bpffs that `up` used)", o.BPFFS)
		}
		return nil, fmt.Errorf("no event ring buffer is pinned at %s: the installation was made by an l3iso without events; run `l3iso up` with this binary to upgrade it", pin)
	}
	if m.lock, err = lockReader(m.dir); err != nil {
		return nil, err
	}
	if m.set, err = maps.OpenPinned(m.dir); err != nil {
		return nil, err
	}
	if m.rd, err = m.set.EventReader(); err != nil {
		return nil, fmt.Errorf("read %s: %w", pin, err)
	}
	if err := m.readNames(); err != nil {
		return nil, err
	}
	if o.Container != "" {
		m.filtered = true
		if o.Container != maps.HostName {
			id, ok := m.idOf(o.Container)
			if !ok {
				return nil, fmt.Errorf("no container %q: `l3iso container list` shows the containers", o.Container)
			}
			m.only = id
		}
	}
	m.start, m.skew = clocks()
	_, m.lostKnown, _ = m.eventsLost(0)
	for _, id := range m.watched() {
		if m.lost[id], _, err = m.eventsLost(id); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Close releases the ring buffer and the reader's lock.
func (m *Monitor) Close() error {
	if m.rd != nil {
		m.rd.Close()
		m.rd = nil
	}
	if m.set != nil {
		m.set.Close()
		m.set = nil
	}
	if m.lock != nil {
		m.lock.Close()
		m.lock = nil
	}
	return nil
}

// clocks returns CLOCK_BOOTTIME now, and the wall clock minus it.
func clocks() (boot uint64, skew int64) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	wall := time.Now().UnixNano()
	boot = uint64(ts.Nano())
	return boot, wall - int64(boot)
}

// lockReader takes the exclusive reader's flock on dir, or says who has it.
func lockReader(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w of %s (%s): a BPF ring buffer has one read position, so a second reader would take events from the first; stop it, or share its output (e.g. one `l3iso monitor -o json` piped to several filters)", ErrBusy, filepath.Dir(dir), lockHolder(dir))
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// lockHolder names the process holding a flock on path, from /proc/locks
// ("pid 4242: l3iso monitor -o json"), or says it cannot tell.
func lockHolder(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "held by a process l3iso cannot name"
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return "held by a process l3iso cannot name"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF"
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" || fs[5] != want {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Fields(strings.ReplaceAll(string(cmd), "\x00", " "))
		if len(args) > 0 {
			args[0] = filepath.Base(args[0])
		}
		return fmt.Sprintf("held by pid %d: %s", pid, strings.Join(args, " "))
	}
	return "held by a process l3iso cannot name"
}

// eventsLost reads the events_lost counter of container id (0: the host);
// ok is false if this binary has no such counter.
func (m *Monitor) eventsLost(id uint32) (v uint64, ok bool, err error) {
	cs, err := m.set.ReadCounters(id)
	if err != nil {
		return 0, true, err
	}
	v, ok = cs["events_lost"]
	return v, ok, nil
}

// readNames reads the active policy's container names.
func (m *Monitor) readNames() error {
	gen, err := m.set.Active()
	if err != nil {
		return err
	}
	cs, err := gen.Containers()
	if err != nil {
		return err
	}
	m.names = make(map[uint32]string, len(cs))
	for _, k := range cs {
		m.names[k.ID] = k.Spec.Name
	}
	m.namesRead = time.Now()
	return nil
}

func (m *Monitor) idOf(name string) (uint32, bool) {
	for id, n := range m.names {
		if n == name {
			return id, true
		}
	}
	return 0, false
}

// name names container id; an id it does not know makes it read the
// names again (a container added since), at most once a second.
func (m *Monitor) name(id uint32) string {
	if id == 0 {
		return maps.HostName
	}
	if n, ok := m.names[id]; ok {
		return n
	}
	if time.Since(m.namesRead) > time.Second {
		if m.readNames() == nil {
			if n, ok := m.names[id]; ok {
				return n
			}
		}
	}
	return fmt.Sprintf("id %d", id)
}

// watched are the ids whose losses are reported.
func (m *Monitor) watched() []uint32 {
	if m.filtered {
		return []uint32{m.only}
	}
	ids := []uint32{0}
	for id := range m.names {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Run reads events until ctx ends, the installation goes away, or emit
// fails, calling emit with an Event or a Lost for each line. Reports of
// skipped backlog go to note.
func (m *Monitor) Run(ctx context.Context, emit func(any) error, note func(string)) error {
	stop := context.AfterFunc(ctx, func() { m.rd.Close() })
	defer stop()
	var (
		rec     ringbuf.Record
		skipped int
		backlog = !m.o.Backlog
		next    = time.Now().Add(m.o.Tick)
	)
	for {
		m.rd.SetDeadline(next)
		err := m.rd.ReadInto(&rec)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
		case err != nil:
			return fmt.Errorf("read %s: %w", maps.EventsPin, err)
		default:
			e, derr := maps.DecodeEvent(rec.RawSample)
			if derr != nil {
				return derr
			}
			if backlog && e.Boot < m.start {
				skipped++
				break
			}
			if backlog {
				backlog = false
				if skipped > 0 {
					note(fmt.Sprintf("skipped %d events written before monitor started (--backlog shows them)", skipped))
				}
			}
			if m.wants(e) {
				if err := emit(toEvent(e, time.Unix(0, int64(e.Boot)+m.skew), m.name)); err != nil {
					return err
				}
			}
		}
		if time.Now().Before(next) {
			continue
		}
		next = time.Now().Add(m.o.Tick)
		if backlog && skipped > 0 && m.rd.AvailableBytes() == 0 {
			backlog = false
			note(fmt.Sprintf("skipped %d events written before monitor started (--backlog shows them)", skipped))
		}
		if err := m.tick(emit); err != nil {
			return err
		}
	}
}

// tick reports losses, notices that the installation went away, and
// follows the wall clock.
func (m *Monitor) tick(emit func(any) error) error {
	if _, err := os.Stat(filepath.Join(m.dir, maps.EventsPin)); err != nil {
		return fmt.Errorf("l3iso went down: %s is no longer pinned in %s", maps.EventsPin, m.dir)
	}
	_, m.skew = clocks()
	if time.Since(m.namesRead) > 10*time.Second {
		if err := m.readNames(); err != nil {
			return err
		}
	}
	if !m.lostKnown {
		return nil
	}
	now := time.Now().UTC()
	for _, id := range m.watched() {
		v, _, err := m.eventsLost(id)
		if err != nil {
			return err
		}
		before, seen := m.lost[id]
		m.lost[id] = v
		if !seen {
			// A container added since the last tick: its losses so far
			// happened before monitor knew it; it reports from now on.
			continue
		}
		if v > before {
			if err := emit(Lost{Kind: "lost", Time: now, Container: m.name(id), ContainerID: id, Lost: v - before, Total: v}); err != nil {
				return err
			}
		}
	}
	return nil
}

// wants applies Options.Container and Options.Match.
func (m *Monitor) wants(e maps.Event) bool {
	if m.filtered && e.ID != m.only {
		return false
	}
	return matches(m.o.Match, e)
}

func matches(match []string, e maps.Event) bool {
	if len(match) == 0 {
		return true
	}
	words := strings.Split(e.Reason, "_")
	for _, w := range match {
		if w == e.Type || w == e.Reason || w == verdict(e) || slices.Contains(words, w) {
			return true
		}
	}
	return false
}

// Matchable lists what --type accepts: event types, verdicts, reasons and
// the words of reasons.
func Matchable() []string {
	set := map[string]bool{"denied": true, "dropped": true, "refused": true}
	for _, t := range maps.EventTypes {
		set[t] = t != ""
	}
	for _, r := range maps.CounterNames {
		if r == "" {
			continue
		}
		set[r] = true
		for _, w := range strings.Split(r, "_") {
			set[w] = true
		}
	}
	var out []string
	for k, ok := range set {
		if ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// CheckMatch refuses a --type value that can match no event.
func CheckMatch(match []string) error {
	ok := Matchable()
	for _, w := range match {
		if !slices.Contains(ok, w) {
			return fmt.Errorf("--type %q matches no event: use an event type (%s), a verdict (denied, dropped, refused), a reason of `l3iso stats` (bind_denied_port) or a word of one (spoof, quota)",
				w, strings.Join(maps.EventTypes[1:], ", "))
		}
	}
	return nil
}
