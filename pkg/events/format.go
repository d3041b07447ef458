package events

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
)

// Event is one denial or drop as `l3iso monitor` prints it (-o json: one
// object per line, Kind "event").
type Event struct {
	Kind        string    `json:"kind"` // "event"
	Time        time.Time `json:"time"` // UTC wall time (from the record's CLOCK_BOOTTIME)
	Container   string    `json:"container"`
	ContainerID uint32    `json:"container_id"` // 0: the host
	PID         uint32    `json:"pid"`          // 0 without a task (packets)
	Comm        string    `json:"comm,omitempty"`
	Type        string    `json:"type"`    // bind, connect, sendmsg, ingress, egress, join, tc, lookup
	Reason      string    `json:"reason"`  // the counter that counted it (`l3iso stats`)
	Verdict     string    `json:"verdict"` // denied (the call failed), dropped (a packet), refused (a join; a connection nobody listens for)
	Errno       int       `json:"errno"`   // what the application got; 0 for a silent drop
	Error       string    `json:"error,omitempty"`
	Family      int       `json:"family"` // 4 or 6
	Proto       string    `json:"proto"`  // tcp, udp, icmp, ... ("17" if unknown)
	// Addr and Port: the requested address (bind; join: the group) or the
	// source; Dst and DstPort: the destination, where there is one.
	Addr    string `json:"addr,omitempty"`
	Port    uint16 `json:"port"`
	Dst     string `json:"dst,omitempty"`
	DstPort uint16 `json:"dst_port,omitempty"`
	// Owner: for a denied bind, the container that owns the address.
	Owner   string `json:"owner,omitempty"`
	OwnerID uint32 `json:"owner_id,omitempty"`
}

// Lost says that events of a container were lost (-o json: Kind "lost").
type Lost struct {
	Kind        string    `json:"kind"` // "lost"
	Time        time.Time `json:"time"`
	Container   string    `json:"container"`
	ContainerID uint32    `json:"container_id"`
	Lost        uint64    `json:"lost"` // since the last report
	// Total is the container's events_lost counter
	// (l3iso_events_lost_total).
	Total uint64 `json:"total"`
}

// verdict is what happened: a call that failed is denied, a packet
// dropped; a refused join, and a connection or datagram nobody listens
// for, are refused.
func verdict(e maps.Event) string {
	switch {
	case e.Reason == "join_denied" || e.Reason == "refused":
		return "refused"
	case e.Errno != 0:
		return "denied"
	}
	return "dropped"
}

// names resolves container ids; a container deleted since (or never
// known) shows as "id N".
type names func(id uint32) string

// toEvent turns a record into what monitor prints.
func toEvent(e maps.Event, at time.Time, name names) Event {
	out := Event{
		Kind: "event", Time: at.UTC(), Container: name(e.ID), ContainerID: e.ID, PID: e.PID, Comm: e.Comm,
		Type: e.Type, Reason: e.Reason, Verdict: verdict(e), Errno: int(e.Errno),
		Family: int(e.Family), Proto: maps.ProtoName(e.Proto), Port: e.Port, DstPort: e.Port2,
	}
	if e.Errno != 0 {
		out.Error = unix.ErrnoName(e.Errno)
	}
	if e.Addr.IsValid() {
		out.Addr = e.Addr.String()
	}
	if e.Addr2.IsValid() {
		out.Dst = e.Addr2.String()
	}
	if e.Owner != 0 {
		out.Owner, out.OwnerID = name(e.Owner), e.Owner
	}
	return out
}

// hostPort renders an address and port ("10.77.0.2:80", "[fd77::1]:80",
// "*" for none; the port left out where it is 0 and the address is known).
func hostPort(addr string, port uint16) string {
	if addr == "" {
		if port == 0 {
			return "*"
		}
		return "*:" + strconv.Itoa(int(port))
	}
	if port == 0 {
		return addr
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return addr + ":" + strconv.Itoa(int(port))
	}
	return netip.AddrPortFrom(a, port).String()
}

// TimeFormat is the time of text lines: UTC, milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z"

// Text is the event as one line, e.g.
//
//	2026-12-07T10:02:03.123Z web pid 4123 (nginx) bind 10.77.0.2:80/tcp denied: owned by container "db" (EACCES)
//	2026-12-07T10:02:04.001Z api tc 10.78.0.9 -> 1.1.1.1:443/tcp dropped: source 10.78.0.9 is not its own
func (e Event) Text() string {
	var b strings.Builder
	b.WriteString(e.Time.UTC().Format(TimeFormat))
	b.WriteString(" " + e.Container)
	if e.PID != 0 {
		fmt.Fprintf(&b, " pid %d (%s)", e.PID, e.Comm)
	}
	b.WriteString(" " + e.Type + " ")
	switch {
	case e.Type == "bind" || e.Type == "join":
		b.WriteString(hostPort(e.Addr, e.Port))
	default:
		b.WriteString(hostPort(e.Addr, e.Port) + " -> " + hostPort(e.Dst, e.DstPort))
	}
	b.WriteString("/" + e.Proto + " " + e.Verdict + ": " + e.detail())
	if e.Error != "" {
		b.WriteString(" (" + e.Error + ")")
	}
	return b.String()
}

// detail says why, in words, by reason.
func (e Event) detail() string {
	owner := "another container"
	if e.Owner != "" {
		owner = fmt.Sprintf("container %q", e.Owner)
	}
	fam := "IPv" + strconv.Itoa(e.Family)
	switch e.Reason {
	case "bind_denied_foreign":
		if e.Owner != "" {
			return "owned by " + owner
		}
		return "not an address it owns"
	case "bind_denied_port":
		return "port owned by " + owner
	case "bind_denied_in_use":
		return "it holds that address and port already"
	case "socket_quota_exceeded":
		return "its socket quota is full"
	case "host_bind_denied":
		return "a container's address (owned by " + owner + ")"
	case "send_denied_spoof":
		return "source " + e.Addr + " is not its own"
	case "denied_no_address":
		return "it has no " + fam + " address"
	case "connect_denied_bound_port":
		return "its socket is bound to a port (an l3iso shadow), so no source can be set: bind port 0, or, for UDP, an address of its own"
	case "loopback_denied":
		return "another's loopback"
	case "ingress_dropped_foreign":
		return "for an address it does not own"
	case "egress_dropped_spoof", "tc_dropped_spoof":
		return "source " + e.Addr + " is not its own"
	case "host_ingress_dropped":
		return "a host socket got a packet for a container's address"
	case "join_denied":
		return "group not in its policy"
	case "tc_dropped_no_route":
		return "no route to the destination"
	case "tc_dropped_malformed":
		return "malformed " + fam + " header"
	case "tc_dropped_unknown_port":
		return "from a veth of no container"
	case "group_no_listener":
		return "no container listens for it"
	case "group_copies_lost":
		return "its listener was gone"
	case "group_copies_filtered":
		return "its socket's source filter refused it"
	case "refused":
		return "nobody of it listens there"
	}
	return e.Reason
}

// Text is the loss report as one line.
func (l Lost) Text() string {
	return fmt.Sprintf("%s %s ... %s events lost (rate limit or full ring buffer; %d in all)",
		l.Time.UTC().Format(TimeFormat), l.Container, thousands(l.Lost), l.Total)
}

// thousands renders n with thousands separators: 1,204.
func thousands(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
