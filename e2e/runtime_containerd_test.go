package e2e

// containerd 1.6 (Debian) with l3iso (issue 14): `ctr run --cni` runs the
// plugin for a container, which serves the outside host by direct
// delivery; a shared-mode container under `ctr run --cgroup` is policed.
// containerd runs in a sandbox (runtime_kit_test.go: ctr reads the CNI
// configuration from /etc/cni/net.d and the plugins from /opt/cni/bin,
// which are the test's there), against a private root, state and socket,
// and is stopped at the end.

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sharedScript is what a shared-mode container of l3iso container
// 10.77.0.5 runs (PATH has busybox's httpd, nc and wget): a foreign bind,
// a wildcard listener reached on its own address and not on the host's,
// a connection out to the outside host's 192.0.2.2:7900.
const sharedScript = `cd /bin && for c in httpd nc wget; do ln -sf busybox $c; done; export PATH=/bin
httpd -f -p 10.77.0.9:9000 2>/tmp/err; echo "foreign=$?"; cat /tmp/err
httpd -f -p 0.0.0.0:9001 -h /www & sleep 0.5
wget -q -O- http://10.77.0.5:9001/index.html; echo "wildcard-own=$?"
nc -w 2 192.0.2.1 9001 </dev/null; echo "wildcard-host=$?"
kill $!
echo hello | nc -w 2 192.0.2.2 7900; echo "connect=$?"`

// checkShared runs a shared-mode container of l3iso container 10.77.0.5
// with start (which runs sharedScript and returns its output) and checks
// what it printed and where its connection came from.
func checkShared(t *testing.T, n *netEnv, start func() string) {
	t.Helper()
	outside := n.out()
	sid := outside.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer outside.Close(sid)
	outside.SetReuseAddr(sid)
	if err := outside.Bind(sid, netip.AddrPortFrom(outside4, 7900)); err != nil {
		t.Fatal(err)
	}
	if err := outside.Listen(sid); err != nil {
		t.Fatal(err)
	}
	outCh := make(chan string, 1)
	go func() { outCh <- start() }()
	aid, peer, err := outside.Accept(sid, 30*time.Second)
	if err != nil {
		t.Fatalf("the shared container did not connect out: %v (output: %s)", err, <-outCh)
	}
	if peer.Addr() != netip.MustParseAddr("10.77.0.5") {
		t.Errorf("connection from the shared container came from %s, want its own 10.77.0.5", peer.Addr())
	}
	outside.Close(aid) // busybox nc waits for the peer to close
	o := <-outCh
	t.Logf("container output:\n%s", o)
	if !strings.Contains(o, "foreign=1") || !strings.Contains(o, "Cannot assign requested address") {
		t.Errorf("a bind to 10.77.0.9 (not its own) did not fail with EADDRNOTAVAIL:\n%s", o)
	}
	// The wildcard listener hears its own address, and not the host's on
	// the same port.
	if !strings.Contains(o, "l3iso-pod\nwildcard-own=0") || strings.Contains(o, "wildcard-host=0") {
		t.Errorf("the wildcard listener on 0.0.0.0:9001 is not the container's own 10.77.0.5:9001 alone:\n%s", o)
	}
	if !strings.Contains(o, "connect=0") {
		t.Errorf("the connection out failed:\n%s", o)
	}
}

// checkServed checks that netns container k, a runtime's serving
// busybox httpd on port 8080, answers the outside host on each of its
// addresses, delivered directly (the host stack sees none of it).
func checkServed(t *testing.T, n *netEnv, k containerJSON) {
	t.Helper()
	out := n.out()
	before := n.hostCounters()
	for _, a := range k.Addresses {
		ip := netip.MustParsePrefix(a).Addr()
		if body := httpGet(t, out, netip.AddrPortFrom(ip, 8080)); !strings.Contains(body, "l3iso-pod") {
			t.Errorf("GET http://%s:8080/ from the outside host: %q", ip, body)
		}
	}
	if after := n.hostCounters(); after != before {
		t.Errorf("direct delivery to %s: the host stack saw its traffic: %+v → %+v", k.Name, before, after)
	}
	if cnt := n.counters()[k.Name]; cnt["tc_redirected_in"] == 0 {
		t.Errorf("%s: not delivered directly: %v", k.Name, cnt)
	}
}

func TestContainerd(t *testing.T) {
	t.Parallel()
	requireTool(t, "containerd", "ctr", "containerd-shim-runc-v2", "runc", "busybox")
	n := newNetEnv(t, "direct")
	n.installNFT()
	rootfs := busyboxRootfs(t)
	rel, err := filepath.Rel(mustCgroupMount(t), n.cgroot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeV1Cgroups(t, rel) }) // after containerd is stopped
	kit := cniKit(t)
	confDir, state := t.TempDir(), t.TempDir()
	writeJSONFile(t, filepath.Join(confDir, "10-l3iso.conflist"), cniConflist("1.0.0", "l3iso", n.env, filepath.Join(state, "ipam"), "", "10.78.0.0/24", "fd78::/64"))
	sb := newSandbox(t, n.netns, kit, confDir, true)
	sock := filepath.Join(state, "containerd.sock")
	cfg := filepath.Join(state, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(state, "root"), filepath.Join(state, "state"), sock, sock+".ttrpc")), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	d := exec.Command("nsenter", "--mount="+sb.mnt, "--net="+sb.netns, "--", "containerd", "--config", cfg)
	d.Stdout, d.Stderr = &logs, &logs
	d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		d.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- d.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			d.Process.Kill()
			<-done
			t.Errorf("containerd did not stop on SIGTERM within 15 s")
		}
	})
	waitFor(t, 20*time.Second, "containerd's socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})
	ctr := func(timeout time.Duration, args ...string) (string, error) {
		out, errOut, err := sb.run(timeout, nil, "ctr", append([]string{"--address", sock}, args...)...)
		if err != nil {
			return out + errOut, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, errOut)
		}
		return out, nil
	}

	t.Run("netns", func(t *testing.T) {
		id := "l3t-c1-" + n.suffix
		done := make(chan error, 1)
		go func() {
			_, err := ctr(60*time.Second, "run", "--rm", "--cni", "--runtime", "io.containerd.runc.v2", "--cgroup", "/"+rel+"/elsewhere/"+id,
				"--rootfs", rootfs, id, "/bin/busybox", "sh", "-c", "/bin/busybox httpd -f -p 8080 -h /www & /bin/busybox sleep 8")
			done <- err
		}()
		var k containerJSON
		waitFor(t, 20*time.Second, "ctr run --cni to attach the container", func() bool {
			for _, c := range n.listJSON() {
				if c.Adopted {
					k = c
					return true
				}
			}
			return false
		})
		checkServed(t, n, k)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, ok := n.findContainer(k.Name); ok {
			// ctr run --rm removes the network with CNI DEL; should a
			// version not, `up` reaps it once its namespace is gone.
			t.Logf("ctr left %s after the task ended: up reaps it", k.Name)
			n.mustRun("up")
			if _, ok := n.findContainer(k.Name); ok {
				t.Errorf("ctr left l3iso container %s, and up did not reap it", k.Name)
			}
		}
	})

	t.Run("shared", func(t *testing.T) {
		web := "web-" + n.suffix
		n.mustRun("container", "add", web, "--addr", "10.77.0.5")
		cg := strings.TrimSpace(n.mustRun("container", "cgroup", web))
		id := "l3t-c2-" + n.suffix
		checkShared(t, n, func() string {
			out, err := ctr(60*time.Second, "run", "--rm", "--net-host", "--runtime", "io.containerd.runc.v2", "--cgroup", cg+"/"+id,
				"--rootfs", rootfs, id, "/bin/busybox", "sh", "-c", sharedScript)
			if err != nil {
				out += fmt.Sprintf("\n(%v)", err)
			}
			return out
		})
	})
}
