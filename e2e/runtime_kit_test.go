package e2e

// Helpers of the tests with real container runtimes and CNI tools
// (runtime_cni_test.go, runtime_podman_test.go, runtime_containerd_test.go,
// runtime_twonodes_test.go): the CNI kit (l3iso's plugin, cnitool,
// host-local) and a sandbox — a private mount namespace in which the
// runtimes' fixed paths (/var/lib/cni, /opt/cni/bin, /etc/cni/net.d,
// /run/netns) are the test's own, so that nothing they write outlives the
// test.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The CNI tools the tests drive the plugin with, built from the Go module
// proxy (Debian's containernetworking-plugins stop at CNI 1.0.0).
const (
	cnitoolPkg   = "github.com/containernetworking/cni/cnitool@v1.3.1"
	hostLocalPkg = "github.com/containernetworking/plugins/plugins/ipam/host-local@v1.10.0"
)

var (
	kitOnce sync.Once
	kitDir  string
	kitErr  error
)

// cniKit returns a directory with l3iso (the plugin, built from this tree),
// cnitool and host-local, built once per test binary. L3ISO_CNI_TOOLS may
// name a directory that has cnitool and host-local already (.ci/run builds
// them there); otherwise they are built with `go install` (the Go build
// and module caches make it quick after the first time), bounded by 5
// minutes.
func cniKit(t *testing.T) string {
	t.Helper()
	kitOnce.Do(func() {
		kitDir = filepath.Join(filepath.Dir(binary), "cni")
		if kitErr = os.MkdirAll(kitDir, 0o755); kitErr != nil {
			return
		}
		if kitErr = goBuild(filepath.Join(kitDir, "l3iso"), "github.com/l3iso/l3iso/cmd/l3iso-cni"); kitErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for _, p := range []string{cnitoolPkg, hostLocalPkg} {
			bin := filepath.Base(strings.Split(p, "@")[0])
			if pre := os.Getenv("L3ISO_CNI_TOOLS"); pre != "" {
				if _, err := os.Stat(filepath.Join(pre, bin)); err == nil {
					if kitErr = os.Symlink(filepath.Join(pre, bin), filepath.Join(kitDir, bin)); kitErr != nil {
						return
					}
					continue
				}
			}
			inst := exec.CommandContext(ctx, "go", "install", p)
			inst.Dir = kitDir // outside this module: p's own go.mod decides
			inst.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+kitDir)
			if out, err := inst.CombinedOutput(); err != nil {
				kitErr = fmt.Errorf("go install %s (set L3ISO_CNI_TOOLS to a directory with cnitool and host-local to skip this): %v: %s", p, err, out)
				return
			}
		}
	})
	if kitErr != nil {
		t.Fatal(kitErr)
	}
	return kitDir
}

// sandbox is a private mount namespace (a slave of the host's: mounts the
// test makes later, such as its network namespaces, show in it) where
// /var/lib, /opt and (with ownNetns) /run/netns are empty tmpfs mounts of
// its own, /opt/cni/bin is the CNI kit and /etc/cni/net.d the test's CNI
// configuration directory. Commands run in it through nsenter, in the
// host network namespace of an env. Its holder process is killed at
// cleanup; the mounts go with the namespace.
type sandbox struct {
	t      *testing.T
	holder *exec.Cmd
	netns  string
	mnt    string
}

func newSandbox(t *testing.T, netns, kit, confDir string, ownNetns bool) *sandbox {
	t.Helper()
	script := `set -e
mount -t tmpfs -o mode=0755 l3t-var /var/lib
mkdir -p /var/lib/cni
mount -t tmpfs -o mode=0755 l3t-opt /opt
mkdir -p /opt/cni/bin
mount --bind "$1" /opt/cni/bin
mount --bind "$2" /etc/cni/net.d
if [ "$3" = own ]; then mount -t tmpfs -o mode=0755 l3t-netns /run/netns; fi
echo ready
exec sleep 3600`
	own := "host"
	if ownNetns {
		own = "own"
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "sh", kit, confDir, own)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the sandbox: %v", err)
	}
	s := &sandbox{t: t, holder: cmd, netns: netns, mnt: fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("the sandbox did not start: %s", stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the sandbox did not start in 10 s: %s", stderr.String())
	}
	return s
}

// run runs name with args in the sandbox, bounded by timeout, with env
// added to the test's environment; it returns stdout, stderr and the error.
func (s *sandbox) run(timeout time.Duration, env []string, name string, args ...string) (string, string, error) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--mount=" + s.mnt, "--net=" + s.netns, "--", name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %s: %w", name, strings.Join(args, " "), timeout, err)
	}
	return out.String(), errb.String(), err
}

// mustRun is run that fails the test on an error.
func (s *sandbox) mustRun(timeout time.Duration, env []string, name string, args ...string) string {
	s.t.Helper()
	out, errOut, err := s.run(timeout, env, name, args...)
	if err != nil {
		s.t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// writeJSON writes v as JSON to path.
func writeJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
