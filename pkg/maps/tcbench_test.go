package maps

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// BenchmarkTCPrograms runs the TC programs of the per-packet paths on one
// hand-made frame each, in the kernel (BPF_PROG_TEST_RUN with repeat), and
// reports the kernel's ns per run: the program alone, with hot caches, no
// redirect carried out. It ranks the costs of a program's steps (a map
// lookup, a rewrite); bench/ measures what they cost on the real path.
func BenchmarkTCPrograms(b *testing.B) {
	s := newTestSet(b)
	spec, err := loadTc()
	if err != nil {
		b.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: s.Replacements()})
	if err != nil {
		b.Fatal(err)
	}
	defer coll.Close()
	for id := uint32(0); id <= 1; id++ {
		if err := s.InitCounters(id); err != nil {
			b.Fatal(err)
		}
	}
	a := Port{ID: 1, IfIndex: 1, HostMAC: hostMAC, PeerMAC: peerMAC}
	if err := s.SetPort(a, []netip.Addr{netip.MustParseAddr("10.78.0.1"), netip.MustParseAddr("fd78::1")}); err != nil {
		b.Fatal(err)
	}
	// group/lo-unicast: no container, no wildcard listener on the port:
	// l3_tc_group's common case on lo, steering's first test and out.
	rows := []struct {
		name, prog string
		pkt        []byte
		want       uint32
	}{
		{"uplink/to-container", "l3_tc_uplink", frame(zeroMAC, "192.0.2.2", "10.78.0.1"), tcRedirect},
		{"uplink/to-host", "l3_tc_uplink", frame(zeroMAC, "192.0.2.2", "192.0.2.1"), tcNext},
		{"group/lo-unicast", "l3_tc_group", frame(zeroMAC, "10.80.0.1", "10.80.0.1"), tcNext},
	}
	for _, r := range rows {
		b.Run(r.name, func(b *testing.B) {
			// One BPF_PROG_TEST_RUN of b.N repeats: the kernel times the
			// runs alone and returns the time per run.
			ret, d, err := coll.Programs[r.prog].Benchmark(r.pkt, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != r.want { // what is timed is the path named
				b.Fatalf("%s: verdict %d, want %d", r.prog, ret, r.want)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/run")
		})
	}
}
