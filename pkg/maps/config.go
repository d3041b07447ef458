package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Delivery says how packets reach netns-mode containers.
type Delivery uint32

// Delivery modes (bpf/l3iso.h enum l3_delivery).
const (
	DeliveryDirect = Delivery(sockL3DeliveryL3DELIVERY_DIRECT)
	DeliveryRouted = Delivery(sockL3DeliveryL3DELIVERY_ROUTED)
	DeliveryBridge = Delivery(sockL3DeliveryL3DELIVERY_BRIDGE)
)

func (d Delivery) String() string {
	switch d {
	case DeliveryDirect:
		return "direct"
	case DeliveryRouted:
		return "routed"
	case DeliveryBridge:
		return "bridge"
	}
	return fmt.Sprintf("delivery(%d)", uint32(d))
}

// ParseDelivery parses "direct", "routed" or "bridge".
func ParseDelivery(s string) (Delivery, error) {
	for _, d := range []Delivery{DeliveryDirect, DeliveryRouted, DeliveryBridge} {
		if d.String() == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown delivery %q: use direct, routed or bridge", s)
}

// Config is what `l3iso up` decided, as the programs read it.
type Config struct {
	NetnsCookie   uint64 // the host network namespace
	Level         uint32 // cgroup level of container cgroups
	Delivery      Delivery
	UplinkIfindex uint32
	UplinkMAC     [6]byte // source MAC of what l3iso itself sends out of the uplink
	// UplinkIP4 is an IPv4 address of the uplink (the zero Addr: none): a
	// shared container's multicast join by interface address that names
	// none is made there (bpf/sock.c, join_on_uplink).
	UplinkIP4  netip.Addr
	CgroupRoot string // where the programs are attached
	Uplink     string // interface name; "" = addresses on lo
	Dirty      bool   // a changing command is under way, or died before it finished
	// Forward4 and Forward6 say that l3iso turned on IPv4 / IPv6 forwarding
	// (for routed or bridge delivery), so it turns it off again when no
	// longer needed, and leaves alone forwarding the operator turned on.
	Forward4, Forward6 bool
	// AcceptLocal says that l3iso turned on net.ipv4.conf.lo.accept_local
	// (broadcast copies re-enter lo with a local source); down turns it off.
	AcceptLocal bool
	// NameTag goes into the names of netns containers' namespaces and
	// veths (pkg/veth, Key), so that installations with different --bpffs
	// do not collide: up to 4 characters, "" for the names of an l3iso
	// before tags (and for the default --bpffs). It lives in l3_cfg's
	// name_tag, which the programs do not read.
	NameTag string
	// NoEvents turns l3_events off: the programs write no records of
	// denials and drops (bpf/events.h). For measuring what they cost.
	NoEvents bool
	// ExtraUplinks are interfaces besides Uplink where traffic for the
	// containers arrives (`up --extra-uplink`): they get the uplink's TCX
	// programs. Kept in l3_xuplinks, which no program reads; at most
	// MaxExtraUplinks, in the order given.
	ExtraUplinks []string
}

// MaxExtraUplinks is how many extra uplinks an installation can have.
const MaxExtraUplinks = int(sockL3LimitsL3MAX_XUPLINKS)

// Config reads l3_config[0].
func (s *Set) Config() (Config, error) {
	var v sockL3Cfg
	if err := s.cfg.Lookup(uint32(0), &v); err != nil {
		return Config{}, fmt.Errorf("read map l3_config: %w", err)
	}
	c := Config{
		NetnsCookie: v.NetnsCookie, Level: v.Level, Delivery: Delivery(v.Delivery),
		UplinkIfindex: v.UplinkIfindex, UplinkMAC: v.UplinkMac, CgroupRoot: cstr(v.Cgroot[:]), Uplink: cstr(v.Uplink[:]),
		UplinkIP4:   ip4From(v.UplinkIp4),
		Dirty:       v.Flags&uint32(sockL3CfgFlagsL3CFG_DIRTY) != 0,
		Forward4:    v.Flags&uint32(sockL3CfgFlagsL3CFG_FWD4) != 0,
		Forward6:    v.Flags&uint32(sockL3CfgFlagsL3CFG_FWD6) != 0,
		AcceptLocal: v.Flags&uint32(sockL3CfgFlagsL3CFG_ACCEPT_LOCAL) != 0,
		NoEvents:    v.Flags&uint32(sockL3CfgFlagsL3CFG_NO_EVENTS) != 0,
		NameTag:     nameTag(v.NameTag),
	}
	for i := 0; i < MaxExtraUplinks; i++ {
		var n sockL3Ifname
		if err := s.xuplinks.Lookup(uint32(i), &n); err != nil {
			return Config{}, fmt.Errorf("read map l3_xuplinks: %w", err)
		}
		if name := cstr(n.Name[:]); name != "" {
			c.ExtraUplinks = append(c.ExtraUplinks, name)
		}
	}
	return c, nil
}

// nameTag and tagWord convert Config.NameTag from and to l3_cfg's pad: its
// bytes in order, NUL-padded.
func nameTag(w uint32) string {
	var b []byte
	for i := 0; i < 4; i++ {
		if c := byte(w >> (8 * i)); c != 0 {
			b = append(b, c)
		}
	}
	return string(b)
}

func tagWord(tag string) (uint32, error) {
	if len(tag) > 4 {
		return 0, fmt.Errorf("name tag %q is longer than 4 bytes", tag)
	}
	var w uint32
	for i := 0; i < len(tag); i++ {
		w |= uint32(tag[i]) << (8 * i)
	}
	return w, nil
}

// SetConfig writes l3_config[0]. The generation and the broadcast filter
// are not the operator's settings: they keep the values they have.
func (s *Set) SetConfig(c Config) error {
	var cur sockL3Cfg
	if err := s.cfg.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read map l3_config: %w", err)
	}
	v := sockL3Cfg{
		Gen: cur.Gen, BcastBloom: cur.BcastBloom,
		NetnsCookie: c.NetnsCookie, Level: c.Level, Delivery: uint32(c.Delivery), UplinkIfindex: c.UplinkIfindex,
		UplinkMac: c.UplinkMAC, UplinkIp4: ip4To(c.UplinkIP4),
	}
	var err error
	if v.NameTag, err = tagWord(c.NameTag); err != nil {
		return err
	}
	if c.Dirty {
		v.Flags |= uint32(sockL3CfgFlagsL3CFG_DIRTY)
	}
	if c.Forward4 {
		v.Flags |= uint32(sockL3CfgFlagsL3CFG_FWD4)
	}
	if c.AcceptLocal {
		v.Flags |= uint32(sockL3CfgFlagsL3CFG_ACCEPT_LOCAL)
	}
	if c.Forward6 {
		v.Flags |= uint32(sockL3CfgFlagsL3CFG_FWD6)
	}
	if c.NoEvents {
		v.Flags |= uint32(sockL3CfgFlagsL3CFG_NO_EVENTS)
	}
	if len(c.CgroupRoot) >= len(v.Cgroot) {
		return fmt.Errorf("cgroup root path %q is longer than %d bytes", c.CgroupRoot, len(v.Cgroot)-1)
	}
	if len(c.Uplink) >= len(v.Uplink) {
		return fmt.Errorf("uplink name %q is longer than %d bytes", c.Uplink, len(v.Uplink)-1)
	}
	for i := 0; i < len(c.CgroupRoot); i++ {
		v.Cgroot[i] = int8(c.CgroupRoot[i])
	}
	for i := 0; i < len(c.Uplink); i++ {
		v.Uplink[i] = int8(c.Uplink[i])
	}
	if len(c.ExtraUplinks) > MaxExtraUplinks {
		return fmt.Errorf("%d extra uplinks: at most %d", len(c.ExtraUplinks), MaxExtraUplinks)
	}
	names := make([]sockL3Ifname, MaxExtraUplinks)
	for i, x := range c.ExtraUplinks {
		if x == "" || len(x) >= len(names[i].Name) {
			return fmt.Errorf("extra uplink name %q: want 1 to %d bytes", x, len(names[i].Name)-1)
		}
		for j := 0; j < len(x); j++ {
			names[i].Name[j] = int8(x[j])
		}
	}
	for i := range names {
		if err := s.xuplinks.Update(uint32(i), &names[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write map l3_xuplinks: %w", err)
		}
	}
	if err := s.cfg.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write map l3_config: %w", err)
	}
	return nil
}

func cstr(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// CounterNames are the verdict counters, in the order of bpf/l3iso.h enum
// l3_counter. Each container has every counter; id 0 counts host processes.
var CounterNames = []string{
	sockL3CounterL3C_BIND_ALLOWED:         "bind_allowed",
	sockL3CounterL3C_BIND_DENIED_FOREIGN:  "bind_denied_foreign",
	sockL3CounterL3C_BIND_DENIED_PORT:     "bind_denied_port",
	sockL3CounterL3C_BIND_REWRITTEN:       "bind_rewritten",
	sockL3CounterL3C_CONNECT_ALLOWED:      "connect_allowed",
	sockL3CounterL3C_SRC_REWRITTEN:        "source_rewritten",
	sockL3CounterL3C_SEND_DENIED_SPOOF:    "send_denied_spoof",
	sockL3CounterL3C_NO_ADDR:              "denied_no_address",
	sockL3CounterL3C_LOOP_REMAPPED:        "loopback_remapped",
	sockL3CounterL3C_INGRESS_DROP_FOREIGN: "ingress_dropped_foreign",
	sockL3CounterL3C_EGRESS_DROP_SPOOF:    "egress_dropped_spoof",
	sockL3CounterL3C_HOST_BIND_DENIED:     "host_bind_denied",
	sockL3CounterL3C_HOST_INGRESS_DROP:    "host_ingress_dropped",
	sockL3CounterL3C_HOST_SRC_REWRITTEN:   "host_source_rewritten",
	sockL3CounterL3C_JOIN_ALLOWED:         "join_allowed",
	sockL3CounterL3C_JOIN_DENIED:          "join_denied",

	sockL3CounterL3C_TC_REDIRECT_IN:       "tc_redirected_in",
	sockL3CounterL3C_TC_REDIRECT_OUT:      "tc_redirected_out",
	sockL3CounterL3C_TC_TO_HOST:           "tc_to_host",
	sockL3CounterL3C_TC_DROP_SPOOF:        "tc_dropped_spoof",
	sockL3CounterL3C_TC_DROP_NO_ROUTE:     "tc_dropped_no_route",
	sockL3CounterL3C_TC_DROP_MALFORMED:    "tc_dropped_malformed",
	sockL3CounterL3C_TC_DROP_UNKNOWN_PORT: "tc_dropped_unknown_port",

	sockL3CounterL3C_GROUP_COPY:        "group_copies",
	sockL3CounterL3C_GROUP_NO_LISTENER: "group_no_listener",
	sockL3CounterL3C_GROUP_LOST:        "group_copies_lost",
	sockL3CounterL3C_GROUP_FILTERED:    "group_copies_filtered",

	sockL3CounterL3C_BIND_INUSE:  "bind_denied_in_use",
	sockL3CounterL3C_SOCK_QUOTA:  "socket_quota_exceeded",
	sockL3CounterL3C_STEERED:     "steered",
	sockL3CounterL3C_REFUSED:     "refused",
	sockL3CounterL3C_LOOP_DENIED: "loopback_denied",
	sockL3CounterL3C_EVENTS_LOST: "events_lost",

	sockL3CounterL3C_CONNECT_BOUND: "connect_denied_bound_port",
}

// HostName is how every output (stats, metrics' container label, monitor)
// names id 0: the processes outside every container.
const HostName = "(host)"

// Counters are one container's verdict counters, summed over CPUs, by name.
type Counters map[string]uint64

// newEpoch starts a new epoch of id's socket registrations (l3_quota).
func (s *Set) newEpoch(id uint32) error {
	if id == 0 {
		return nil
	}
	var q sockL3Qval
	if err := s.quota.Lookup(id, &q); err != nil {
		return fmt.Errorf("read map l3_quota: %w", err)
	}
	q = sockL3Qval{Epoch: q.Epoch + 1}
	if err := s.quota.Update(id, &q, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset the socket quota of container %d: %w", id, err)
	}
	return nil
}

// SocketQuota is how many registrations (listening sockets, broadcast and
// multicast listener entries) a container's sockets may hold.
const SocketQuota = int(sockL3LimitsL3SOCK_QUOTA)

// QuotaUsed is how many of its SocketQuota container id's sockets hold.
func (s *Set) QuotaUsed(id uint32) (int, error) {
	var q sockL3Qval
	if err := s.quota.Lookup(id, &q); err != nil {
		return 0, fmt.Errorf("read map l3_quota: %w", err)
	}
	return int(q.Used), nil
}

// ReadCounters sums container id's counters over CPUs.
func (s *Set) ReadCounters(id uint32) (Counters, error) {
	var vals []sockL3Stats
	out := Counters{}
	for _, n := range CounterNames {
		if n != "" {
			out[n] = 0
		}
	}
	if err := s.counters.Lookup(id, &vals); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		return nil, fmt.Errorf("read counters of container %d: %w", id, err)
	}
	for _, v := range vals {
		for i, n := range CounterNames {
			if n != "" {
				out[n] += v.C[i]
			}
		}
	}
	return out, nil
}

// ip4From and ip4To convert an IPv4 address in network order, as the
// programs read it from a 32-bit word, to and from netip (0: none).
func ip4From(v uint32) netip.Addr {
	if v == 0 {
		return netip.Addr{}
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func ip4To(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}
