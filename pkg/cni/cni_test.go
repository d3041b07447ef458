package cni

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/l3iso/l3iso/pkg/policy"
)

// TestName: every attachment's name is a valid container name that fits
// l3_meta, starts with its network's prefix, shows the container ID's
// start, and differs between attachments, interfaces and networks.
func TestName(t *testing.T) {
	seen := map[string]string{}
	for _, c := range []struct{ network, id, ifName, wantIn string }{
		{"l3iso", "3f2a9c81b0de4d8e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7", "eth0", "-3f2a9c81b0de-"},
		{"l3iso", "3f2a9c81b0de4d8e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7", "net1", "-3f2a9c81b0de-"},
		{"other", "3f2a9c81b0de4d8e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7", "eth0", "-3f2a9c81b0de-"},
		{"l3iso", "default-Web_1.x", "eth0", "-default-web--"},
		{"l3iso", "a", "eth0", "-a-"},
	} {
		n := Name(c.network, c.id, c.ifName)
		if err := policy.ValidateName(n); err != nil || len(n) > 31 {
			t.Errorf("Name(%q, %q, %q) = %q: %v (length %d, at most 31)", c.network, c.id, c.ifName, n, err, len(n))
		}
		if !strings.HasPrefix(n, Prefix(c.network)) || !strings.Contains(n, c.wantIn) {
			t.Errorf("Name(%q, %q, %q) = %q: want prefix %q and %q in it", c.network, c.id, c.ifName, n, Prefix(c.network), c.wantIn)
		}
		key := c.network + "/" + c.id + "/" + c.ifName
		if other, dup := seen[n]; dup {
			t.Errorf("%s and %s have the same name %s", key, other, n)
		}
		seen[n] = key
		if Name(c.network, c.id, c.ifName) != n {
			t.Errorf("Name(%s) is not stable", key)
		}
	}
	if Prefix("l3iso") == Prefix("other") {
		t.Errorf("two networks share prefix %s", Prefix("l3iso"))
	}
}

// TestParseConf: defaults, and the errors a person can act on.
func TestParseConf(t *testing.T) {
	c, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"l3iso"}`))
	if err != nil || c.BPFFS != "/sys/fs/bpf/l3iso" {
		t.Errorf("parseConf: %+v, %v: want the default bpffs", c, err)
	}
	for _, bad := range []struct{ conf, want string }{
		{`{"cniVersion":"1.0.0","type":"l3iso"}`, `no "name"`},
		{`{"cniVersion":`, "not valid JSON"},
	} {
		if _, err := parseConf([]byte(bad.conf)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseConf(%s): %v, want an error saying %q", bad.conf, err, bad.want)
		}
	}
}

// TestExamples: the shipped conflist is one the plugin takes (as a
// runtime hands it its entry) at the version podman 4.3 and containerd
// 1.6 accept, and the hooks.d file selects l3iso's annotation at
// createRuntime.
func TestExamples(t *testing.T) {
	b, err := os.ReadFile("../../examples/cni/10-l3iso.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("examples/cni/10-l3iso.conflist: %v (%d plugins)", err, len(list.Plugins))
	}
	var entry map[string]any
	json.Unmarshal(list.Plugins[0], &entry)
	entry["name"], entry["cniVersion"] = list.Name, list.CNIVersion
	eb, _ := json.Marshal(entry)
	conf, err := parseConf(eb)
	if err != nil || conf.Type != "l3iso" || conf.IPAM.Type != "host-local" || list.CNIVersion != "1.0.0" {
		t.Errorf("examples/cni/10-l3iso.conflist: %+v, %v: want type l3iso, ipam host-local, cniVersion 1.0.0", conf, err)
	}
	b, err = os.ReadFile("../../examples/hooks.d/l3iso.json")
	if err != nil {
		t.Fatal(err)
	}
	var hook struct {
		Version string `json:"version"`
		Hook    struct {
			Path string   `json:"path"`
			Args []string `json:"args"`
		} `json:"hook"`
		When struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"when"`
		Stages []string `json:"stages"`
	}
	if err := json.Unmarshal(b, &hook); err != nil {
		t.Fatal(err)
	}
	if hook.Version != "1.0.0" || hook.Hook.Path != "/usr/local/sbin/l3iso" || strings.Join(hook.Hook.Args, " ") != "l3iso oci-hook" ||
		hook.When.Annotations[`^io\.l3iso\.container$`] == "" || strings.Join(hook.Stages, ",") != "createRuntime" {
		t.Errorf("examples/hooks.d/l3iso.json: %+v", hook)
	}
}
