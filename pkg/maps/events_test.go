package maps

import (
	"net/netip"
	"syscall"
	"testing"
)

func TestEventRoundTrip(t *testing.T) {
	for _, e := range []Event{
		{Boot: 123456789, ID: 3, PID: 4123, Comm: "nginx", Type: "bind", Reason: "bind_denied_port", Errno: syscall.EACCES,
			Family: 4, Proto: 6, Addr: netip.MustParseAddr("10.77.0.2"), Port: 80, Owner: 5},
		{Boot: 1, ID: 0, Type: "ingress", Reason: "host_ingress_dropped", Family: 6, Proto: 17,
			Addr: netip.MustParseAddr("fd77::9"), Port: 5353, Addr2: netip.MustParseAddr("fd77::1"), Port2: 53},
		{Boot: 2, ID: 7, PID: 1, Comm: "a-very-long-command-name", Type: "join", Reason: "join_denied", Errno: syscall.EPERM,
			Family: 4, Proto: 17, Addr: netip.MustParseAddr("239.9.9.9")},
	} {
		b, err := EncodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != EventSize {
			t.Fatalf("encoded %d bytes, want %d", len(b), EventSize)
		}
		got, err := DecodeEvent(append(b, 0, 0, 0, 0, 0, 0, 0, 0)) // a longer (newer) record decodes too
		if err != nil {
			t.Fatal(err)
		}
		want := e
		if len(want.Comm) > 15 {
			want.Comm = want.Comm[:15] // comm is 16 bytes with its NUL, as the kernel's
		}
		if got != want {
			t.Errorf("round trip:\n got  %+v\n want %+v", got, want)
		}
	}
	if _, err := DecodeEvent(make([]byte, EventSize-1)); err == nil {
		t.Error("a short record decoded without error")
	}
	b, _ := EncodeEvent(Event{Type: "bind", Reason: "bind_allowed"})
	b[32], b[34] = 200, 200 // type and reason this binary does not know
	if got, _ := DecodeEvent(b); got.Type != "type(200)" || got.Reason != "reason(200)" {
		t.Errorf("unknown type and reason decode as %q, %q", got.Type, got.Reason)
	}
}
