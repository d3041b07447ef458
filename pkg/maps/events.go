package maps

import (
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"
)

// EventsPin is the pin name (in <bpffs>/maps) of l3_events, the BPF ring
// buffer into which the programs write a record of every denial and drop
// (bpf/l3iso.h, struct l3_event): `l3iso monitor` reads it.
const EventsPin = "l3_events"

// eventRecord is struct l3_event of bpf/l3iso.h, as bpf2go generates it.
type eventRecord = sockL3Event

// EventSize is the size of one record of l3_events.
const EventSize = int(unsafe.Sizeof(eventRecord{}))

// EventTypes are the names of enum l3_event_type (bpf/l3iso.h), by value:
// the operation that was denied or the path where a packet was dropped.
var EventTypes = []string{
	sockL3EventTypeL3EV_BIND:    "bind",    // bind (and its post_bind registration)
	sockL3EventTypeL3EV_CONNECT: "connect", // connect
	sockL3EventTypeL3EV_SENDMSG: "sendmsg", // sendto / sendmsg
	sockL3EventTypeL3EV_INGRESS: "ingress", // a packet to a socket (cgroup_skb ingress)
	sockL3EventTypeL3EV_EGRESS:  "egress",  // a packet from a socket (cgroup_skb egress)
	sockL3EventTypeL3EV_JOIN:    "join",    // a multicast join
	sockL3EventTypeL3EV_TC:      "tc",      // a packet of a netns container, or to a group (TC)
	sockL3EventTypeL3EV_LOOKUP:  "lookup",  // a connection or datagram nobody listens for (sk_lookup)
}

// Event is one decoded record of l3_events.
type Event struct {
	Boot   uint64 // CLOCK_BOOTTIME, ns
	ID     uint32 // container id; 0: the host
	PID    uint32 // tgid; 0 without a task (packets)
	Comm   string // the task's comm; "" without a task
	Type   string // EventTypes; "type(N)" for a value this binary does not know
	Reason string // the counter that counted it (CounterNames); "reason(N)" if unknown
	// Errno is what the application got (EADDRNOTAVAIL, EACCES, EPERM...);
	// 0 for a silent drop.
	Errno  syscall.Errno
	Family uint8 // 4 or 6
	Proto  uint8 // IPPROTO_*
	// Addr is the requested address (bind; join: the group) or the source;
	// Addr2 the destination, where there is one. The zero Addr: none.
	Addr, Addr2 netip.Addr
	Port, Port2 uint16
	// Owner is, for a denied bind, the container that owns the address
	// (0: nobody, or the host).
	Owner uint32
}

// DecodeEvent decodes one record of l3_events. A record longer than this
// binary's struct (a newer BPF side that added fields) decodes the fields
// it knows.
func DecodeEvent(b []byte) (Event, error) {
	if len(b) < EventSize {
		return Event{}, fmt.Errorf("event record of %d bytes, want %d: l3iso and its pinned programs differ (run `l3iso up`)", len(b), EventSize)
	}
	var r eventRecord
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), EventSize), b)
	e := Event{
		Boot: r.Ts, ID: r.Id, PID: r.Pid, Comm: cstr(r.Comm[:]),
		Type: fmt.Sprintf("type(%d)", r.Type), Reason: fmt.Sprintf("reason(%d)", r.Reason),
		Family: r.Family, Proto: r.Proto, Port: r.Port, Port2: r.Port2, Owner: r.Owner,
		Addr: eventAddr(r.Addr), Addr2: eventAddr(r.Addr2),
	}
	if int(r.Type) < len(EventTypes) && EventTypes[r.Type] != "" {
		e.Type = EventTypes[r.Type]
	}
	if int(r.Reason) < len(CounterNames) && CounterNames[r.Reason] != "" {
		e.Reason = CounterNames[r.Reason]
	}
	if r.Err > 0 {
		e.Errno = syscall.Errno(r.Err)
	}
	return e, nil
}

// eventAddr is an address of a record: IPv4 mapped, all zero for none.
func eventAddr(a sockL3Addr) netip.Addr {
	if a == (sockL3Addr{}) {
		return netip.Addr{}
	}
	return fromAddr(a)
}

// EncodeEvent is DecodeEvent's inverse, for tests that write records into
// a ring buffer themselves; Type and Reason must be known names.
func EncodeEvent(e Event) ([]byte, error) {
	r := eventRecord{Ts: e.Boot, Id: e.ID, Pid: e.PID, Family: e.Family, Proto: e.Proto, Port: e.Port, Port2: e.Port2, Owner: e.Owner, Err: int32(e.Errno)}
	for i := 0; i < len(e.Comm) && i < len(r.Comm)-1; i++ {
		r.Comm[i] = int8(e.Comm[i])
	}
	if e.Addr.IsValid() {
		r.Addr = toAddr(e.Addr)
	}
	if e.Addr2.IsValid() {
		r.Addr2 = toAddr(e.Addr2)
	}
	found := 0
	for i, n := range EventTypes {
		if n != "" && n == e.Type {
			r.Type, found = uint16(i), found+1
		}
	}
	for i, n := range CounterNames {
		if n != "" && n == e.Reason {
			r.Reason, found = uint16(i), found+1
		}
	}
	if found != 2 {
		return nil, fmt.Errorf("event type %q or reason %q unknown", e.Type, e.Reason)
	}
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&r)), EventSize)...), nil
}
