// Command l3iso-cni is l3iso's CNI plugin (type "l3iso"): `make` builds it
// as bin/cni/l3iso and `make install` puts it in /opt/cni/bin. A runtime
// (podman, containerd, a Kubernetes node) runs it with CNI_COMMAND=ADD,
// DEL, CHECK, STATUS, GC or VERSION; see pkg/cni and docs/runtimes.md,
// "Container runtimes, CNI and Kubernetes".
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/l3iso/l3iso/pkg/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs, cni.Versions, "CNI plugin l3iso: netns containers of the host's l3iso installation, with direct delivery and anti-spoofing")
}
