// Package netstat reads the kernel's protocol counters, as nstat does:
// /proc/net/snmp and /proc/net/netstat hold pairs of lines, "Prefix:
// names…" then "Prefix: values…"; /proc/net/snmp6 holds one "Name value"
// per line. Tests and the benchmark use it to prove what the stack saw.
package netstat

import (
	"strconv"
	"strings"
)

// Parse returns every counter in b — one of those files, or several of
// them concatenated — keyed "Prefix:Name" for the paired form
// ("Ip:ForwDatagrams", "Icmp:InEchos", "MPTcpExt:MPJoinSynTx") and "Name"
// for the one-per-line form ("Ip6OutForwDatagrams"). Values that are not
// unsigned numbers (Ip: Forwarding's 1/2 is one; a negative Tcp: MaxConn
// another) are left out.
func Parse(b []byte) map[string]uint64 {
	out := map[string]uint64{}
	header := map[string][]string{} // prefix → the names line waiting for its values
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.HasSuffix(f[0], ":"):
			names, ok := header[f[0]]
			if !ok {
				header[f[0]] = f[1:]
				continue
			}
			delete(header, f[0])
			for i, n := range names {
				if i+1 < len(f) {
					if v, err := strconv.ParseUint(f[i+1], 10, 64); err == nil {
						out[f[0]+n] = v
					}
				}
			}
		case len(f) == 2:
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}
