package maps

import (
	"errors"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// TestProgramsVerify loads every BPF program on its own (with fresh maps)
// and logs what the verifier processed, so a program the verifier refuses
// is named with the end of its log — which `l3iso up` cannot print whole —
// and growth towards the verifier's limit shows in `go test -v`.
func TestProgramsVerify(t *testing.T) {
	sockprobe.RequirePrivileged(t)
	for _, load := range []func() (*ebpf.CollectionSpec, error){loadSock, loadTc} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		names := make([]string, 0, len(spec.Programs))
		for n := range spec.Programs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, name := range names {
			s := spec.Copy()
			for n := range s.Programs {
				if n != name {
					delete(s.Programs, n)
				}
			}
			coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
			if err != nil {
				var ve *ebpf.VerifierError
				if errors.As(err, &ve) && len(ve.Log) > 0 {
					l := ve.Log
					if len(l) > 15 {
						l = l[len(l)-15:]
					}
					t.Errorf("%s: the verifier refuses it:\n%s", name, strings.Join(l, "\n"))
				} else {
					t.Errorf("%s: %v", name, err)
				}
				continue
			}
			for _, l := range strings.Split(coll.Programs[name].VerifierLog, "\n") {
				if strings.HasPrefix(l, "processed ") {
					t.Logf("%-18s %s", name, l)
				}
			}
			coll.Close()
		}
	}
}
