package sockprobe

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ProgramNames returns the kernel names of the programs query q finds (an
// attach point: a cgroup or an interface, and an attach type; with
// BPF_F_QUERY_EFFECTIVE, every program that runs there, inherited ones
// included), in the kernel's order.
func ProgramNames(t testing.TB, q link.QueryOptions) []string {
	t.Helper()
	res, err := link.QueryPrograms(q)
	if err != nil {
		t.Fatalf("query %v programs of %d: %v", q.Attach, q.Target, err)
	}
	var names []string
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			t.Fatal(err)
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, info.Name)
	}
	return names
}
