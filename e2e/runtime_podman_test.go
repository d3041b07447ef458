package e2e

// Real podman 4.3 (Debian) with l3iso (issue 14): its CNI backend runs the
// plugin for a container on the l3iso network; a shared-mode container
// started with --cgroup-parent is policed; the OCI hook refuses a
// container outside its l3iso container's cgroup. Podman runs in a
// sandbox (runtime_kit_test.go) with a private containers.conf, --root,
// --runroot, --tmpdir, CNI configuration directory and cache, runc (crun
// refuses this hybrid cgroup host), a busybox-static --rootfs, and never
// its default bridge network.

import (
	"debug/elf"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/mountinfo"
	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cgroup"
)

// busyboxRootfs makes a root file system of busybox-static: /bin/busybox
// and a www/index.html for its httpd.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox-static: %v", err)
	}
	if f, err := elf.Open(bb); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("%s is linked dynamically: install busybox-static", bb)
			}
		}
		f.Close()
	}
	dir := t.TempDir()
	for _, d := range []string{"bin", "www", "tmp", "proc", "sys", "dev", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "index.html"), []byte("l3iso-pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("busybox", filepath.Join(dir, "bin", "sh"))
	return dir
}

// removeV1Cgroups removes rel (a path below the cgroup mounts) from every
// cgroup v1 hierarchy, bottom-up: runc makes a container's path in each
// of them on this hybrid host, and leaves the parents it made.
func removeV1Cgroups(t *testing.T, rel string) {
	t.Helper()
	mounts, err := mountinfo.Points(mountinfo.Self, "cgroup")
	if err != nil {
		t.Error(err)
		return
	}
	for _, m := range mounts {
		dir := filepath.Join(m, rel)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		// Deepest first.
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			// A conmon that is still exiting keeps its cgroup busy a
			// moment after podman returned.
			err := unix.Rmdir(dirs[i])
			for try := 0; errors.Is(err, unix.EBUSY) && try < 100; try++ {
				time.Sleep(50 * time.Millisecond)
				err = unix.Rmdir(dirs[i])
			}
			if err != nil {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

type podman struct {
	t    *testing.T
	sb   *sandbox
	args []string // the private state
	env  []string
}

func newPodman(t *testing.T, n *netEnv, hooksDir string) *podman {
	t.Helper()
	requireTool(t, "podman", "runc", "conmon", "busybox")
	kit := cniKit(t)
	confDir, state := t.TempDir(), t.TempDir()
	writeJSONFile(t, filepath.Join(confDir, "l3iso.conflist"), cniConflist("1.0.0", "l3iso", n.env, filepath.Join(state, "ipam"), "", "10.78.0.0/24", "fd78::/64"))
	conf := filepath.Join(state, "containers.conf")
	text := fmt.Sprintf(`[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
hooks_dir = [%q]
[network]
network_backend = "cni"
network_config_dir = %q
cni_plugin_dirs = [%q]
default_network = "l3iso"
`, filepath.Join(state, "events.log"), hooksDir, confDir, kit)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &podman{
		t: t, sb: newSandbox(t, n.netns, kit, confDir, true),
		args: []string{"--root", filepath.Join(state, "root"), "--runroot", filepath.Join(state, "run"), "--tmpdir", filepath.Join(state, "tmp"),
			"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"},
		env: []string{"CONTAINERS_CONF=" + conf, "XDG_CONFIG_HOME=" + filepath.Join(state, "xdg")},
	}
	t.Cleanup(func() {
		out, errOut, err := p.sb.run(60*time.Second, p.env, "podman", append(p.args, "rm", "--all", "--force", "--time", "0")...)
		if err != nil {
			t.Errorf("podman rm --all: %v: %s %s", err, out, errOut)
		}
	})
	return p
}

// run runs podman with the private state and args.
func (p *podman) run(args ...string) (string, string, error) {
	p.t.Helper()
	return p.sb.run(60*time.Second, p.env, "podman", append(append([]string{}, p.args...), args...)...)
}

func (p *podman) mustRun(args ...string) string {
	p.t.Helper()
	out, errOut, err := p.run(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return strings.TrimSpace(out)
}

// podmanRunArgs are what every test container gets.
var podmanRunArgs = []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--runtime", "runc"}

// httpGet fetches http://dst/ from agent a, bound to nothing, and returns
// the body.
func httpGet(t *testing.T, a *sockprobe.Agent, dst netip.AddrPort) string {
	t.Helper()
	id := a.Socket(family(dst.Addr()), unix.SOCK_STREAM, 0)
	defer a.Close(id)
	var err error
	for i := 0; i < 50; i++ { // the server may still be starting
		if err = a.Connect(id, dst); err == nil {
			break
		}
		a.Close(id)
		id = a.Socket(family(dst.Addr()), unix.SOCK_STREAM, 0)
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connect %s: %v", dst, err)
	}
	if err := a.Write(id, []byte("GET /index.html HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var body []byte
	for {
		b, err := a.Read(id, 3*time.Second)
		if err != nil || len(b) == 0 {
			break
		}
		body = append(body, b...)
	}
	return string(body)
}

func TestPodman(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	n.installNFT()
	rootfs := busyboxRootfs(t)
	hooks := t.TempDir()
	writeJSONFile(t, filepath.Join(hooks, "l3iso.json"), map[string]any{
		"version": "1.0.0",
		"hook":    map[string]any{"path": binary, "args": []string{"l3iso", "--bpffs", n.bpffs, "oci-hook"}},
		"when":    map[string]any{"annotations": map[string]string{`^io\.l3iso\.container$`: ".+"}},
		"stages":  []string{"createRuntime"},
	})
	rel, err := filepath.Rel(mustCgroupMount(t), n.cgroot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeV1Cgroups(t, rel) }) // after podman's own cleanup
	p := newPodman(t, n, hooks)
	elsewhere := "/" + rel + "/elsewhere" // a cgroup of the test's that is no l3iso container

	t.Run("netns", func(t *testing.T) {
		id := p.mustRun(append(append([]string{"run", "-d", "--network", "l3iso", "--cgroup-parent", elsewhere}, podmanRunArgs...),
			"--rootfs", rootfs, "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")...)
		var k containerJSON
		for _, c := range n.listJSON() {
			if c.Adopted {
				k = c
			}
		}
		if !k.Adopted || len(k.Addresses) != 2 {
			t.Fatalf("podman run --network l3iso: l3iso has no container for it: %+v", n.listJSON())
		}
		checkServed(t, n, k)
		p.mustRun("rm", "--force", "--time", "0", id)
		if _, ok := n.findContainer(k.Name); ok {
			t.Errorf("podman rm left l3iso container %s (no CNI DEL?)", k.Name)
		}
	})

	t.Run("shared", func(t *testing.T) {
		web := "web-" + n.suffix
		n.mustRun("container", "add", web, "--addr", "10.77.0.5")
		cg := strings.TrimSpace(n.mustRun("container", "cgroup", web))
		if want := "/" + rel + "/l3iso/" + web; cg != want {
			t.Fatalf("container cgroup %s = %s, want %s", web, cg, want)
		}
		checkShared(t, n, func() string {
			o, e, err := p.run(append(append([]string{"run", "--rm", "--network", "host", "--cgroup-parent", cg, "--cap-drop", "NET_RAW",
				"--annotation", "io.l3iso.container=" + web}, podmanRunArgs...), "--rootfs", rootfs, "/bin/busybox", "sh", "-c", sharedScript)...)
			if err != nil {
				o += fmt.Sprintf("\n(podman: %v: %s)", err, e)
			}
			return o
		})
	})

	t.Run("oci-hook-refuses", func(t *testing.T) {
		web := "web-" + n.suffix
		if _, ok := n.findContainer(web); !ok { // when run alone
			n.mustRun("container", "add", web, "--addr", "10.77.0.5")
		}
		for _, c := range []struct{ annotation, cgroupParent, want string }{
			{web, elsewhere, "not inside l3iso container"},
			{"no-such-" + n.suffix, elsewhere, "no such container"},
		} {
			_, errOut, err := p.run(append(append([]string{"run", "--rm", "--network", "host", "--cgroup-parent", c.cgroupParent,
				"--annotation", "io.l3iso.container=" + c.annotation}, podmanRunArgs...), "--rootfs", rootfs, "/bin/busybox", "true")...)
			if err == nil || !strings.Contains(errOut, c.want) {
				t.Errorf("podman run annotated %s in cgroup %s: %v, %q: want a refusal saying %q", c.annotation, c.cgroupParent, err, errOut, c.want)
			}
		}
	})
}

func mustCgroupMount(t *testing.T) string {
	t.Helper()
	m, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return m
}
