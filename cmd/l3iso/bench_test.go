package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The benchmark itself is exercised by bench/engine's smoke test; here
// only what the command does before it starts: flags and output format.
func TestBenchFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "-o", "xml"}, `unknown output format "xml"`},
		{[]string{"bench", "--rounds", "x"}, `invalid argument "x" for "--rounds"`},
		{[]string{"bench", "extra"}, `unknown command "extra"`},
		{[]string{"bench", "--bcast-containers", "2"}, `--bcast-containers 2: want 3 to 253`},
		{[]string{"bench", "--bcast-containers", "254"}, `--bcast-containers 254: want 3 to 253`},
	}
	for _, tt := range tests {
		out, err := exec.Command(binary, tt.args...).CombinedOutput()
		if err == nil {
			t.Errorf("l3iso %s: succeeded, want failure", strings.Join(tt.args, " "))
			continue
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("l3iso %s: %q does not say %q", strings.Join(tt.args, " "), out, tt.want)
		}
	}
	out, err := exec.Command(binary, "bench", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--quick") || !strings.Contains(string(out), "conntrack") {
		t.Errorf("l3iso bench --help: %v\n%s", err, out)
	}
}
