// Package policy is the operator-facing model of an l3iso ownership policy:
// which container owns which addresses, in which mode it runs, how its
// loopback behaves and which multicast groups it may join. It parses and
// validates policy files and computes what changes between two policies.
//
// The package is pure Go and has no kernel dependencies; the dataplane
// packages turn a validated [Policy] into map contents.
//
// # Addresses
//
// An [Address] is written in one of these forms:
//
//	10.77.0.1               one IP, every port and protocol
//	10.77.0.1/24            the same, and the IP lives on subnet 10.77.0.0/24
//	fd77::1, fd77::1/64     the same for IPv6
//	10.77.0.9:5432/tcp      one port of one protocol of an IP
//	10.77.0.9:8000-8099/udp an inclusive port range
//	[fd77::1]:8080/tcp      IPv6 with a port takes brackets
//
// The prefix names the subnet the IP lives on; it is used for source address
// selection and for the subnet's directed broadcast address, which the owner
// may bind. A port-narrowed address carries no prefix.
//
// Two containers may own the same IP when their port ranges (or protocols)
// are disjoint; no address:port is ever owned twice, see [Address.Overlaps].
//
// The order of a container's addresses matters: the first address of each
// family is the container's primary address for that family, the source a
// socket gets when no owned subnet matches the route.
//
// # Policy files
//
// A policy file is YAML:
//
//	containers:
//	  web:
//	    mode: shared                 # shared (default) | netns
//	    addresses: [10.77.0.1/24, fd77::1, 10.77.0.9:5432/tcp]
//	    loopback: isolated           # isolated (default) | host
//	    multicast: [239.1.1.0/24]    # groups it may join
//
// Parsing is strict: unknown fields, duplicate keys, wrong types and invalid
// values are errors, and every error has the form "FILE:LINE: problem". An
// IPv6 address with a port must be quoted in YAML ("[fd77::1]:8080/tcp"),
// because an unquoted '[' starts a YAML list.
package policy
