package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func ip(s string) netip.Addr       { return netip.MustParseAddr(s) }
func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestParseAddressValid(t *testing.T) {
	tests := []struct {
		in   string
		want Address
		text string // canonical form; "" means in
	}{
		{in: "10.77.0.1", want: Address{Addr: ip("10.77.0.1")}},
		{in: "10.77.0.1/24", want: Address{Addr: ip("10.77.0.1"), Subnet: prefix("10.77.0.0/24")}},
		{in: "10.77.0.1/32", want: Address{Addr: ip("10.77.0.1"), Subnet: prefix("10.77.0.1/32")}},
		{in: "10.77.0.0/31", want: Address{Addr: ip("10.77.0.0"), Subnet: prefix("10.77.0.0/31")}},
		{in: "10.77.0.2/30", want: Address{Addr: ip("10.77.0.2"), Subnet: prefix("10.77.0.0/30")}},
		{in: "192.0.2.200/1", want: Address{Addr: ip("192.0.2.200"), Subnet: prefix("128.0.0.0/1")}},
		{in: "fd77::1", want: Address{Addr: ip("fd77::1")}},
		{in: "FD77:0:0::1", want: Address{Addr: ip("fd77::1")}, text: "fd77::1"},
		{in: "fd77::1/64", want: Address{Addr: ip("fd77::1"), Subnet: prefix("fd77::/64")}},
		{in: "2001:db8::5/128", want: Address{Addr: ip("2001:db8::5"), Subnet: prefix("2001:db8::5/128")}},
		{in: "10.77.0.9:5432/tcp", want: Address{Addr: ip("10.77.0.9"), Proto: ProtoTCP, PortLo: 5432, PortHi: 5432}},
		{in: "10.77.0.9:8000-8099/udp", want: Address{Addr: ip("10.77.0.9"), Proto: ProtoUDP, PortLo: 8000, PortHi: 8099}},
		{in: "10.77.0.9:80-80/tcp", want: Address{Addr: ip("10.77.0.9"), Proto: ProtoTCP, PortLo: 80, PortHi: 80}, text: "10.77.0.9:80/tcp"},
		{in: "10.77.0.9:1-65535/tcp", want: Address{Addr: ip("10.77.0.9"), Proto: ProtoTCP, PortLo: 1, PortHi: 65535}},
		{in: "[fd77::1]:8080/tcp", want: Address{Addr: ip("fd77::1"), Proto: ProtoTCP, PortLo: 8080, PortHi: 8080}},
		{in: "[fd77::1]:8000-8099/udp", want: Address{Addr: ip("fd77::1"), Proto: ProtoUDP, PortLo: 8000, PortHi: 8099}},
		{in: "[FD77::0:1]:53/udp", want: Address{Addr: ip("fd77::1"), Proto: ProtoUDP, PortLo: 53, PortHi: 53}, text: "[fd77::1]:53/udp"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddress(tt.in)
			if err != nil {
				t.Fatalf("ParseAddress(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseAddress(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			text := tt.text
			if text == "" {
				text = tt.in
			}
			if got.String() != text {
				t.Errorf("String() = %q, want %q", got.String(), text)
			}
			again, err := ParseAddress(got.String())
			if err != nil || again != got {
				t.Errorf("round trip of %q: got %#v, %v", got.String(), again, err)
			}
			if got.WholeIP() != (got.PortLo == 0) {
				t.Errorf("WholeIP() = %v for %q", got.WholeIP(), tt.in)
			}
		})
	}
}

func TestParseAddressInvalid(t *testing.T) {
	tests := []struct {
		in   string
		want []string // substrings of the error
	}{
		{"", []string{"empty address"}},
		{"10.0.0.1 ", []string{"spaces are not allowed"}},
		{"web", []string{"not an IP address"}},
		{"10.0.0", []string{"not an IP address"}},
		{"::ffff:10.0.0.1", []string{"IPv4-mapped", "write it as 10.0.0.1"}},
		{"::ffff:10.0.0.1/120", []string{"write it as 10.0.0.1/24"}},
		{"[::ffff:10.0.0.1]:80/tcp", []string{"write it as 10.0.0.1:80/tcp"}},
		{"fd77::1%eth0", []string{`zone "%eth0" is not allowed`, "write fd77::1"}},
		{"fd77::1%eth0/64", []string{`zone "%eth0"`, "write fd77::1/64"}},
		{"[fd77::1%eth0]:80/tcp", []string{`zone "%eth0"`, "write [fd77::1]:80/tcp"}},
		{"10.0.0.1%eth0", []string{`zone "%eth0" is not allowed`}},
		{"0.0.0.0", []string{"0.0.0.0 is the unspecified address"}},
		{"::", []string{":: is the unspecified address"}},
		{"127.0.0.1", []string{"loopback address", "loopback: isolated or host"}},
		{"127.3.2.1", []string{"loopback address"}},
		{"::1", []string{"::1 is a loopback address"}},
		{"239.1.1.1", []string{"multicast group", "under multicast"}},
		{"ff02::1", []string{"multicast group"}},
		{"169.254.1.1", []string{"link-local", "routable"}},
		{"fe80::1", []string{"fe80::1 is link-local"}},
		{"255.255.255.255", []string{"limited broadcast"}},
		{"10.0.0.1/33", []string{"prefix /33 is out of range: an IPv4 prefix is 1-32"}},
		{"fd77::1/129", []string{"prefix /129 is out of range: an IPv6 prefix is 1-128"}},
		{"10.0.0.1/0", []string{"prefix /0 is out of range"}},
		{"10.0.0.1/024", []string{`invalid prefix length "024"`}},
		{"10.0.0.1/2x", []string{`invalid prefix length "2x"`}},
		{"10.0.0.1/99999999999999999999", []string{"out of range"}},
		{"10.0.0.1/", []string{`nothing after "/"`}},
		{"10.77.0.0/24", []string{"network address of 10.77.0.0/24", "e.g. 10.77.0.1/24"}},
		{"10.77.0.255/24", []string{"broadcast address of 10.77.0.0/24", "e.g. 10.77.0.1/24"}},
		{"10.77.0.3/30", []string{"10.77.0.3 is the broadcast address of 10.77.0.0/30"}},
		{"10.0.0.1:0/tcp", []string{"port 0 is not allowed: ports are 1-65535"}},
		{"10.0.0.1:0-80/tcp", []string{"port 0 is not allowed"}},
		{"10.0.0.1:90-80/tcp", []string{"port range 90-80 is backwards: write 80-90"}},
		{"10.0.0.1:65536/tcp", []string{"port 65536 is out of range"}},
		{"10.0.0.1:http/tcp", []string{`invalid port "http"`}},
		{"10.0.0.1:/tcp", []string{"missing port"}},
		{"10.0.0.1:80-/tcp", []string{"missing port"}},
		{"10.0.0.1:80/sctp", []string{`unknown protocol "sctp": write tcp or udp`}},
		{"10.0.0.1:80/TCP", []string{`unknown protocol "TCP": write tcp or udp`}},
		{"10.0.0.1:80", []string{"a port needs a protocol: write 10.0.0.1:80/tcp or 10.0.0.1:80/udp"}},
		{"10.0.0.1:80-90", []string{"write 10.0.0.1:80-90/tcp or 10.0.0.1:80-90/udp"}},
		{"[fd77::1]:8080", []string{"write [fd77::1]:8080/tcp or [fd77::1]:8080/udp"}},
		{"10.0.0.1/24:80/tcp", []string{"a prefix cannot be combined with a port: write 10.0.0.1:80/tcp"}},
		{"10.0.0.1:80/24", []string{"a prefix cannot be combined with a port: write 10.0.0.1:80/tcp"}},
		{"[fd77::1/64]:80/udp", []string{"a prefix cannot be combined with a port: write [fd77::1]:80/udp"}},
		{"10.0.0.1/tcp", []string{"/tcp needs a port: write 10.0.0.1:PORT/tcp", "drop /tcp"}},
		{"fd77::1:80/tcp", []string{"takes brackets", "[fd77::1]:8080/tcp"}},
		{"[fd77::1]/udp", []string{"/udp needs a port"}},
		{"[fd77::1]", []string{"brackets are only for an IPv6 address with a port: write fd77::1"}},
		{"[fd77::1]/64", []string{"write fd77::1/64"}},
		{"[fd77::1:80/tcp", []string{`missing "]"`}},
		{"[10.0.0.1]:80/tcp", []string{"brackets are only for IPv6: write 10.0.0.1:80/tcp"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := ParseAddress(tt.in)
			if err == nil {
				t.Fatalf("ParseAddress(%q) = %v, want an error", tt.in, a)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("invalid address %q: ", tt.in)) {
				t.Errorf("error %q does not start with the address", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			checkMessageStyle(t, msg)
		})
	}
}

// checkMessageStyle checks the error conventions: lowercase start, no
// trailing period.
func checkMessageStyle(t *testing.T, msg string) {
	t.Helper()
	if msg == "" || strings.HasSuffix(msg, ".") {
		t.Errorf("error %q ends with a period", msg)
	}
	if c := msg[0]; c >= 'A' && c <= 'Z' {
		t.Errorf("error %q starts with a capital letter", msg)
	}
}

func TestOverlaps(t *testing.T) {
	whole := func(s string) Address { return Address{Addr: ip(s)} }
	ports := func(s string, p Proto, lo, hi uint16) Address {
		return Address{Addr: ip(s), Proto: p, PortLo: lo, PortHi: hi}
	}
	tests := []struct {
		name string
		a, b Address
		want bool
	}{
		{"same whole IP", whole("10.0.0.1"), whole("10.0.0.1"), true},
		{"different IPs", whole("10.0.0.1"), whole("10.0.0.2"), false},
		{"same IP different subnets", Address{Addr: ip("10.0.0.1"), Subnet: prefix("10.0.0.0/24")}, Address{Addr: ip("10.0.0.1"), Subnet: prefix("10.0.0.0/16")}, true},
		{"whole IP and a port of it", whole("10.0.0.1"), ports("10.0.0.1", ProtoTCP, 80, 80), true},
		{"whole IP and a port of another IP", whole("10.0.0.1"), ports("10.0.0.2", ProtoTCP, 80, 80), false},
		{"same tcp port", ports("10.0.0.1", ProtoTCP, 80, 80), ports("10.0.0.1", ProtoTCP, 80, 80), true},
		{"tcp and udp on the same port", ports("10.0.0.1", ProtoTCP, 53, 53), ports("10.0.0.1", ProtoUDP, 53, 53), false},
		{"ranges touching at one port", ports("10.0.0.1", ProtoTCP, 80, 90), ports("10.0.0.1", ProtoTCP, 90, 100), true},
		{"adjacent ranges", ports("10.0.0.1", ProtoTCP, 80, 89), ports("10.0.0.1", ProtoTCP, 90, 100), false},
		{"range inside range", ports("10.0.0.1", ProtoUDP, 1, 65535), ports("10.0.0.1", ProtoUDP, 5000, 5001), true},
		{"any protocol matches tcp", ports("10.0.0.1", ProtoAny, 80, 80), ports("10.0.0.1", ProtoTCP, 80, 80), true},
		{"any protocol, disjoint ports", ports("10.0.0.1", ProtoAny, 80, 80), ports("10.0.0.1", ProtoTCP, 81, 81), false},
		{"IPv6 same port", ports("fd77::1", ProtoTCP, 8080, 8080), ports("fd77::1", ProtoTCP, 8000, 8099), true},
		{"IPv4 and IPv6", whole("10.0.0.1"), whole("fd77::1"), false},
		{"mapped and plain IPv4 are the same IP", whole("::ffff:10.0.0.1"), whole("10.0.0.1"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Overlaps(tt.b); got != tt.want {
				t.Errorf("%v.Overlaps(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
			if got := tt.b.Overlaps(tt.a); got != tt.want {
				t.Errorf("%v.Overlaps(%v) = %v, want %v (not symmetric)", tt.b, tt.a, got, tt.want)
			}
		})
	}
}

func TestBroadcast(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means none
	}{
		{"10.77.0.1/24", "10.77.0.255"},
		{"10.77.0.1/30", "10.77.0.3"},
		{"10.1.2.3/8", "10.255.255.255"},
		{"192.0.2.200/1", "255.255.255.255"},
		{"10.77.0.0/31", ""},
		{"10.77.0.1/32", ""},
		{"10.77.0.1", ""},
		{"fd77::1/64", ""},
		{"10.77.0.9:80/tcp", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := ParseAddress(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := a.Broadcast()
			if tt.want == "" {
				if ok {
					t.Errorf("Broadcast() = %v, want none", got)
				}
				return
			}
			if !ok || got != ip(tt.want) {
				t.Errorf("Broadcast() = %v, %v, want %s", got, ok, tt.want)
			}
		})
	}
}

func TestProtoString(t *testing.T) {
	for p, want := range map[Proto]string{ProtoAny: "any", ProtoTCP: "tcp", ProtoUDP: "udp", 132: "proto(132)"} {
		if got := p.String(); got != want {
			t.Errorf("Proto(%d).String() = %q, want %q", p, got, want)
		}
	}
}

func TestParseMulticast(t *testing.T) {
	tests := []struct {
		in      string
		want    string // the prefix; "" when an error is expected
		wantErr string
	}{
		{in: "239.1.1.1", want: "239.1.1.1/32"},
		{in: "239.1.1.0/24", want: "239.1.1.0/24"},
		{in: "224.0.0.0/4", want: "224.0.0.0/4"},
		{in: "ff15::42", want: "ff15::42/128"},
		{in: "ff00::/8", want: "ff00::/8"},
		{in: "10.0.0.1", wantErr: "10.0.0.1 is not multicast: groups are in 224.0.0.0/4 (IPv4) and ff00::/8 (IPv6)"},
		{in: "224.0.0.0/3", wantErr: "224.0.0.0/3 is not multicast"},
		{in: "fd77::/16", wantErr: "is not multicast"},
		{in: "239.1.1.1/24", wantErr: "239.1.1.1/24 has bits set past the prefix length: write 239.1.1.0/24"},
		{in: "::ffff:239.1.1.1", wantErr: "write it as 239.1.1.1"},
		{in: "ff02::1%eth0", wantErr: `zone "%eth0" is not allowed`},
		{in: "", wantErr: "empty group"},
		{in: "239.1.1.0/33", wantErr: "not a group or prefix"},
		{in: "group", wantErr: "not a group or prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMulticast(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseMulticast(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				checkMessageStyle(t, err.Error())
				return
			}
			if err != nil || got != prefix(tt.want) {
				t.Fatalf("ParseMulticast(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"a", true},
		{"0", true},
		{"web-1", true},
		{"web-", true},
		{strings.Repeat("a", 32), true},
		{strings.Repeat("a", 33), false},
		{"", false},
		{"-web", false},
		{"Web", false},
		{"web_1", false},
		{"web.1", false},
		{"wéb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "use 1-32 characters from a-z, 0-9 and '-'") {
				t.Errorf("error %q does not state the rule", err)
			}
		})
	}
}

func mustAddrs(t *testing.T, texts ...string) []Address {
	t.Helper()
	var as []Address
	for _, s := range texts {
		a, err := ParseAddress(s)
		if err != nil {
			t.Fatal(err)
		}
		as = append(as, a)
	}
	return as
}

func TestValidate(t *testing.T) {
	tooMany := make([]string, MaxAddresses+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("10.77.0.%d", i+1)
	}
	tests := []struct {
		name    string
		p       func(t *testing.T) *Policy
		wantErr []string // substrings; nil means valid
	}{
		{
			name: "defaults and sorting",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{
					{Name: "web", Addresses: mustAddrs(t, "10.77.0.1/24")},
					{Name: "db", Addresses: mustAddrs(t, "10.77.0.2/24")},
				}}
			},
		},
		{
			name: "bad name",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "Web", Addresses: mustAddrs(t, "10.77.0.1")}}}
			},
			wantErr: []string{`invalid container name "Web"`},
		},
		{
			name: "duplicate name",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{
					{Name: "web", Addresses: mustAddrs(t, "10.77.0.1")},
					{Name: "web", Addresses: mustAddrs(t, "10.77.0.2")},
				}}
			},
			wantErr: []string{`container "web" is defined twice: give each container one entry`},
		},
		{
			name: "no addresses",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web"}}}
			},
			wantErr: []string{`container "web" has no addresses`},
		},
		{
			name: "too many addresses",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: mustAddrs(t, tooMany...)}}}
			},
			wantErr: []string{`container "web" has 17 addresses: at most 16 are allowed`},
		},
		{
			name: "too many multicast entries",
			p: func(t *testing.T) *Policy {
				c := Container{Name: "web", Addresses: mustAddrs(t, "10.77.0.1")}
				for i := range MaxMulticast + 1 {
					c.Multicast = append(c.Multicast, prefix(fmt.Sprintf("239.1.1.%d/32", i)))
				}
				return &Policy{Containers: []Container{c}}
			},
			wantErr: []string{`container "web" has 9 multicast entries: at most 8 are allowed`},
		},
		{
			name: "unknown mode and loopback",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Mode: "bridge", Loopback: "open", Addresses: mustAddrs(t, "10.77.0.1")}}}
			},
			wantErr: []string{`unknown mode "bridge": write shared or netns`, `unknown loopback "open": write isolated or host`},
		},
		{
			name: "netns with host loopback",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Mode: ModeNetns, Loopback: LoopbackHost, Addresses: mustAddrs(t, "10.77.0.1")}}}
			},
			wantErr: []string{"loopback: host needs mode: shared"},
		},
		{
			name: "address built with a port but no protocol",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{Addr: ip("10.77.0.1"), PortLo: 80, PortHi: 80}}}}}
			},
			wantErr: []string{`container "web": invalid address "10.77.0.1:80/any": a port needs a protocol: write 10.77.0.1:80/tcp`},
		},
		{
			name: "address built with a protocol but no port",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{Addr: ip("fd77::1"), Proto: ProtoUDP}}}}}
			},
			wantErr: []string{"protocol udp needs a port: write [fd77::1]:PORT/udp"},
		},
		{
			name: "address built with a subnet and a port",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{Addr: ip("10.77.0.1"), Subnet: prefix("10.77.0.0/24"), Proto: ProtoTCP, PortLo: 80, PortHi: 80}}}}}
			},
			wantErr: []string{"a prefix cannot be combined with a port: write 10.77.0.1:80/tcp"},
		},
		{
			name: "address built with a mapped IP",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{Addr: ip("::ffff:10.77.0.1")}}}}}
			},
			wantErr: []string{"write it as 10.77.0.1"},
		},
		{
			name: "address built with a subnet not containing it",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{Addr: ip("10.77.0.1"), Subnet: prefix("10.78.0.0/16")}}}}}
			},
			wantErr: []string{"subnet 10.78.0.0/16 does not contain 10.77.0.1"},
		},
		{
			name: "zero address",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: []Address{{}}}}}
			},
			wantErr: []string{"no IP"},
		},
		{
			name: "multicast that is not multicast",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: mustAddrs(t, "10.77.0.1"), Multicast: []netip.Prefix{prefix("10.0.0.0/8")}}}}
			},
			wantErr: []string{"10.0.0.0/8 is not multicast"},
		},
		{
			name: "multicast listed twice",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: mustAddrs(t, "10.77.0.1"), Multicast: []netip.Prefix{prefix("239.1.1.1/32"), prefix("239.1.1.1/32")}}}}
			},
			wantErr: []string{"multicast group 239.1.1.1 is listed twice"},
		},
		{
			name: "shared IP on disjoint ports",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{
					{Name: "web", Addresses: mustAddrs(t, "10.77.0.9:80/tcp", "10.77.0.9:53/udp")},
					{Name: "dns", Addresses: mustAddrs(t, "10.77.0.9:53/tcp", "10.77.0.9:1000-2000/udp")},
				}}
			},
		},
		{
			name: "overlap across containers",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{
					{Name: "web", Addresses: mustAddrs(t, "10.77.0.9")},
					{Name: "db", Addresses: mustAddrs(t, "10.77.0.9:5432/tcp")},
				}}
			},
			wantErr: []string{`address 10.77.0.9:5432/tcp of container "db" overlaps 10.77.0.9 of container "web": an address:port may be owned by one container only`},
		},
		{
			name: "overlap within one container",
			p: func(t *testing.T) *Policy {
				return &Policy{Containers: []Container{{Name: "web", Addresses: mustAddrs(t, "10.77.0.1/24", "10.77.0.1:80/tcp")}}}
			},
			wantErr: []string{`address 10.77.0.1:80/tcp of container "web" overlaps its address 10.77.0.1/24: list each address:port once`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p(t)
			err := p.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				for i, c := range p.Containers {
					if c.Mode != ModeShared || c.Loopback != LoopbackIsolated {
						t.Errorf("container %q: mode %q loopback %q, want the defaults", c.Name, c.Mode, c.Loopback)
					}
					if i > 0 && p.Containers[i-1].Name >= c.Name {
						t.Errorf("containers not sorted: %q before %q", p.Containers[i-1].Name, c.Name)
					}
				}
				return
			}
			if err == nil {
				t.Fatal("Validate succeeded, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				checkMessageStyle(t, line)
			}
		})
	}
}

func TestFind(t *testing.T) {
	p, err := Parse("p.yaml", []byte("containers:\n  web: {addresses: [10.77.0.1]}\n  db: {addresses: [10.77.0.2]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, ok := p.Find("web")
	if !ok || c.Name != "web" || c.Addresses[0].String() != "10.77.0.1" {
		t.Errorf("Find(web) = %+v, %v", c, ok)
	}
	if c, ok := p.Find("nope"); ok || c != nil {
		t.Errorf("Find(nope) = %+v, %v", c, ok)
	}
	var nilPolicy *Policy
	if _, ok := nilPolicy.Find("web"); ok {
		t.Error("Find on a nil policy found something")
	}
	if names := []string{p.Containers[0].Name, p.Containers[1].Name}; !slices.Equal(names, []string{"db", "web"}) {
		t.Errorf("containers = %v, want sorted", names)
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // container summaries: name mode loopback addresses multicast
	}{
		{name: "empty file", yaml: ""},
		{name: "only comments", yaml: "# nothing yet\n"},
		{name: "null document", yaml: "~\n"},
		{name: "empty containers", yaml: "containers: {}\n"},
		{name: "null containers", yaml: "containers:\n"},
		{
			name: "full",
			yaml: `containers:
  web:
    mode: shared
    addresses: [10.77.0.1/24, fd77::1, 10.77.0.9:5432/tcp, "[fd77::9]:80-81/udp"]
    loopback: isolated
    multicast: [239.1.1.0/24, ff15::1]
  a-1:
    mode: netns
    addresses:
      - 10.77.1.1
`,
			want: []string{
				"a-1 netns isolated [10.77.1.1] []",
				"web shared isolated [10.77.0.1/24 fd77::1 10.77.0.9:5432/tcp [fd77::9]:80-81/udp] [239.1.1.0/24 ff15::1/128]",
			},
		},
		{
			name: "anchors and aliases",
			yaml: `containers:
  web:
    addresses: &shared [10.77.0.9:80/tcp]
    loopback: &lo host
  api:
    addresses: [10.77.0.9:81/tcp]
    loopback: *lo
`,
			want: []string{
				"api shared host [10.77.0.9:81/tcp] []",
				"web shared host [10.77.0.9:80/tcp] []",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var got []string
			for _, c := range p.Containers {
				got = append(got, fmt.Sprintf("%s %s %s %v %v", c.Name, c.Mode, c.Loopback, c.Addresses, c.Multicast))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // the whole error text
	}{
		{
			name: "unknown field",
			yaml: "containers:\n  web:\n    adresses: [10.77.0.1]\n",
			want: `p.yaml:3: container "web": unknown field "adresses": did you mean "addresses"?`,
		},
		{
			name: "unknown field far from any",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1]\n    ports: [80]\n",
			want: `p.yaml:4: container "web": unknown field "ports": the fields are mode, addresses, loopback, multicast`,
		},
		{
			name: "unknown top-level field",
			yaml: "contaners:\n  web: {}\n",
			want: `p.yaml:1: unknown field "contaners": did you mean "containers"?`,
		},
		{
			name: "merge key",
			yaml: "containers:\n  web:\n    <<: {mode: netns}\n    addresses: [10.77.0.1]\n",
			want: `p.yaml:3: container "web": unknown field "<<": YAML merge keys are not supported: write the fields out`,
		},
		{
			name: "bad address in a block list",
			yaml: "containers:\n  web:\n    addresses:\n      - 10.77.0.1/24\n      - 10.77.0.1:0/tcp\n",
			want: `p.yaml:5: container "web": invalid address "10.77.0.1:0/tcp": port 0 is not allowed: ports are 1-65535`,
		},
		{
			name: "bad address in a flow list",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1/24,\n      \"::ffff:10.0.0.1\"]\n",
			want: `p.yaml:4: container "web": invalid address "::ffff:10.0.0.1": IPv4-mapped IPv6 address ::ffff:10.0.0.1: write it as 10.0.0.1`,
		},
		{
			name: "unquoted address starting with :: in a flow list",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1/24, ::5]\n",
			want: `p.yaml:3: invalid YAML: did not find expected node content: quote an address that starts with "::" inside [...], e.g. ["::5"]`,
		},
		{
			name: "bad multicast",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1]\n    multicast: [10.0.0.1]\n",
			want: `p.yaml:4: container "web": invalid multicast group "10.0.0.1": 10.0.0.1 is not multicast: groups are in 224.0.0.0/4 (IPv4) and ff00::/8 (IPv6)`,
		},
		{
			name: "overlap names both containers",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.9]\n  db:\n    addresses: [10.77.0.9:5432/tcp]\n",
			want: `p.yaml:5: address 10.77.0.9:5432/tcp of container "db" overlaps 10.77.0.9 of container "web": an address:port may be owned by one container only`,
		},
		{
			name: "overlap within a container",
			yaml: "containers:\n  web:\n    addresses:\n      - 10.77.0.9:8000-8099/tcp\n      - 10.77.0.9:8080/tcp\n",
			want: `p.yaml:5: address 10.77.0.9:8080/tcp of container "web" overlaps its address 10.77.0.9:8000-8099/tcp: list each address:port once`,
		},
		{
			name: "duplicate container name",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1]\n  web:\n    addresses: [10.77.0.2]\n",
			want: `p.yaml:4: container "web" is defined twice (first at line 2): give each container one entry`,
		},
		{
			name: "duplicate field",
			yaml: "containers:\n  web:\n    mode: shared\n    addresses: [10.77.0.1]\n    mode: netns\n",
			want: `p.yaml:5: container "web": field "mode" is set twice (first at line 3): keep one`,
		},
		{
			name: "containers is a list",
			yaml: "containers: [web]\n",
			want: `p.yaml:1: containers must map each container name to its settings, not a list`,
		},
		{
			name: "addresses is a string",
			yaml: "containers:\n  web:\n    addresses: 10.77.0.1\n",
			want: `p.yaml:3: container "web": addresses must be a list, e.g. [10.77.0.1/24, fd77::1], not "10.77.0.1"`,
		},
		{
			name: "mode is a list",
			yaml: "containers:\n  web:\n    mode: [shared]\n    addresses: [10.77.0.1]\n",
			want: `p.yaml:3: container "web": mode must be shared or netns, not a list`,
		},
		{
			name: "mode is empty",
			yaml: "containers:\n  web:\n    mode:\n    addresses: [10.77.0.1]\n",
			want: `p.yaml:3: container "web": mode is empty: write shared or netns, or leave the field out for the default`,
		},
		{
			name: "container is a string",
			yaml: "containers:\n  web: 10.77.0.1\n",
			want: `p.yaml:2: container "web" must be a mapping of its settings (mode, addresses, loopback, multicast), not "10.77.0.1"`,
		},
		{
			name: "address entry is a mapping",
			yaml: "containers:\n  web:\n    addresses:\n      - {ip: 10.77.0.1}\n",
			want: `p.yaml:4: container "web": addresses entries must be single values, not a mapping`,
		},
		{
			name: "empty address entry",
			yaml: "containers:\n  web:\n    addresses:\n      - 10.77.0.1\n      -\n",
			want: `p.yaml:5: container "web": addresses has an empty entry: remove it`,
		},
		{
			name: "unquoted IPv6 with port in a flow list",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1, [fd77::1]:8080/tcp]\n",
			want: `p.yaml:3: container "web": addresses entry is a mapping, not an address: quote an IPv6 address with a port, e.g. "[fd77::1]:8080/tcp"`,
		},
		{
			name: "unquoted IPv6 with port in a block list",
			yaml: "containers:\n  web:\n    addresses:\n      - 10.77.0.1\n      - [fd77::1]:8080/tcp\n",
			want: `p.yaml:5: invalid YAML: did not find expected '-' indicator: quote an IPv6 address with a port, e.g. "[fd77::1]:8080/tcp"`,
		},
		{
			name: "policy is a list",
			yaml: "- web\n",
			want: `p.yaml:1: a policy is a mapping with a containers key, not a list`,
		},
		{
			name: "invalid name",
			yaml: "containers:\n  Web:\n    addresses: [10.77.0.1]\n",
			want: `p.yaml:2: invalid container name "Web": use 1-32 characters from a-z, 0-9 and '-', starting with a letter or digit`,
		},
		{
			name: "no addresses",
			yaml: "containers:\n  web:\n    mode: netns\n",
			want: `p.yaml:2: container "web" has no addresses: list at least one under addresses`,
		},
		{
			name: "unknown mode",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1]\n    mode: bridge\n",
			want: `p.yaml:4: container "web": unknown mode "bridge": write shared or netns`,
		},
		{
			name: "netns with host loopback",
			yaml: "containers:\n  web:\n    mode: netns\n    addresses: [10.77.0.1]\n    loopback: host\n",
			want: `p.yaml:5: container "web": loopback: host needs mode: shared (a netns container has its own loopback): remove loopback: host or use mode: shared`,
		},
		{
			name: "bad indentation",
			yaml: "containers:\n  web:\n    mode: shared\n   addresses: [10.77.0.1]\n",
			want: `p.yaml:4: invalid YAML: did not find expected key`,
		},
		{
			name: "bad indentation after a multi-line flow list",
			yaml: "containers:\n  web:\n    addresses: [\n      10.77.0.1,\n      10.77.0.2]\n    mode: shared\n   loopback: host\n",
			want: `p.yaml:7: invalid YAML: did not find expected key`,
		},
		{
			name: "bad indentation after a multi-line quoted string",
			yaml: "containers:\n  web:\n    mode: \"shared\n      \"\n    addresses: [10.77.0.1]\n  x: 1\n   y: 2\n",
			want: `p.yaml:7: invalid YAML: mapping values are not allowed in this context`,
		},
		{
			name: "unknown alias",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1]\n    mode: *m\n",
			want: `p.yaml:4: invalid YAML: unknown anchor 'm' referenced`,
		},
		{
			name: "tab indentation",
			yaml: "containers:\n\tweb: {}\n",
			want: `p.yaml:2: invalid YAML: found character that cannot start any token: indent with spaces, not tabs`,
		},
		{
			name: "mapping value in a plain scalar",
			yaml: "containers:\n  web:\n    mode: a: b\n",
			want: `p.yaml:3: invalid YAML: mapping values are not allowed in this context`,
		},
		{
			name: "unclosed flow list",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1\n",
			want: `p.yaml:3: invalid YAML: did not find expected ',' or ']'`,
		},
		{
			name: "invalid UTF-8",
			yaml: "containers:\n  web:\n    mode: \xff\n",
			want: `p.yaml:3: invalid YAML: invalid leading UTF-8 octet`,
		},
		{
			name: "two documents",
			yaml: "containers: {}\n---\ncontainers: {}\n",
			want: `p.yaml:3: a policy file holds one YAML document: remove the second one (the "---" line and what follows)`,
		},
		{
			name: "several problems in line order",
			yaml: "containers:\n  web:\n    addresses: [10.77.0.1/33]\n  db:\n    addresses: [127.0.0.1]\n    modes: shared\n",
			want: `p.yaml:3: container "web": invalid address "10.77.0.1/33": prefix /33 is out of range: an IPv4 prefix is 1-32` + "\n" +
				`p.yaml:5: container "db": invalid address "127.0.0.1": 127.0.0.1 is a loopback address: write an address the container owns (set loopback: isolated or host for the loopback)` + "\n" +
				`p.yaml:6: container "db": unknown field "modes": did you mean "mode"?`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded with %d containers, want error %q", len(p.Containers), tt.want)
			}
			if err.Error() != tt.want {
				t.Fatalf("error\n got: %s\nwant: %s", err, tt.want)
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.File != "p.yaml" || perr.Line == 0 {
				t.Errorf("error %#v is not a positioned *Error", err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				checkMessageStyle(t, line)
			}
		})
	}
}

func TestParseErrorLineInBigFile(t *testing.T) {
	var b strings.Builder
	b.WriteString("containers:\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "  c%d:\n    addresses: [10.%d.%d.1/24, \"[fd77::%x]:80/tcp\"]\n", i, i/250, i%250, i+1)
	}
	b.WriteString("  last:\n    mode: shared\n   addresses: [10.99.0.1]\n")
	_, err := Parse("big.yaml", []byte(b.String()))
	want := fmt.Sprintf("big.yaml:%d: invalid YAML: did not find expected key", 1+2*2000+3)
	if err == nil || err.Error() != want {
		t.Errorf("Parse: %v, want %s", err, want)
	}
}

func TestParseTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString("containers:\n")
	for i := range 30 {
		fmt.Fprintf(&b, "  c%d:\n    addresses: [127.0.0.%d]\n", i, i+1)
	}
	_, err := Parse("p.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 || !strings.HasSuffix(lines[maxErrors], "too many problems, stopping after 20") {
		t.Errorf("got %d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

func TestParseWrapsAddressError(t *testing.T) {
	_, err := Parse("p.yaml", []byte("containers:\n  web:\n    addresses: [10.0.0.1/tcp]\n"))
	var perr *Error
	if !errors.As(err, &perr) || perr.Line != 3 {
		t.Fatalf("error %v is not an *Error at line 3", err)
	}
	if _, direct := ParseAddress("10.0.0.1/tcp"); !strings.Contains(perr.Err.Error(), direct.Error()) {
		t.Errorf("file error %q does not carry the address error %q", perr.Err, direct)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(path, []byte("containers:\n  web:\n    addresses: [10.77.0.1:80]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	want := path + `:3: container "web": invalid address "10.77.0.1:80": a port needs a protocol: write 10.77.0.1:80/tcp or 10.77.0.1:80/udp`
	if err == nil || err.Error() != want {
		t.Errorf("Load: %v, want %s", err, want)
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "read policy: ") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestParseEmptyFilename(t *testing.T) {
	_, err := Parse("", []byte("x: 1\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "<input>:1: ") {
		t.Errorf("Parse without a file name: %v", err)
	}
}

func TestExamples(t *testing.T) {
	p, err := Load("../../examples/policy.yaml")
	if err != nil {
		t.Fatalf("examples/policy.yaml: %v", err)
	}
	var names []string
	for _, c := range p.Containers {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"api", "metrics", "web"}) {
		t.Errorf("containers = %v", names)
	}
	// The example must show what the docs say it shows.
	owners := map[netip.Addr]map[string]bool{}
	var v6, multicast, loopbackHost, netns bool
	for _, c := range p.Containers {
		for _, a := range c.Addresses {
			if owners[a.Addr] == nil {
				owners[a.Addr] = map[string]bool{}
			}
			owners[a.Addr][c.Name] = true
			v6 = v6 || a.Addr.Is6()
		}
		multicast = multicast || len(c.Multicast) > 0
		loopbackHost = loopbackHost || c.Loopback == LoopbackHost
		netns = netns || c.Mode == ModeNetns
	}
	if len(owners[ip("10.77.0.9")]) != 2 {
		t.Errorf("10.77.0.9 is owned by %v, want two containers", owners[ip("10.77.0.9")])
	}
	if !v6 || !multicast || !loopbackHost || !netns {
		t.Errorf("example lacks something: ipv6 %v multicast %v loopback host %v netns %v", v6, multicast, loopbackHost, netns)
	}

	_, err = Load("../../examples/bad-overlap.yaml")
	want := `../../examples/bad-overlap.yaml:19: address 10.77.0.9:5432/tcp of container "db" overlaps 10.77.0.9 of container "web": an address:port may be owned by one container only`
	if err == nil || err.Error() != want {
		t.Errorf("examples/bad-overlap.yaml: %v, want %s", err, want)
	}
}

func TestDiff(t *testing.T) {
	parse := func(t *testing.T, s string) *Policy {
		t.Helper()
		p, err := Parse("p.yaml", []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		old, new string
		want     []string
	}{
		{name: "both empty", old: "", new: ""},
		{
			name: "add to empty",
			old:  "",
			new:  "containers:\n  web: {addresses: [10.77.0.1/24, fd77::1]}\n  cam: {mode: netns, addresses: [10.77.0.5], multicast: [239.1.1.1]}\n  api: {addresses: [10.77.0.2], loopback: host}\n",
			want: []string{
				`+ container "api" (shared): 10.77.0.2, loopback host`,
				`+ container "cam" (netns): 10.77.0.5, multicast 239.1.1.1`,
				`+ container "web" (shared): 10.77.0.1/24, fd77::1`,
			},
		},
		{
			name: "delete all",
			old:  "containers:\n  old: {addresses: [10.77.0.1]}\n",
			new:  "containers: {}\n",
			want: []string{`- container "old"`},
		},
		{
			name: "unchanged containers are left out",
			old:  "containers:\n  web: {mode: shared, addresses: [10.77.0.1]}\n",
			new:  "containers:\n  web: {addresses: [10.77.0.1], loopback: isolated}\n",
		},
		{
			name: "add, modify, delete",
			old:  "containers:\n  db: {addresses: [10.77.0.2, 10.77.0.9:5432/tcp]}\n  old: {addresses: [10.77.0.7]}\n  web: {addresses: [10.77.0.1]}\n",
			new:  "containers:\n  db: {addresses: [10.77.0.3, 10.77.0.9:5432/tcp], loopback: host}\n  new: {addresses: [10.77.0.8]}\n  web: {addresses: [10.77.0.1]}\n",
			want: []string{
				`~ container "db": +addr 10.77.0.3, -addr 10.77.0.2, loopback isolated -> host`,
				`+ container "new" (shared): 10.77.0.8`,
				`- container "old"`,
			},
		},
		{
			name: "mode, subnet and multicast",
			old:  "containers:\n  cam: {addresses: [10.77.0.5/24], multicast: [239.1.1.1, 239.2.0.0/16]}\n",
			new:  "containers:\n  cam: {mode: netns, addresses: [10.77.0.5/16], multicast: [ff15::1, 239.2.0.0/16]}\n",
			want: []string{
				`~ container "cam": mode shared -> netns, +addr 10.77.0.5/16, -addr 10.77.0.5/24, +multicast ff15::1, -multicast 239.1.1.1`,
			},
		},
		{
			name: "reordered addresses change the primary",
			old:  "containers:\n  web: {addresses: [10.77.0.1, 10.77.0.2]}\n",
			new:  "containers:\n  web: {addresses: [10.77.0.2, 10.77.0.1]}\n",
			want: []string{`~ container "web": addresses reordered: 10.77.0.2, 10.77.0.1`},
		},
		{
			name: "reordered multicast is no change",
			old:  "containers:\n  web: {addresses: [10.77.0.1], multicast: [239.1.1.1, 239.1.1.2]}\n",
			new:  "containers:\n  web: {addresses: [10.77.0.1], multicast: [239.1.1.2, 239.1.1.1]}\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, c := range Diff(parse(t, tt.old), parse(t, tt.new)) {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Diff:\n got: %q\nwant: %q", got, tt.want)
			}
		})
	}

	t.Run("nil policies", func(t *testing.T) {
		p := parse(t, "containers:\n  web: {addresses: [10.77.0.1]}\n")
		if d := Diff(nil, nil); len(d) != 0 {
			t.Errorf("Diff(nil, nil) = %v", d)
		}
		if d := Diff(nil, p); len(d) != 1 || d[0].Kind != ChangeAdd || d[0].Mode != ModeShared || !slices.Equal(d[0].Details, []string{"10.77.0.1"}) {
			t.Errorf("Diff(nil, p) = %#v", d)
		}
		if d := Diff(p, nil); len(d) != 1 || d[0].Kind != ChangeDel || d[0].Name != "web" {
			t.Errorf("Diff(p, nil) = %#v", d)
		}
	})
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"10.77.0.1", "10.77.0.1/24", "fd77::1", "fd77::1/64", "10.77.0.9:5432/tcp",
		"10.77.0.9:8000-8099/udp", "[fd77::1]:8080/tcp", "[fd77::1]:8000-8099/udp",
		"::ffff:10.0.0.1", "fd77::1%eth0", "10.0.0.1:80", "10.0.0.1/24:80/tcp", "[10.0.0.1]:1/tcp",
		"10.77.0.0/24", "1.2.3.4/30", "[::]:0/udp", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if msg := err.Error(); strings.HasSuffix(msg, ".") {
				t.Errorf("error %q ends with a period", msg)
			}
			return
		}
		if !a.Addr.IsValid() || a.Addr.Is4In6() || a.Addr.Zone() != "" {
			t.Fatalf("ParseAddress(%q) = %#v: IP not valid, mapped or zoned", s, a)
		}
		if a.Subnet.IsValid() && (a.Subnet != a.Subnet.Masked() || !a.Subnet.Contains(a.Addr) || !a.WholeIP()) {
			t.Fatalf("ParseAddress(%q) = %#v: bad subnet", s, a)
		}
		if !a.WholeIP() && (a.PortLo == 0 || a.PortLo > a.PortHi || a.Proto == ProtoAny) {
			t.Fatalf("ParseAddress(%q) = %#v: bad port range", s, a)
		}
		if err := checkAddress(a); err != nil {
			t.Fatalf("ParseAddress(%q) = %#v, which Validate rejects: %v", s, a, err)
		}
		text := a.String()
		b, err := ParseAddress(text)
		if err != nil {
			t.Fatalf("ParseAddress(%q) = %#v, but its String %q does not parse: %v", s, a, text, err)
		}
		if b != a {
			t.Fatalf("round trip of %q through %q: %#v != %#v", s, text, b, a)
		}
		if b.String() != text {
			t.Fatalf("String not canonical: %q then %q", text, b.String())
		}
		if !a.Overlaps(a) {
			t.Fatalf("%v does not overlap itself", a)
		}
	})
}
