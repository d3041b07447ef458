package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// What the command does before it starts: flags, output format and
// finding the l3iso binary. Each bad input is one error that says what is
// wrong, before anything is made (the benchmark itself is bench/engine's
// TestSmoke). No root needed.
func TestFlags(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "l3iso")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-o", "xml"}, `unknown output format "xml": use -o text or -o json`},
		{[]string{"--rounds", "x"}, `invalid argument "x" for "--rounds"`},
		{[]string{"--rounds", "2"}, `--rounds 2: want at least 3`},
		{[]string{"--target-rounds", "-2"}, `--target-rounds -2: want 1 or more (--no-target-rounds for none)`},
		{[]string{"--run", "10ms"}, `--run 10ms: want at least 50ms`},
		{[]string{"--nice", "-21"}, `--nice -21: want -20 to 19`},
		{[]string{"extra"}, `unknown command "extra"`},
		{[]string{"--bcast-containers", "2"}, `--bcast-containers 2: want 3 to 253`},
		{[]string{"--bcast-containers", "254"}, `--bcast-containers 254: want 3 to 253`},
		{[]string{"--l3iso", filepath.Join(dir, "nothing")}, "no l3iso binary at " + filepath.Join(dir, "nothing") + ": build it (make build) or name it with --l3iso PATH"},
		{[]string{"--l3iso", dir}, "not an executable file"},
		{[]string{"--l3iso", notExec}, "not an executable file"},
		{[]string{"--l3iso", "/bin/true", "--workloads", "udp_pps,ping"}, `workload "ping": want one of udp_pps, tcp_rr, tcp_crr, tcp_gbps, sendto_ns, bcast_fanout`},
	}
	for _, tt := range tests {
		cmd := newRoot()
		var out bytes.Buffer
		cmd.SetArgs(tt.args)
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		err := cmd.Execute()
		if err == nil {
			t.Errorf("l3iso-bench %s: succeeded, want failure", strings.Join(tt.args, " "))
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("l3iso-bench %s: %q does not say %q", strings.Join(tt.args, " "), err, tt.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("l3iso-bench %s: %q is more than one line", strings.Join(tt.args, " "), err)
		}
	}
	cmd := newRoot()
	var out bytes.Buffer
	cmd.SetArgs([]string{"--help"})
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--quick", "--l3iso", "-o, --output", "conntrack", "confidence interval"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("l3iso-bench --help does not say %q:\n%s", want, out.String())
		}
	}
}

// The operator binary links none of the benchmark (issue 16): the
// benchmark drives it from outside.
func TestL3isoLinksNoBenchmark(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/l3iso/l3iso/cmd/l3iso").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps cmd/l3iso: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/l3iso/l3iso/bench") {
			t.Errorf("cmd/l3iso depends on %s", p)
		}
	}
}
