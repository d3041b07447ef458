package events

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l3iso/l3iso/pkg/maps"
)

func TestText(t *testing.T) {
	at := time.Date(2026, 12, 7, 10, 2, 3, 123456789, time.UTC)
	names := func(id uint32) string {
		switch id {
		case 0:
			return maps.HostName
		case 3:
			return "web"
		case 5:
			return "db"
		}
		return "id 9"
	}
	for _, c := range []struct {
		e    maps.Event
		want string
	}{
		{maps.Event{ID: 3, PID: 4123, Comm: "nginx", Type: "bind", Reason: "bind_denied_port", Errno: syscall.EACCES, Family: 4, Proto: 6,
			Addr: netip.MustParseAddr("10.77.0.2"), Port: 80, Owner: 5},
			`2026-12-07T10:02:03.123Z web pid 4123 (nginx) bind 10.77.0.2:80/tcp denied: port owned by container "db" (EACCES)`},
		{maps.Event{ID: 3, PID: 7, Comm: "python3", Type: "bind", Reason: "bind_denied_foreign", Errno: syscall.EADDRNOTAVAIL, Family: 6, Proto: 17,
			Addr: netip.MustParseAddr("fd77::9"), Port: 53},
			`2026-12-07T10:02:03.123Z web pid 7 (python3) bind [fd77::9]:53/udp denied: not an address it owns (EADDRNOTAVAIL)`},
		{maps.Event{ID: 9, Type: "tc", Reason: "tc_dropped_spoof", Family: 4, Proto: 6,
			Addr: netip.MustParseAddr("10.78.0.9"), Port: 40000, Addr2: netip.MustParseAddr("1.1.1.1"), Port2: 443},
			`2026-12-07T10:02:03.123Z id 9 tc 10.78.0.9:40000 -> 1.1.1.1:443/tcp dropped: source 10.78.0.9 is not its own`},
		{maps.Event{ID: 0, PID: 1, Comm: "sh", Type: "join", Reason: "join_denied", Errno: syscall.EPERM, Family: 4, Proto: 17,
			Addr: netip.MustParseAddr("239.1.1.1")},
			`2026-12-07T10:02:03.123Z (host) pid 1 (sh) join 239.1.1.1/udp refused: group not in its policy (EPERM)`},
		{maps.Event{ID: 3, Type: "lookup", Reason: "refused", Family: 4, Proto: 6,
			Addr: netip.MustParseAddr("10.77.0.9"), Port: 5555, Addr2: netip.MustParseAddr("10.77.0.1"), Port2: 81},
			`2026-12-07T10:02:03.123Z web lookup 10.77.0.9:5555 -> 10.77.0.1:81/tcp refused: nobody of it listens there`},
		{maps.Event{ID: 3, PID: 2, Comm: "x", Type: "connect", Reason: "denied_no_address", Errno: syscall.EADDRNOTAVAIL, Family: 6, Proto: 6,
			Addr2: netip.MustParseAddr("fd00::1"), Port2: 80},
			`2026-12-07T10:02:03.123Z web pid 2 (x) connect * -> [fd00::1]:80/tcp denied: it has no IPv6 address (EADDRNOTAVAIL)`},
	} {
		if got := toEvent(c.e, at, names).Text(); got != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
	l := Lost{Time: at, Container: "web", Lost: 1204, Total: 5000}
	if got := l.Text(); got != "2026-12-07T10:02:03.123Z web ... 1,204 events lost (rate limit or full ring buffer; 5000 in all)" {
		t.Errorf("lost: %s", got)
	}
}

func TestMatch(t *testing.T) {
	e := maps.Event{Type: "egress", Reason: "egress_dropped_spoof"}
	for _, c := range []struct {
		match []string
		want  bool
	}{
		{nil, true}, {[]string{"egress"}, true}, {[]string{"spoof"}, true}, {[]string{"dropped"}, true},
		{[]string{"egress_dropped_spoof"}, true}, {[]string{"bind", "connect"}, false}, {[]string{"denied"}, false},
	} {
		if got := matches(c.match, e); got != c.want {
			t.Errorf("matches(%v, %s/%s) = %v, want %v", c.match, e.Type, e.Reason, got, c.want)
		}
	}
	if err := CheckMatch([]string{"bind", "spoof", "refused", "quota"}); err != nil {
		t.Error(err)
	}
	if err := CheckMatch([]string{"bnid"}); err == nil || !strings.Contains(err.Error(), `"bnid"`) {
		t.Errorf("a misspelt --type: %v", err)
	}
}
