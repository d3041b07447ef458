package kubernetes

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/l3iso/l3iso/pkg/policy"
)

// object is what the test reads of a Kubernetes object.
type object struct {
	APIVersion string         `yaml:"apiVersion"`
	Kind       string         `yaml:"kind"`
	Metadata   map[string]any `yaml:"metadata"`
	Data       map[string]string
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				ServiceAccountName string `yaml:"serviceAccountName"`
				HostNetwork        bool   `yaml:"hostNetwork"`
				Containers         []struct {
					Name            string   `yaml:"name"`
					Image           string   `yaml:"image"`
					Command         []string `yaml:"command"`
					SecurityContext struct {
						Privileged bool `yaml:"privileged"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
					HostPath *struct {
						Path string `yaml:"path"`
					} `yaml:"hostPath"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
	RoleRef struct {
		Name string `yaml:"name"`
	} `yaml:"roleRef"`
	Subjects []struct {
		Kind, Name, Namespace string
	} `yaml:"subjects"`
}

func (o object) name() string { s, _ := o.Metadata["name"].(string); return s }

// load reads every document of the manifests, strictly (an unknown field
// of what the test models is no error: it models only part).
func load(t *testing.T) map[string]object {
	t.Helper()
	b, err := os.ReadFile("l3iso.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	out := map[string]object{}
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("l3iso.yaml: %v", err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.name() == "" {
			t.Fatalf("l3iso.yaml: an object without apiVersion, kind or name: %+v", o)
		}
		key := o.Kind + "/" + o.name()
		if _, dup := out[key]; dup {
			t.Errorf("l3iso.yaml: %s twice", key)
		}
		out[key] = o
	}
	return out
}

// TestManifests checks the DaemonSet's manifests as far as a machine
// without Kubernetes can: every object is there and refers to the others
// correctly, the DaemonSet runs privileged in the host network with the
// host paths the node script writes, the ConfigMap's policy parses as
// `l3iso apply` parses it, its network configuration (rendered as the
// node script renders it) is one the plugin takes, and the node script
// is valid bash.
func TestManifests(t *testing.T) {
	objs := load(t)
	for _, want := range []string{"ServiceAccount/l3iso", "ClusterRole/l3iso", "ClusterRoleBinding/l3iso", "ConfigMap/l3iso-config", "DaemonSet/l3iso"} {
		if _, ok := objs[want]; !ok {
			t.Fatalf("l3iso.yaml has no %s", want)
		}
	}
	ds := objs["DaemonSet/l3iso"]
	if ds.APIVersion != "apps/v1" {
		t.Errorf("DaemonSet apiVersion %s, want apps/v1", ds.APIVersion)
	}
	spec := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("DaemonSet selector %s=%s does not match its pod template's labels %v", k, v, ds.Spec.Template.Metadata.Labels)
		}
	}
	if len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Errorf("DaemonSet has no selector")
	}
	if !spec.HostNetwork {
		t.Errorf("DaemonSet pods must run in the host's network namespace (hostNetwork: true): l3iso up attaches to the node's uplink")
	}
	if spec.ServiceAccountName != "l3iso" {
		t.Errorf("DaemonSet service account %q, want l3iso", spec.ServiceAccountName)
	}
	crb := objs["ClusterRoleBinding/l3iso"]
	if crb.RoleRef.Name != "l3iso" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "l3iso" || crb.Subjects[0].Namespace != ds.Metadata["namespace"] {
		t.Errorf("ClusterRoleBinding does not bind role l3iso to the DaemonSet's service account: %+v", crb)
	}
	volumes := map[string]bool{}
	var configMap string
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		if v.ConfigMap != nil {
			configMap = v.ConfigMap.Name
		}
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !c.SecurityContext.Privileged {
		t.Errorf("container %s is not privileged: l3iso loads BPF programs and makes veths", c.Name)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if !volumes[m.Name] {
			t.Errorf("container %s mounts volume %s, which the pod does not have", c.Name, m.Name)
		}
		mounts[m.MountPath] = m.Name
	}
	// Where the node script writes on the host, and what l3iso needs.
	for path, host := range map[string]string{
		"/host/opt/cni/bin": "/opt/cni/bin", "/host/etc/cni/net.d": "/etc/cni/net.d", "/host/etc/l3iso": "/etc/l3iso",
		"/sys/fs/bpf": "/sys/fs/bpf", "/sys/fs/cgroup": "/sys/fs/cgroup",
	} {
		if hostPaths[mounts[path]] != host {
			t.Errorf("container %s: %s is not the host's %s (volume %q: %q)", c.Name, path, host, mounts[path], hostPaths[mounts[path]])
		}
	}
	cm, ok := objs["ConfigMap/"+configMap]
	if !ok {
		t.Fatalf("the DaemonSet mounts ConfigMap %q, which l3iso.yaml does not have", configMap)
	}
	if mounts["/etc/l3iso-config"] == "" || len(c.Command) < 2 || c.Command[len(c.Command)-1] != "/etc/l3iso-config/l3iso-node.sh" {
		t.Errorf("container %s does not run the ConfigMap's l3iso-node.sh from /etc/l3iso-config: %v", c.Name, c.Command)
	}
	for _, key := range []string{"uplink", "policy.yaml", "10-l3iso.conflist.template", "l3iso-node.sh"} {
		if _, ok := cm.Data[key]; !ok {
			t.Errorf("ConfigMap %s has no %s", configMap, key)
		}
	}

	t.Run("policy", func(t *testing.T) {
		p, err := policy.Parse("policy.yaml", []byte(cm.Data["policy.yaml"]))
		if err != nil {
			t.Fatalf("the ConfigMap's policy.yaml: %v", err)
		}
		if _, ok := p.MatchPod("kube-system/coredns-abc"); !ok {
			t.Errorf("the example pods: rule does not match a kube-system pod")
		}
	})

	t.Run("conflist", func(t *testing.T) {
		// As the node script renders it for a dual-stack node.
		text := strings.Replace(cm.Data["10-l3iso.conflist.template"], "__RANGES__", `[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]]`, 1)
		var list struct {
			CNIVersion string           `json:"cniVersion"`
			Name       string           `json:"name"`
			Plugins    []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal([]byte(text), &list); err != nil {
			t.Fatalf("the rendered conflist is not JSON: %v\n%s", err, text)
		}
		// Podman 4.3 and containerd 1.6 take results up to 1.0.0 only.
		if list.CNIVersion != "1.0.0" || list.Name == "" || len(list.Plugins) != 1 || list.Plugins[0]["type"] != "l3iso" {
			t.Errorf("conflist %s: want cniVersion 1.0.0, a name and one plugin of type l3iso", text)
		}
		if list.Plugins[0]["bpffs"] != "/sys/fs/bpf/l3iso" || list.Plugins[0]["policy"] != "/etc/l3iso/policy.yaml" {
			t.Errorf("conflist: bpffs %v and policy %v are not where the DaemonSet puts them", list.Plugins[0]["bpffs"], list.Plugins[0]["policy"])
		}
		ipam, _ := list.Plugins[0]["ipam"].(map[string]any)
		if ipam["type"] != "host-local" {
			t.Errorf("conflist: IPAM %v, want host-local", ipam)
		}
	})

	t.Run("node-script", func(t *testing.T) {
		bash, err := exec.LookPath("bash")
		if err != nil {
			t.Skip("no bash")
		}
		f := filepath.Join(t.TempDir(), "l3iso-node.sh")
		if err := os.WriteFile(f, []byte(cm.Data["l3iso-node.sh"]), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bash, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("l3iso-node.sh: bash -n: %v: %s", err, out)
		}
		for _, want := range []string{"l3iso up --cgroup-root", "l3iso apply -f", "/host/opt/cni/bin", "/etc/cni/net.d/10-l3iso.conflist"} {
			if !strings.Contains(cm.Data["l3iso-node.sh"], strings.TrimPrefix(want, "/host")) {
				t.Errorf("l3iso-node.sh does not %q", want)
			}
		}
	})

	// The Dockerfile copies what `make build` makes, where the script
	// takes it from.
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"COPY bin/l3iso /usr/local/sbin/l3iso", "COPY bin/cni/l3iso /usr/local/lib/l3iso/cni/l3iso"} {
		if !slices.Contains(strings.Split(string(b), "\n"), want) {
			t.Errorf("Dockerfile has no line %q", want)
		}
	}
}
