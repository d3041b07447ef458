package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto narrows an address to one transport protocol.
type Proto uint8

// The protocols an address can be narrowed to. The values are the IP
// protocol numbers.
const (
	ProtoAny Proto = 0  // every protocol; only for whole-IP addresses
	ProtoTCP Proto = 6  // TCP
	ProtoUDP Proto = 17 // UDP
)

// String returns "any", "tcp" or "udp" (and "proto(N)" for other values).
func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// Address is one ownership entry of a container: an IP, optionally narrowed
// to one protocol and a port range.
type Address struct {
	// Addr is the owned IP. It is never zero for a parsed Address and is
	// always unmapped: IPv4 is held as a 4-byte address, never ::ffff:a.b.c.d.
	Addr netip.Addr
	// Subnet is the subnet Addr lives on (masked), from the IP/PREFIX form.
	// It is the zero Prefix (IsValid() == false) when no prefix was given.
	Subnet netip.Prefix
	// Proto is ProtoAny for a whole IP, else ProtoTCP or ProtoUDP.
	Proto Proto
	// PortLo and PortHi are 0, 0 for every port; otherwise the inclusive
	// range PortLo..PortHi with 1 <= PortLo <= PortHi.
	PortLo, PortHi uint16
}

// ParseAddress parses one address in any of the forms listed in the package
// documentation. The error says what is wrong and what to write instead.
func ParseAddress(s string) (Address, error) {
	a, err := parseAddress(s)
	if err != nil {
		return Address{}, fmt.Errorf("invalid address %q: %w", s, err)
	}
	return a, nil
}

// String returns the canonical text of a: ParseAddress(a.String()) == a for
// every valid Address.
func (a Address) String() string {
	if !a.Addr.IsValid() {
		return "invalid address"
	}
	if a.WholeIP() {
		if a.Subnet.IsValid() {
			return a.Addr.String() + "/" + strconv.Itoa(a.Subnet.Bits())
		}
		return a.Addr.String()
	}
	ports := strconv.Itoa(int(a.PortLo))
	if a.PortHi != a.PortLo {
		ports += "-" + strconv.Itoa(int(a.PortHi))
	}
	return joinHostPort(a.Addr.String(), a.Addr.Is6(), ports) + "/" + a.Proto.String()
}

// WholeIP reports whether a owns every port and protocol of its IP, that is,
// whether it has no port range.
func (a Address) WholeIP() bool {
	return a.PortLo == 0 && a.PortHi == 0
}

// Broadcast returns the directed broadcast address of a's subnet. It reports
// false unless a has an IPv4 subnet with a prefix of at most 30 bits (a /31 or
// /32 has no broadcast address, and IPv6 has none at all).
func (a Address) Broadcast() (netip.Addr, bool) {
	p := a.Subnet
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 {
		return netip.Addr{}, false
	}
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	b[0] |= byte(host >> 24)
	b[1] |= byte(host >> 16)
	b[2] |= byte(host >> 8)
	b[3] |= byte(host)
	return netip.AddrFrom4(b), true
}

// Overlaps reports whether a and b claim some address:port in common: they
// have the same IP and either one of them is a whole IP, or their protocols
// are compatible (ProtoAny matches every protocol) and their port ranges
// intersect.
func (a Address) Overlaps(b Address) bool {
	if a.Addr.Unmap() != b.Addr.Unmap() {
		return false
	}
	if a.WholeIP() || b.WholeIP() {
		return true
	}
	if a.Proto != ProtoAny && b.Proto != ProtoAny && a.Proto != b.Proto {
		return false
	}
	return a.PortLo <= b.PortHi && b.PortLo <= a.PortHi
}

// parseAddress splits s into host, prefix, ports and protocol, then builds
// the Address and checks it with checkAddress.
func parseAddress(s string) (Address, error) {
	if s == "" {
		return Address{}, errors.New("empty address: write an IP such as 10.77.0.1, 10.77.0.1/24 or 10.77.0.9:5432/tcp")
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return Address{}, errors.New("spaces are not allowed: write the address without them, e.g. 10.77.0.9:5432/tcp")
	}

	rest := s
	var proto Proto
	protoText, hasProto := "", false
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		suffix := rest[i+1:]
		switch {
		case suffix == "":
			return Address{}, errors.New(`nothing after "/": write IP/PREFIX (e.g. 10.77.0.1/24) or IP:PORT/tcp`)
		case !isDigits(suffix):
			protoText, hasProto, rest = suffix, true, rest[:i]
			switch suffix {
			case "tcp":
				proto = ProtoTCP
			case "udp":
				proto = ProtoUDP
			default:
				if suffix[0] >= '0' && suffix[0] <= '9' {
					return Address{}, fmt.Errorf("invalid prefix length %q: write a number, e.g. 10.77.0.1/24", suffix)
				}
				return Address{}, fmt.Errorf("unknown protocol %q: write tcp or udp", suffix)
			}
		}
	}

	host, portText, hasPort, bracketed := rest, "", false, false
	if strings.HasPrefix(rest, "[") {
		j := strings.IndexByte(rest, ']')
		if j < 0 {
			return Address{}, errors.New(`missing "]": write an IPv6 address with a port as [fd77::1]:8080/tcp`)
		}
		host, bracketed = rest[1:j], true
		switch after := rest[j+1:]; {
		case strings.HasPrefix(after, ":"):
			portText, hasPort = after[1:], true
		case after == "" && hasProto:
			// [IPv6]/tcp: reported below as a protocol without a port.
		default:
			return Address{}, fmt.Errorf("brackets are only for an IPv6 address with a port: write %s%s, or [%s]:PORT/tcp",
				host, after, host)
		}
	} else if strings.Count(rest, ":") == 1 {
		i := strings.IndexByte(rest, ':')
		host, portText, hasPort = rest[:i], rest[i+1:], true
	}

	prefixText, hasPrefix := "", false
	if i := strings.IndexByte(host, '/'); i >= 0 {
		host, prefixText, hasPrefix = host[:i], host[i+1:], true
	}
	if i := strings.IndexByte(portText, '/'); i >= 0 {
		portText, hasPrefix = portText[:i], true
	}
	if hasPrefix && hasPort {
		p := "tcp"
		if hasProto {
			p = protoText
		}
		return Address{}, fmt.Errorf("a prefix cannot be combined with a port: write %s/%s (an address with a port has no subnet)",
			joinHostPort(host, strings.Contains(host, ":"), portText), p)
	}

	var a Address
	if i := strings.IndexByte(host, '%'); i >= 0 {
		// netip accepts IPv6 zones; checkAddress rejects them with a
		// suggestion, so keep the zoned address until then.
		zoned, err := netip.ParseAddr(host)
		if err != nil {
			return Address{}, fmt.Errorf("zone %q is not allowed: write the address without it", host[i:])
		}
		a.Addr = zoned
	} else {
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return Address{}, fmt.Errorf("not an IP address: %w", err)
		}
		a.Addr = ip
	}
	is6 := a.Addr.Is6()

	switch {
	case hasPort && !hasProto:
		hp := joinHostPort(host, is6, portText)
		return Address{}, fmt.Errorf("a port needs a protocol: write %s/tcp or %s/udp", hp, hp)
	case hasProto && !hasPort && is6:
		return Address{}, fmt.Errorf("/%s needs a port, and an IPv6 address with a port takes brackets: write [IPv6]:PORT/%s, e.g. [fd77::1]:8080/%s, or drop /%s to own every port",
			protoText, protoText, protoText, protoText)
	case hasProto && !hasPort:
		return Address{}, fmt.Errorf("/%s needs a port: write %s:PORT/%s, or drop /%s to own every port",
			protoText, host, protoText, protoText)
	case bracketed && !is6:
		return Address{}, fmt.Errorf("brackets are only for IPv6: write %s:%s/%s", host, portText, protoText)
	}

	if hasPrefix {
		bits, err := parsePrefixLen(prefixText, a.Addr.BitLen())
		if err != nil {
			return Address{}, err
		}
		a.Subnet = netip.PrefixFrom(a.Addr.WithZone(""), bits).Masked()
	}
	if hasPort {
		lo, hi, err := parsePorts(portText)
		if err != nil {
			return Address{}, err
		}
		a.Proto, a.PortLo, a.PortHi = proto, lo, hi
	}
	if err := checkAddress(a); err != nil {
		return Address{}, err
	}
	return a, nil
}

// checkAddress checks the invariants of an Address, however it was built.
func checkAddress(a Address) error {
	ip := a.Addr
	if !ip.IsValid() {
		return errors.New("no IP: write an IP such as 10.77.0.1")
	}
	if ip.Zone() != "" {
		b := a
		b.Addr = ip.WithZone("")
		return fmt.Errorf("zone %q is not allowed: write %s", "%"+ip.Zone(), b)
	}
	if ip.Is4In6() {
		b := a
		b.Addr = ip.Unmap()
		b.Subnet = netip.Prefix{}
		if a.Subnet.IsValid() && a.Subnet.Bits() > 96 {
			b.Subnet = netip.PrefixFrom(b.Addr, a.Subnet.Bits()-96).Masked()
		}
		return fmt.Errorf("IPv4-mapped IPv6 address %s: write it as %s", ip, b)
	}
	switch {
	case ip.IsUnspecified():
		return fmt.Errorf("%s is the unspecified address: write an address the container owns (binding the wildcard is always allowed)", ip)
	case ip.IsLoopback():
		return fmt.Errorf("%s is a loopback address: write an address the container owns (set loopback: isolated or host for the loopback)", ip)
	case ip.IsMulticast():
		return fmt.Errorf("%s is a multicast group: list it under multicast instead", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local: write a routable address (link-local addresses belong to a link, not to a container)", ip)
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("255.255.255.255 is the limited broadcast address: write an address the container owns (broadcasts to an owned subnet reach it anyway)")
	}

	if p := a.Subnet; p.IsValid() {
		switch {
		case p.Addr().Is4() != ip.Is4():
			return fmt.Errorf("subnet %s is not of the same family as %s: write %s/PREFIX", p, ip, ip)
		case p.Bits() < 1:
			return fmt.Errorf("prefix /0 is out of range: an IPv%s prefix is 1-%d", family(ip), ip.BitLen())
		case p != p.Masked() || !p.Contains(ip):
			return fmt.Errorf("subnet %s does not contain %s: write %s/%d", p, ip, ip, p.Bits())
		case !a.WholeIP():
			return fmt.Errorf("a prefix cannot be combined with a port: write %s", Address{Addr: ip, Proto: a.Proto, PortLo: a.PortLo, PortHi: a.PortHi})
		}
		if bc, ok := a.Broadcast(); ok {
			if ip == p.Addr() {
				return fmt.Errorf("%s is the network address of %s: write a host address, e.g. %s/%d",
					ip, p, p.Addr().Next(), p.Bits())
			}
			if ip == bc {
				return fmt.Errorf("%s is the broadcast address of %s: write a host address, e.g. %s/%d (the owner of a subnet may bind its broadcast address anyway)",
					ip, p, p.Addr().Next(), p.Bits())
			}
		}
	}

	if a.WholeIP() {
		if a.Proto != ProtoAny {
			return fmt.Errorf("protocol %s needs a port: write %s, or drop the protocol to own every port",
				a.Proto, joinHostPort(ip.String(), ip.Is6(), "PORT")+"/"+a.Proto.String())
		}
		return nil
	}
	switch {
	case a.PortLo == 0 || a.PortHi == 0:
		return errors.New("port 0 is not allowed: ports are 1-65535")
	case a.PortLo > a.PortHi:
		return fmt.Errorf("port range %d-%d is backwards: write %d-%d", a.PortLo, a.PortHi, a.PortHi, a.PortLo)
	case a.Proto == ProtoAny:
		hp := joinHostPort(ip.String(), ip.Is6(), portsText(a.PortLo, a.PortHi))
		return fmt.Errorf("a port needs a protocol: write %s/tcp or %s/udp", hp, hp)
	case a.Proto != ProtoTCP && a.Proto != ProtoUDP:
		return fmt.Errorf("unknown protocol %s: write tcp or udp", a.Proto)
	}
	return nil
}

// parsePrefixLen parses the PREFIX of IP/PREFIX for an address of bitLen bits.
func parsePrefixLen(s string, bitLen int) (int, error) {
	fam := "4"
	if bitLen == 128 {
		fam = "6"
	}
	if !isDigits(s) || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid prefix length %q: write a number from 1 to %d, e.g. /24", s, bitLen)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > bitLen {
		return 0, fmt.Errorf("prefix /%s is out of range: an IPv%s prefix is 1-%d", s, fam, bitLen)
	}
	return n, nil
}

// parsePorts parses PORT or PORT-PORT.
func parsePorts(s string) (lo, hi uint16, err error) {
	loText, hiText, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(loText); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = parsePort(hiText); err != nil {
			return 0, 0, err
		}
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("port range %d-%d is backwards: write %d-%d", lo, hi, hi, lo)
	}
	return lo, hi, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port: write PORT or PORT-PORT, e.g. 8080 or 8000-8099")
	}
	if !isDigits(s) {
		return 0, fmt.Errorf("invalid port %q: ports are numbers 1-65535", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %s is out of range: ports are 1-65535", s)
	}
	if n == 0 {
		return 0, errors.New("port 0 is not allowed: ports are 1-65535")
	}
	return uint16(n), nil
}

// ParseMulticast parses a multicast group (239.1.1.1, ff15::1) or a prefix of
// groups (239.1.1.0/24, ff15::/16). A bare group is returned as a /32 or
// /128 prefix.
func ParseMulticast(s string) (netip.Prefix, error) {
	p, err := parseMulticast(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid multicast group %q: %w", s, err)
	}
	return p, nil
}

func parseMulticast(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("empty group: write a group such as 239.1.1.1 or a prefix such as 239.1.1.0/24")
	}
	if i := strings.IndexByte(s, '%'); i >= 0 {
		return netip.Prefix{}, fmt.Errorf("zone %q is not allowed: write the group without it", s[i:])
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		q, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a group or prefix: %w", err)
		}
		p = q
	} else {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a group or prefix: %w", err)
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	return p, checkMulticast(p)
}

// checkMulticast checks that p is a masked prefix of multicast groups.
func checkMulticast(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("no group: write a group such as 239.1.1.1 or a prefix such as 239.1.1.0/24")
	}
	ip := p.Addr()
	if ip.Zone() != "" {
		return fmt.Errorf("zone %q is not allowed: write the group without it", "%"+ip.Zone())
	}
	if ip.Is4In6() {
		suggest := ip.Unmap().String()
		if p.Bits() > 96 && p.Bits() < 128 {
			suggest = netip.PrefixFrom(ip.Unmap(), p.Bits()-96).Masked().String()
		}
		return fmt.Errorf("IPv4-mapped IPv6 group %s: write it as %s", ip, suggest)
	}
	minBits := 4
	if ip.Is6() {
		minBits = 8
	}
	if !ip.IsMulticast() || p.Bits() < minBits {
		return fmt.Errorf("%s is not multicast: groups are in 224.0.0.0/4 (IPv4) and ff00::/8 (IPv6)", multicastString(p))
	}
	if p != p.Masked() {
		return fmt.Errorf("%s has bits set past the prefix length: write %s", p, p.Masked())
	}
	return nil
}

// multicastString prints a single group without its /32 or /128.
func multicastString(p netip.Prefix) string {
	if p.IsValid() && p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func joinHostPort(host string, is6 bool, ports string) string {
	if is6 {
		return "[" + host + "]:" + ports
	}
	return host + ":" + ports
}

func portsText(lo, hi uint16) string {
	if lo == hi {
		return strconv.Itoa(int(lo))
	}
	return strconv.Itoa(int(lo)) + "-" + strconv.Itoa(int(hi))
}

func family(ip netip.Addr) string {
	if ip.Is4() {
		return "4"
	}
	return "6"
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
