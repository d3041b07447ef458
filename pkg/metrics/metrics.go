// Package metrics exports an l3iso installation to Prometheus: a collector
// that opens the pinned maps at every scrape (with the shared lock, as
// `l3iso status` does), reads them and closes them again. It keeps no
// state of its own: whatever serves it can restart at any time, and two
// of them agree.
//
// Names follow Prometheus' conventions: base units, _total for counters,
// a container label ("(host)" for processes outside every container) and,
// for verdicts, a reason label whose values are the counter names of
// `l3iso stats` (pkg/maps CounterNames).
package metrics

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
)

// eventsLost is the counter (pkg/maps CounterNames) of denials and drops
// whose event the rate limit or a full ring kept out: not a verdict, so
// exported as l3iso_events_lost_total.
const eventsLost = "events_lost"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("l3iso_"+name, help, labels, nil)
}

var (
	dInstalled = desc("installed", "1 if an l3iso installation is pinned at --bpffs and could be read, else 0.")
	dIntact    = desc("isolation_intact", "1 if the installation has no problem (what `l3iso status` lists: detached or unpinned links, missing TCX programs, cgroups, namespaces or host addresses, an interrupted command), else 0. 0 when nothing is installed.")
	dProblems  = desc("problems", "How many problems `l3iso status` lists (`l3iso up` repairs them).")
	dProblem   = desc("problem_info", "One series per problem `l3iso status` lists, with what is wrong.", "object", "problem")
	dAttached  = desc("programs_attached", "Program attachments in place as they should be: socket programs at the cgroup root (the egress backstop at its l3iso/ cgroup), TCX programs on lo, the uplink, the bridge (delivery bridge) and netns containers' veths (ingress and egress).")
	dExpected  = desc("programs_expected", "Program attachments the installation should have (see l3iso_programs_attached).")
	dVerdicts  = desc("verdicts_total", "Verdicts of l3iso's programs per container, by reason: the counters of `l3iso stats`.", "container", "reason")
	dLost      = desc("events_lost_total", "Denials and drops whose event for `l3iso monitor` the per-container rate limit or a full ring buffer kept out.", "container")
	dConts     = desc("containers", "Containers in the active policy.")
	dContsMax  = desc("containers_max", "How many containers an installation can hold.")
	dEntries   = desc("map_entries", "Entries in a pinned map that fills as containers, addresses and sockets come.", "map", "what")
	dMax       = desc("map_max_entries", "Capacity of the map (its max_entries).", "map", "what")
	dQuota     = desc("socket_quota_used", "Registrations (listening sockets, broadcast and multicast listener entries) a container's sockets hold, of l3iso_socket_quota_limit.", "container")
	dQuotaMax  = desc("socket_quota_limit", "Registrations each container's sockets may hold; more fail with ENOBUFS (counted as socket_quota_exceeded).")
	dChanges   = desc("changes_total", "Changes made through l3iso (up, apply, container add and del, CNI ADD and DEL) since `up` installed it.")
	dGen       = desc("apply_generation", "Applies that switched the policy since `up` installed it: the policy generation in force.")
	dLast      = desc("last_change_timestamp_seconds", "When the last change was made (Unix time); absent before the first recorded change.")
	dLastApply = desc("last_apply_timestamp_seconds", "When the last apply switched the policy (Unix time); absent before the first.")
)

// Collector is a prometheus.Collector of the installation pinned at BPFFS.
type Collector struct {
	BPFFS string
}

// New returns a collector of the installation pinned at bpffs.
func New(bpffs string) *Collector { return &Collector{BPFFS: bpffs} }

// Describe sends nothing: the collector is unchecked (its series come and
// go with containers and problems).
func (*Collector) Describe(chan<- *prometheus.Desc) {}

// Collect reads the installation.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ctl, err := control.Open(c.BPFFS, false)
	if errors.Is(err, loader.ErrNotUp) {
		gauge(dInstalled, 0)
		gauge(dIntact, 0)
		return
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dInstalled, err)
		return
	}
	defer ctl.Close()
	gauge(dInstalled, 1)
	if err := collect(ctl, ch, gauge); err != nil {
		ch <- prometheus.NewInvalidMetric(dInstalled, err)
	}
}

func collect(ctl *control.Control, ch chan<- prometheus.Metric, gauge func(*prometheus.Desc, float64, ...string)) error {
	st := ctl.State()
	problems, err := ctl.Check()
	if err != nil {
		return err
	}
	intact := 0.0
	if len(problems) == 0 {
		intact = 1
	}
	gauge(dIntact, intact)
	gauge(dProblems, float64(len(problems)))
	for _, p := range problems {
		gauge(dProblem, 1, p.Object, p.Issue)
	}
	cs, err := ctl.Containers()
	if err != nil {
		return err
	}
	var veths []string
	for _, k := range cs {
		if k.Spec.Mode == policy.ModeNetns {
			veths = append(veths, ctl.HostIfName(k.Spec.Name))
		}
	}
	attached, expected, err := st.Programs(veths)
	if err != nil {
		return err
	}
	gauge(dAttached, float64(attached))
	gauge(dExpected, float64(expected))

	gauge(dConts, float64(len(cs)))
	gauge(dContsMax, float64(maps.MaxContainers))
	gauge(dQuotaMax, float64(maps.SocketQuota))
	host, err := st.Maps.ReadCounters(0)
	if err != nil {
		return err
	}
	counterMetrics(ch, maps.HostName, host, false)
	for _, k := range cs {
		cnt, err := st.Maps.ReadCounters(k.ID)
		if err != nil {
			return err
		}
		counterMetrics(ch, k.Spec.Name, cnt, false)
		used, err := st.Maps.QuotaUsed(k.ID)
		if err != nil {
			return err
		}
		gauge(dQuota, float64(used), k.Spec.Name)
	}
	use, err := st.Maps.Occupancy()
	if err != nil {
		return err
	}
	for _, u := range use {
		gauge(dEntries, float64(u.Entries), u.Name, u.What)
		gauge(dMax, float64(u.MaxEntries), u.Name, u.What)
	}
	chg, err := maps.ReadChanges(st.Dir + "/maps")
	if err != nil {
		return err
	}
	ch <- prometheus.MustNewConstMetric(dChanges, prometheus.CounterValue, float64(chg.Count))
	gauge(dGen, float64(chg.Applies))
	if !chg.Last.IsZero() {
		gauge(dLast, float64(chg.Last.UnixNano())/1e9)
	}
	if !chg.LastApply.IsZero() {
		gauge(dLastApply, float64(chg.LastApply.UnixNano())/1e9)
	}
	return nil
}

// counterMetrics sends container's counters: l3iso_verdicts_total per
// reason and l3iso_events_lost_total (zero ones too unless skipZero).
func counterMetrics(ch chan<- prometheus.Metric, container string, cnt maps.Counters, skipZero bool) {
	for _, reason := range maps.CounterNames {
		v, ok := cnt[reason]
		if reason == "" || !ok || (skipZero && v == 0) {
			continue
		}
		if reason == eventsLost {
			ch <- prometheus.MustNewConstMetric(dLost, prometheus.CounterValue, float64(v), container)
			continue
		}
		ch <- prometheus.MustNewConstMetric(dVerdicts, prometheus.CounterValue, float64(v), container, reason)
	}
}

// Named are one container's counters ("(host)": maps.HostName).
type Named struct {
	Container string
	Counters  maps.Counters
}

// countersOnly collects given counters: `l3iso stats -o prometheus`.
type countersOnly struct {
	all      []Named
	skipZero bool
}

func (countersOnly) Describe(chan<- *prometheus.Desc) {}

func (c countersOnly) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.all {
		counterMetrics(ch, n.Container, n.Counters, c.skipZero)
	}
}

// WriteCounters writes the counters in the Prometheus text format, as
// `l3iso metrics` serves them (l3iso_verdicts_total,
// l3iso_events_lost_total); skipZero leaves out zero counters.
func WriteCounters(w io.Writer, all []Named, skipZero bool) error {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(countersOnly{all, skipZero}); err != nil {
		return err
	}
	return writeText(w, reg)
}

// WriteText writes what a scrape of the collector would get, in the
// Prometheus text format.
func (c *Collector) WriteText(w io.Writer) error {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		return err
	}
	return writeText(w, reg)
}

func writeText(w io.Writer, g prometheus.Gatherer) error {
	mfs, err := g.Gather()
	if err != nil {
		return err
	}
	sort.Slice(mfs, func(i, j int) bool { return mfs[i].GetName() < mfs[j].GetName() })
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("write metrics: %w", err)
		}
	}
	return nil
}
