package e2e

// End-to-end tests of the CNI plugin with cnitool v1.3.1 and host-local
// v1.10.0 (issue 14): namespaces the test makes stand in for a runtime's;
// the plugin joins the env's l3iso (direct delivery, uplink up0 to an
// outside host, as in mode_netns_test.go).

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/cni"
	"github.com/l3iso/l3iso/pkg/veth"
)

// cniNet is a CNI network of the l3iso plugin in a sandbox, driven with
// cnitool.
type cniNet struct {
	n       *netEnv
	sb      *sandbox
	kit     string
	confDir string
	name    string // the network's name
}

// cniConflist is a network configuration of the l3iso plugin joining
// env e's installation (its bpffs, and its audit log) with host-local
// giving an IPv4 and an IPv6 address from the given ranges.
func cniConflist(version, name string, e *env, dataDir, policyFile string, subnets ...string) map[string]any {
	var ranges []any
	for _, s := range subnets {
		ranges = append(ranges, []any{map[string]any{"subnet": s}})
	}
	plugin := map[string]any{
		"type":     "l3iso",
		"bpffs":    e.bpffs,
		"stateDir": e.state,
		"ipam":     map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": ranges},
	}
	if policyFile != "" {
		plugin["policy"] = policyFile
	}
	return map[string]any{"cniVersion": version, "name": name, "plugins": []any{plugin}}
}

func newCNINet(t *testing.T, n *netEnv, version, policyFile string) *cniNet {
	t.Helper()
	c := &cniNet{n: n, kit: cniKit(t), confDir: t.TempDir(), name: "l3t-" + n.suffix}
	writeJSONFile(t, filepath.Join(c.confDir, "10-l3iso.conflist"),
		cniConflist(version, c.name, n.env, t.TempDir(), policyFile, "10.78.0.0/24", "fd78::/64"))
	c.sb = newSandbox(t, n.netns, c.kit, c.confDir, false)
	return c
}

// cnitool runs cnitool VERB NETWORK NETNS with CNI_ARGS args.
func (c *cniNet) cnitool(verb, netns, args string) (string, string, error) {
	c.n.t.Helper()
	env := []string{"NETCONFPATH=" + c.confDir, "CNI_PATH=" + c.kit}
	if args != "" {
		env = append(env, "CNI_ARGS="+args)
	}
	return c.sb.run(30*time.Second, env, filepath.Join(c.kit, "cnitool"), verb, c.name, netns)
}

func (c *cniNet) mustCnitool(verb, netns, args string) string {
	c.n.t.Helper()
	out, errOut, err := c.cnitool(verb, netns, args)
	if err != nil {
		c.n.t.Fatalf("cnitool %s %s: %v\nstdout: %s\nstderr: %s", verb, netns, err, out, errOut)
	}
	return out
}

// plugin runs the plugin binary itself with CNI_COMMAND cmd and conf on
// stdin (what a runtime does), and returns its stdout and error.
func (c *cniNet) plugin(cmd string, conf map[string]any, extraEnv ...string) (string, error) {
	c.n.t.Helper()
	f := filepath.Join(c.n.t.TempDir(), "conf.json")
	writeJSONFile(c.n.t, f, conf)
	env := append([]string{"CNI_COMMAND=" + cmd, "CNI_PATH=" + c.kit}, extraEnv...)
	out, errOut, err := c.sb.run(30*time.Second, env, "sh", "-c", `exec "$0" < "$1"`, filepath.Join(c.kit, "l3iso"), f)
	if err != nil && errOut != "" {
		c.n.t.Logf("plugin %s stderr: %s", cmd, errOut)
	}
	return out, err
}

// pluginConf is the plugin's entry of the network configuration with the
// network's name and version, as a runtime passes it.
func (c *cniNet) pluginConf() map[string]any {
	c.n.t.Helper()
	var list map[string]any
	b, err := os.ReadFile(filepath.Join(c.confDir, "10-l3iso.conflist"))
	if err != nil {
		c.n.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &list); err != nil {
		c.n.t.Fatal(err)
	}
	conf := list["plugins"].([]any)[0].(map[string]any)
	conf["name"], conf["cniVersion"] = list["name"], list["cniVersion"]
	return conf
}

// cniResult is what the tests read of a CNI result.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address   string `json:"address"`
		Gateway   string `json:"gateway"`
		Interface *int   `json:"interface"`
	} `json:"ips"`
}

func parseResult(t *testing.T, out string) cniResult {
	t.Helper()
	var r cniResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("CNI result %q: %v", out, err)
	}
	return r
}

// addrs are the result's first IPv4 and first IPv6 address (without
// their prefix length).
func (r cniResult) addrs() [2]netip.Addr {
	var out [2]netip.Addr
	for _, ip := range r.IPs {
		p := netip.MustParsePrefix(ip.Address)
		if i := map[bool]int{true: 0, false: 1}[p.Addr().Is4()]; !out[i].IsValid() {
			out[i] = p.Addr() // the first of each family: IPAM's
		}
	}
	return out
}

// adopted finds the container of `container list -o json` called name.
func (n *netEnv) findContainer(name string) (containerJSON, bool) {
	for _, c := range n.listJSON() {
		if c.Name == name {
			return c, true
		}
	}
	return containerJSON{}, false
}

// TestCNI drives the plugin as a runtime would, through cnitool: ADD
// (IPv4 and IPv6 from host-local), CHECK, STATUS, DEL, GC; traffic from
// the outside host reaches the pod by direct delivery (the host's
// nftables forward and input counters and IP forwarding counters stay
// still), the pod cannot spoof; apply leaves the pod alone; `up` and GC
// reap pods whose namespace vanished; versions 0.4.0 and 1.0.0 too.
func TestCNI(t *testing.T) {
	t.Parallel()
	n := newNetEnv(t, "direct")
	n.installNFT()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("pods:\n  - match: mcast-*\n    addresses: [10.78.1.5]\n    multicast: [239.1.1.0/24]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCNINet(t, n, "1.1.0", pol)
	pod := sockprobe.NewNetns(t)

	res := parseResult(t, c.mustCnitool("add", pod, "IgnoreUnknown=1;K8S_POD_NAME=mcast-web"))
	addrs := res.addrs()
	if !addrs[0].IsValid() || !addrs[1].IsValid() || !netip.MustParsePrefix("10.78.0.0/24").Contains(addrs[0]) || !netip.MustParsePrefix("fd78::/64").Contains(addrs[1]) {
		t.Fatalf("ADD result %+v: want an IPv4 address of 10.78.0.0/24 and an IPv6 one of fd78::/64", res)
	}
	if len(res.Interfaces) != 2 || !strings.HasPrefix(res.Interfaces[0].Name, veth.HostIfPrefix) || res.Interfaces[0].Sandbox != "" ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != pod {
		t.Errorf("ADD result interfaces %+v: want the host veth (no sandbox) and eth0 in %s", res.Interfaces, pod)
	}
	// cnitool names the attachment after the namespace's path.
	name := ""
	for _, k := range n.listJSON() {
		if k.Adopted {
			name = k.Name
		}
	}
	if !strings.HasPrefix(name, cni.Prefix(c.name)) {
		t.Fatalf("container list shows no container made by the CNI plugin for network %s: %+v", c.name, n.listJSON())
	}
	k, _ := n.findContainer(name)
	if k.Mode != "netns" || k.HostVeth != res.Interfaces[0].Name || k.Netns != "" || !strings.Contains(strings.Join(k.Addresses, " "), "10.78.1.5") || strings.Join(k.Multicast, " ") != "239.1.1.0/24" {
		t.Errorf("container %s: %+v: want netns mode, veth %s, no l3iso namespace, the pods: rule's 10.78.1.5 and 239.1.1.0/24", name, k, res.Interfaces[0].Name)
	}
	if !strings.Contains(n.mustRun("container", "list"), "cni") {
		t.Errorf("container list does not say which container the CNI plugin made:\n%s", n.mustRun("container", "list"))
	}
	if st := n.status(); len(st.Problems) > 0 {
		t.Fatalf("status after ADD: %v", st.Problems)
	}
	c.mustCnitool("check", pod, "")
	c.mustCnitool("status", pod, "")

	// Direct delivery, both ways, both families; the extra address too.
	in, out := sockprobe.Start(t, sockprobe.Options{NetnsPath: pod}), n.out()
	before := n.hostCounters()
	for fi, outAddr := range []netip.Addr{outside4, outside6} {
		reach(t, unix.SOCK_STREAM, out, in, netip.AddrPortFrom(addrs[fi], 7700), outAddr)
		reach(t, unix.SOCK_DGRAM, out, in, netip.AddrPortFrom(addrs[fi], 7701), outAddr)
		reach(t, unix.SOCK_STREAM, in, out, netip.AddrPortFrom(outAddr, 7702), addrs[fi])
	}
	reach(t, unix.SOCK_STREAM, out, in, netip.AddrPortFrom(netip.MustParseAddr("10.78.1.5"), 7703), outside4)
	if after := n.hostCounters(); after != before {
		t.Errorf("direct delivery to a CNI pod: the host stack saw its traffic: counters %+v → %+v", before, after)
	}
	if cnt := n.counters()[name]; cnt["tc_redirected_in"] == 0 || cnt["tc_redirected_out"] == 0 {
		t.Errorf("redirect counters of %s did not count: %v", name, cnt)
	}
	t.Run("pod-to-shared-wildcard", func(t *testing.T) {
		// A pod reaches a shared container's wildcard listeners
		// through its veth, as any netns container does
		// (TestNetnsToSharedWildcard), and gets the UDP replies from
		// the port it sent to.
		s := n.name("svc")
		n.names = append(n.names, s)
		n.mustRun("container", "add", s, "--addr", "10.79.0.1/24", "--addr", "fd79::1/64")
		defer n.mustRun("container", "del", s)
		svc := n.agent(s)
		for fi, dst := range []netip.Addr{netip.MustParseAddr("10.79.0.1"), netip.MustParseAddr("fd79::1")} {
			l := wildListener(t, svc, unix.SOCK_STREAM, family(dst), 7710)
			u := wildListener(t, svc, unix.SOCK_DGRAM, family(dst), 7711)
			id := in.Socket(family(dst), unix.SOCK_STREAM, 0)
			if err := in.Connect(id, netip.AddrPortFrom(dst, 7710)); err != nil {
				t.Errorf("pod connect %v:7710: %v", dst, err)
			} else if _, peer, err := svc.Accept(l, 3*time.Second); err != nil || peer.Addr() != addrs[fi] {
				t.Errorf("the shared container's listener: accepted from %v, %v; want from %v", peer, err, addrs[fi])
			}
			in.Close(id)
			udpRoundTrip(t, in, svc, u, netip.AddrPortFrom(dst, 7711), addrs[fi], 100)
			svc.Close(l)
			svc.Close(u)
		}
	})
	t.Run("spoofed-source", func(t *testing.T) {
		checkSpoofAt(t, n, name, pod, "eth0", [2]netip.Addr{netip.MustParseAddr("10.78.0.200"), netip.MustParseAddr("fd78::200")})
	})

	t.Run("check-finds-a-missing-address", func(t *testing.T) {
		ipRun(t, []string{"-n", filepath.Base(pod), "addr", "del", addrs[1].String() + "/64", "dev", "eth0"})
		_, errOut, err := c.cnitool("check", pod, "")
		if err == nil || !strings.Contains(errOut, "lacks address "+addrs[1].String()) {
			t.Errorf("cnitool check with an address gone: %v, %q: want an error naming the address", err, errOut)
		}
		ipRun(t, []string{"-n", filepath.Base(pod), "addr", "add", addrs[1].String() + "/64", "dev", "eth0", "nodad"})
		c.mustCnitool("check", pod, "")
	})

	t.Run("apply-leaves-it-alone", func(t *testing.T) {
		n.apply("containers:\n  web-" + n.suffix + ":\n    addresses: [10.77.0.1]\n")
		if _, ok := n.findContainer(name); !ok {
			t.Fatalf("apply removed %s, which the CNI plugin made", name)
		}
		f := policyFile(t, "containers:\n  x-"+n.suffix+":\n    mode: netns\n    addresses: ["+addrs[0].String()+"]\n")
		n.mustFail([]string{addrs[0].String(), name, "CNI plugin"}, "apply", "-f", f)
		c.mustCnitool("check", pod, "")
		n.mustRun("apply", "-f", policyFile(t, "containers: {}\n"), "--allow-empty")
		// The policy whose pods: rule gave the pod 10.78.1.5 applies.
		n.mustRun("apply", "-f", pol, "--allow-empty")
		if _, ok := n.findContainer(name); !ok {
			t.Fatalf("an empty apply removed %s, which the CNI plugin made", name)
		}
	})

	t.Run("del", func(t *testing.T) {
		hostIf := res.Interfaces[0].Name
		c.mustCnitool("del", pod, "")
		if _, ok := n.findContainer(name); ok {
			t.Errorf("DEL left container %s", name)
		}
		if out, _ := exec.Command("ip", "-n", filepath.Base(n.netns), "link", "show", hostIf).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
			t.Errorf("DEL left the host veth %s: %s", hostIf, out)
		}
		if _, err := os.Stat(pod); err != nil {
			t.Errorf("DEL removed the runtime's namespace %s: %v", pod, err)
		}
		c.mustCnitool("del", pod, "") // again: nothing to do, success
		// The audit log has the plugin's ADD and DEL of it (once: the
		// second DEL changed nothing).
		h := n.mustRun("history", "-o", "json")
		if strings.Count(h, `"command":"cni ADD"`) == 0 || strings.Count(h, `"- container \"`+name+`\""`) != 1 {
			t.Errorf("history has no cni ADD, or not one cni DEL of %s:\n%s", name, h)
		}
	})

	t.Run("up-reaps-a-vanished-namespace", func(t *testing.T) {
		gone := releasableNetns(t)
		c.mustCnitool("add", gone, "")
		before := len(n.listJSON())
		ipRun(t, []string{"netns", "del", filepath.Base(gone)}) // the runtime releases it without DEL
		waitFor(t, 5*time.Second, "the kernel to remove the released namespace's veth", func() bool {
			st := n.run("status")
			return st.code != 0 && strings.Contains(st.stdout+st.stderr, "without a CNI DEL")
		})
		if up := n.mustRun("up"); !strings.Contains(up, "removed") {
			t.Errorf("up did not say it removed the pod: %s", up)
		}
		if got := len(n.listJSON()); got != before-1 {
			t.Errorf("after up: %d containers, want %d", got, before-1)
		}
		if st := n.status(); len(st.Problems) > 0 {
			t.Errorf("status after up: %v", st.Problems)
		}
		c.mustCnitool("del", gone, "") // DEL of a missing namespace: success
	})

	t.Run("gc", func(t *testing.T) {
		keep, drop := sockprobe.NewNetns(t), sockprobe.NewNetns(t)
		keepRes := parseResult(t, c.mustCnitool("add", keep, ""))
		c.mustCnitool("add", drop, "")
		conf := c.pluginConf()
		keepName := ""
		for _, k := range n.listJSON() {
			if k.Adopted && k.HostVeth == keepRes.Interfaces[0].Name {
				keepName = k.Name
			}
		}
		var all []string
		for _, k := range n.listJSON() {
			if k.Adopted {
				all = append(all, k.Name)
			}
		}
		// The attachment cnitool made for keep: its container ID is
		// cnitool's hash of the namespace's path.
		keepID := cnitoolID(keep)
		if cni.Name(c.name, keepID, "eth0") != keepName {
			t.Fatalf("cnitool's container ID for %s is not %s (%s is not %s)", keep, keepID, cni.Name(c.name, keepID, "eth0"), keepName)
		}
		conf["cni.dev/valid-attachments"] = []any{map[string]any{"containerID": keepID, "ifname": "eth0"}}
		if out, err := c.plugin("GC", conf); err != nil {
			t.Fatalf("GC: %v: %s", err, out)
		}
		var left []string
		for _, k := range n.listJSON() {
			if k.Adopted {
				left = append(left, k.Name)
			}
		}
		if len(all) != 2 || len(left) != 1 || left[0] != keepName {
			t.Errorf("GC with %s valid: CNI containers %v → %v, want only %s left", keepName, all, left, keepName)
		}
		// cnitool gc: an empty valid list (the key absent): DEL of every
		// cached attachment, then GC.
		c.mustCnitool("gc", keep, "")
		for _, k := range n.listJSON() {
			if k.Adopted {
				t.Errorf("cnitool gc left %s", k.Name)
			}
		}
	})

	t.Run("status-when-down", func(t *testing.T) {
		conf := c.pluginConf()
		conf["bpffs"] = filepath.Join(t.TempDir(), "nothing")
		out, err := c.plugin("STATUS", conf)
		if err == nil || !strings.Contains(out, `"code": 100`) || !strings.Contains(out, "l3iso is not up") || !strings.Contains(out, "l3iso up") {
			t.Errorf("STATUS with no l3iso: %v, %s: want error code 100 saying to run l3iso up", err, out)
		}
	})

	t.Run("version-and-errors", func(t *testing.T) {
		out, err := c.plugin("VERSION", c.pluginConf())
		if err != nil || !strings.Contains(out, `"supportedVersions":["0.4.0","1.0.0","1.1.0"]`) {
			t.Errorf("CNI_COMMAND=VERSION: %v, %s", err, out)
		}
		// A network that gives no addresses: a CNI error object that says
		// what to add.
		conf := c.pluginConf()
		delete(conf, "ipam")
		ns := sockprobe.NewNetns(t)
		out, err = c.plugin("ADD", conf, "CNI_CONTAINERID=l3t-noaddr", "CNI_NETNS="+ns, "CNI_IFNAME=eth0")
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if err == nil || json.Unmarshal([]byte(out), &e) != nil || e.Code != 7 || !strings.Contains(e.Msg, `add "ipam"`) {
			t.Errorf("ADD without ipam: %v, %s: want CNI error 7 saying to add ipam", err, out)
		}
	})

	for _, v := range []string{"0.4.0", "1.0.0"} {
		t.Run("version-"+v, func(t *testing.T) {
			cv := newCNINet(t, n, v, "")
			ns := sockprobe.NewNetns(t)
			r := parseResult(t, cv.mustCnitool("add", ns, ""))
			if r.CNIVersion != v || len(r.IPs) != 2 {
				t.Errorf("ADD with cniVersion %s: result %+v", v, r)
			}
			cv.mustCnitool("check", ns, "")
			cv.mustCnitool("del", ns, "")
		})
	}
}

// cnitoolID is the container ID cnitool gives the attachment of the
// namespace at path: "cnitool-" and the hex of the first 10 bytes of the
// SHA-512 of the path.
func cnitoolID(path string) string {
	sum := sha512.Sum512([]byte(path))
	return "cnitool-" + hex.EncodeToString(sum[:10])
}

// releasableNetns makes a network namespace the test may release (as a
// runtime does, `ip netns del`) before its end; cleanup removes it if not.
func releasableNetns(t *testing.T) string {
	t.Helper()
	name := filepath.Base(sockprobe.NewNetns(t)) + "-r"
	ipRun(t, []string{"netns", "add", name})
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return filepath.Join("/run/netns", name)
}
