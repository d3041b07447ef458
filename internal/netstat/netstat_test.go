package netstat

import (
	"os"
	"testing"
)

func TestParse(t *testing.T) {
	in := `Ip: Forwarding DefaultTTL InReceives ForwDatagrams
Ip: 1 64 120 7
Icmp: InMsgs InEchos
Icmp: 3 2
Tcp: RtoAlgorithm MaxConn ActiveOpens
Tcp: 1 -1 5
MPTcpExt: MPCapableSYNRX MPJoinSynTx
MPTcpExt: 4 1
Ip6InReceives                   	15
Ip6OutForwDatagrams             	9
`
	got := Parse([]byte(in))
	want := map[string]uint64{
		"Ip:Forwarding": 1, "Ip:DefaultTTL": 64, "Ip:InReceives": 120, "Ip:ForwDatagrams": 7,
		"Icmp:InMsgs": 3, "Icmp:InEchos": 2,
		"Tcp:RtoAlgorithm": 1, "Tcp:ActiveOpens": 5, // MaxConn -1: left out
		"MPTcpExt:MPCapableSYNRX": 4, "MPTcpExt:MPJoinSynTx": 1,
		"Ip6InReceives": 15, "Ip6OutForwDatagrams": 9,
	}
	if len(got) != len(want) {
		t.Errorf("got %d counters, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %d (present %v), want %d", k, g, ok, v)
		}
	}
}

// TestParseThisMachine reads the real files of this network namespace.
func TestParseThisMachine(t *testing.T) {
	var all []byte
	for _, f := range []string{"/proc/net/snmp", "/proc/net/snmp6", "/proc/net/netstat"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	got := Parse(all)
	for _, k := range []string{"Ip:ForwDatagrams", "Icmp:InEchos", "Udp:IgnoredMulti", "Ip6OutForwDatagrams", "Icmp6InEchos", "TcpExt:SyncookiesSent"} {
		if _, ok := got[k]; !ok {
			t.Errorf("no %s among %d counters", k, len(got))
		}
	}
}
