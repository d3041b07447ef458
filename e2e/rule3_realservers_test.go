package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l3iso/l3iso/internal/sockprobe"
)

// Rule 3 and rule 5 with unmodified programs (issue 13): Debian's nginx
// and redis-server and a Go server with Go's default listeners, started
// with `l3iso exec` in two shared containers at once, each with two IPv4
// and two IPv6 addresses, beside the host's own listeners on the same
// ports.

const realPolicy = `
containers:
  a:
    addresses: [10.77.0.1/24, 10.77.0.5/24, fd77::1/64, fd77::5/64]
  b:
    addresses: [10.77.0.2/24, 10.77.0.6/24, fd77::2/64, fd77::6/64]
`

var realAddrs = map[string][]string{
	"a": {"10.77.0.1", "10.77.0.5", "fd77::1", "fd77::5"},
	"b": {"10.77.0.2", "10.77.0.6", "fd77::2", "fd77::6"},
}

// The host's own addresses in the test's netns (one end of a veth).
const hostIP4, hostIP6 = "192.0.2.10", "2001:db8:5::10"

// idServer builds testdata/idserver once, into the test binary's
// directory (e2eDir): a Go server with Go's default listeners that answers
// with its name.
func idServer(t *testing.T) string {
	t.Helper()
	p, err := buildIDServer()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var buildIDServer = sync.OnceValues(func() (string, error) {
	p := filepath.Join(e2eDir, "idserver")
	if err := goBuild(p, "./testdata/idserver"); err != nil {
		return "", err
	}
	return p, os.Chmod(e2eDir, 0o755) // exec runs it as the containers' host uids
})

// bg runs `l3iso ARGS...` in the env's netns in the background until the
// test ends (`down` kills what is left in the containers). With ready set,
// it waits for a stdout line that starts with it.
func (e *env) bg(ready string, args ...string) {
	t := e.t
	t.Helper()
	full := append([]string{"--net=" + e.netns, binary, "--bpffs", e.bpffs}, args...)
	cmd := exec.Command("nsenter", full...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if ready == "" {
		go func() {
			for range lines {
			}
		}()
		return
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("l3iso %s ended before it was ready: %s", strings.Join(args, " "), stderr.String())
			}
			if strings.HasPrefix(l, ready) {
				go func() {
					for range lines {
					}
				}()
				return
			}
		case <-deadline:
			t.Fatalf("l3iso %s: not ready after 10s: %s", strings.Join(args, " "), stderr.String())
		}
	}
}

// probe is one client request of testdata/probe.py, and its result.
type probe struct {
	Kind    string  `json:"kind"`
	Addr    string  `json:"addr"`
	Port    int     `json:"port"`
	Path    string  `json:"path,omitempty"`
	Wait    float64 `json:"wait,omitempty"`
	Timeout float64 `json:"timeout,omitempty"`
}

type probeResult struct {
	OK     bool    `json:"ok"`
	Status int     `json:"status"`
	Body   string  `json:"body"`
	Peer   string  `json:"peer"`
	Local  string  `json:"local"`
	Error  string  `json:"error"`
	Secs   float64 `json:"secs"`
}

// probes runs testdata/probe.py in container from ("" = the host), with
// `l3iso exec` for a container, and returns one result per probe.
func (e *env) probes(from string, ps []probe) []probeResult {
	t := e.t
	t.Helper()
	script, err := filepath.Abs("testdata/probe.py")
	if err != nil {
		t.Fatal(err)
	}
	arg, _ := json.Marshal(ps)
	var out string
	if from == "" {
		out, err = sockprobe.Python(t, sockprobe.Options{CgroupDir: e.hostCg, NetnsPath: e.netns}, "exec(open('"+script+"').read())", string(arg))
		if err != nil {
			t.Fatalf("probes from the host: %v: %s", err, out)
		}
	} else {
		r := e.run("exec", from, "--", "python3", script, string(arg))
		if r.code != 0 {
			t.Fatalf("probes from %s: exit %d: %s", from, r.code, r.stderr)
		}
		out = r.stdout
	}
	var res []probeResult
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r probeResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("probe output %q: %v", l, err)
		}
		res = append(res, r)
	}
	if len(res) != len(ps) {
		t.Fatalf("%d probe results for %d probes: %s", len(res), len(ps), out)
	}
	return res
}

// worldDir is a fresh directory anyone may write: servers run by `exec`
// run as a container's own (unprivileged on the host) root.
func worldDir(t *testing.T, elem ...string) string {
	t.Helper()
	d := filepath.Join(append([]string{t.TempDir()}, elem...)...)
	if err := os.MkdirAll(d, 0o777); err != nil {
		t.Fatal(err)
	}
	for p := d; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o777)
	}
	return d
}

// nginxConf writes an nginx configuration for container name: a dual-stack
// listener on 8080 that answers with its name, and an admin listener on
// 8081 that only 127.0.0.1 and ::1 may use.
func nginxConf(t *testing.T, name string) string {
	t.Helper()
	d := worldDir(t, "nginx-"+name)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen [::]:8080 ipv6only=off;
		location / { return 200 "%[2]s\n"; }
	}
	server {
		listen [::]:8081 ipv6only=off;
		# (return would answer before access: the rewrite phase comes first)
		location / { allow 127.0.0.1; allow ::1; deny all; root %[1]s/www; }
	}
}
`, d, name)
	f := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "www", "index.html"), []byte("admin "+name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// hostAddresses gives the env's netns addresses of the host's own, on
// one end of a veth: hostIP4, hostIP6.
func (e *env) hostAddresses() {
	t := e.t
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", "hostif", "type", "veth", "peer", "name", "hostif-p"},
		{"link", "set", "hostif-p", "up"},
		{"addr", "add", hostIP4 + "/24", "dev", "hostif"},
		{"addr", "add", hostIP6 + "/64", "dev", "hostif", "nodad"},
		{"link", "set", "hostif", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", filepath.Base(e.netns)}, args...)...).CombinedOutput(); err != nil {
			// the env's netns is a bind mount, not in /run/netns: nsenter
			if out2, err2 := exec.Command("nsenter", append([]string{"--net=" + e.netns, "ip"}, args...)...).CombinedOutput(); err2 != nil {
				t.Fatalf("ip %v: %v: %s %s", args, err2, out, out2)
			}
		}
	}
}

func TestRealServers(t *testing.T) {
	t.Parallel()
	requireTool(t, "nginx", "redis-server", "redis-cli", "python3")
	e := newEnv(t)
	e.hostAddresses()
	e.apply(realPolicy)
	// A netns container as a client too: its packets reach the host stack
	// through its veth, not lo (TestNetnsToSharedWildcard).
	e.mustRun("container", "add", "n", "--mode", "netns", "--addr", "10.78.0.9/24", "--addr", "fd78::9/64")
	srv := idServer(t)

	// The host listens on the same ports first (Go's default listener, a
	// dual-stack wildcard, like any host daemon).
	host := e.agent("")
	hid, _, err := host.GoListen("tcp", ":8090")
	if err != nil {
		t.Fatalf("host listener on *:8090: %v", err)
	}
	defer host.Close(hid)
	hid2, _, err := host.GoListen("tcp", ":8080")
	if err != nil {
		t.Fatalf("host listener on *:8080: %v", err)
	}
	defer host.Close(hid2)

	for _, c := range []string{"a", "b"} {
		e.bg("ready", "exec", c, "--", srv, c, "8090")
		e.bg("", "exec", c, "--", "nginx", "-c", nginxConf(t, c))
	}
	redisDir := worldDir(t, "redis")
	// Debian's redis-server with its defaults: every address, protected mode.
	e.bg("", "exec", "a", "--", "redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--dir", redisDir)

	// Every address of each container, both families, from the host, from
	// the other container and from the netns container: each answers for
	// itself only.
	for _, owner := range []string{"a", "b"} {
		other := map[string]string{"a": "b", "b": "a"}[owner]
		var ps []probe
		for _, addr := range realAddrs[owner] {
			ps = append(ps,
				probe{Kind: "http", Addr: addr, Port: 8080, Wait: 5},
				probe{Kind: "tcp", Addr: addr, Port: 8090, Wait: 5},
				probe{Kind: "udp", Addr: addr, Port: 8090, Timeout: 2})
		}
		for _, from := range []string{"", other, "n"} {
			for i, r := range e.probes(from, ps) {
				p := ps[i]
				if !r.OK || r.Body != owner {
					t.Errorf("%s %s:%d from %s: got %+v, want an answer from %s", p.Kind, p.Addr, p.Port, who(from), r, owner)
				}
			}
		}
	}

	// The host's own listeners get the host's addresses.
	for _, addr := range []string{hostIP4, hostIP6} {
		r := e.probes("b", []probe{{Kind: "connect", Addr: addr, Port: 8090}})[0]
		if !r.OK {
			t.Errorf("connect from b to the host's %s:8090: %+v", addr, r)
			continue
		}
		if _, err := host.GoAccept(hid, 3*time.Second); err != nil {
			t.Errorf("the host's listener did not get b's connection to %s:8090: %v", addr, err)
		}
	}

	// Loopback shows 127.0.0.1 / ::1 on both ends: redis in protected mode
	// answers its own container's redis-cli; nginx's allow 127.0.0.1
	// serves its own container's client and nobody else.
	if r := e.run("exec", "a", "--", "redis-cli", "-h", "127.0.0.1", "ping"); r.code != 0 || strings.TrimSpace(r.stdout) != "PONG" {
		t.Errorf("redis-cli -h 127.0.0.1 ping in a: exit %d, %q %q, want PONG", r.code, r.stdout, r.stderr)
	}
	if r := e.run("exec", "a", "--", "redis-cli", "-h", "::1", "ping"); r.code != 0 || strings.TrimSpace(r.stdout) != "PONG" {
		t.Errorf("redis-cli -h ::1 ping in a: exit %d, %q %q, want PONG", r.code, r.stdout, r.stderr)
	}
	if r := e.run("exec", "b", "--", "redis-cli", "-h", "127.0.0.1", "ping"); strings.Contains(r.stdout, "PONG") || !strings.Contains(r.stdout+r.stderr, "refused") {
		t.Errorf("redis-cli -h 127.0.0.1 ping in b reached a's redis (or failed otherwise): %q %q", r.stdout, r.stderr)
	}
	for _, c := range []string{"a", "b"} {
		for _, lo := range []string{"127.0.0.1", "::1"} {
			r := e.probes(c, []probe{{Kind: "http", Addr: lo, Port: 8081, Wait: 5}})[0]
			if !r.OK || r.Status != 200 || r.Body != "admin "+c {
				t.Errorf("%s: http://%s:8081/ got %+v, want 200 from its own nginx", c, lo, r)
			}
		}
	}
	// The admin port from the other container, at a's address: denied.
	if r := e.probes("b", []probe{{Kind: "http", Addr: "10.77.0.1", Port: 8081}})[0]; !r.OK || r.Status != 403 {
		t.Errorf("b: http://10.77.0.1:8081/ got %+v, want 403 from a's nginx", r)
	}

	// A port nobody of the container listens on is refused at once — also
	// where the host has a wildcard listener on it — over TCP and UDP.
	hid3, _, err := host.GoListen("tcp", ":9999")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close(hid3)
	for _, from := range []string{"", "b"} {
		for _, addr := range []string{"10.77.0.1", "fd77::5"} {
			for _, kind := range []string{"connect", "cudp"} {
				r := e.probes(from, []probe{{Kind: kind, Addr: addr, Port: 9999, Timeout: 3}})[0] // connected: ICMP errors are reported
				if r.OK || r.Error != "ECONNREFUSED" || r.Secs > 1 {
					t.Errorf("%s to %s:9999 from %s: %+v, want ECONNREFUSED at once", kind, addr, who(from), r)
				}
			}
		}
	}
}

func who(from string) string {
	if from == "" {
		return "the host"
	}
	return from
}
