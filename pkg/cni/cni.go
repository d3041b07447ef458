// Package cni is l3iso's CNI plugin (type "l3iso", binary cmd/l3iso-cni,
// installed as /opt/cni/bin/l3iso): it lets a container runtime — podman,
// containerd, a Kubernetes node — put its containers' network namespaces
// into the l3iso installation of the host as netns containers with direct
// delivery and anti-spoofing, exactly as `l3iso container add --mode netns`
// does, except that the namespace is the runtime's (adopted: see
// pkg/control/adopt.go).
//
// The network configuration (a conflist entry) takes:
//
//	"type":   "l3iso"
//	"bpffs":  the pin directory of the `l3iso up` to join (default /sys/fs/bpf/l3iso)
//	"ipam":   the IPAM plugin that gives the addresses (e.g. host-local); without
//	          one, the addresses of a previous plugin's result (prevResult)
//	"policy": a policy file whose pods: rules give pods extra addresses and
//	          multicast groups (optional; see policy.PodRule)
//	"stateDir": the directory of the audit log its ADD, DEL and GC are
//	          recorded in (default $L3ISO_STATE_DIR, else /var/lib/l3iso)
//
// Each attachment (container ID, interface name) of network NET is the
// l3iso container Name(NET, ID, IFNAME): "cni" + 4 characters naming the
// network + "-" + the first 12 characters of the container ID + "-" + 6
// characters of a hash of all three, so GC finds the network's containers
// by their prefix and a person finds `podman ps`'s short ID in `l3iso
// container list`.
package cni

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/l3iso/l3iso/pkg/audit"
	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Versions are the CNI versions the plugin speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// Funcs are the plugin's commands, for skel.PluginMainFuncs.
var Funcs = skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}

// NetConf is the plugin's entry of a network configuration.
type NetConf struct {
	types.PluginConf
	// BPFFS is the pin directory of the l3iso installation to join.
	BPFFS string `json:"bpffs,omitempty"`
	// Policy is a policy file whose pods: rules apply (optional).
	Policy string `json:"policy,omitempty"`
	// StateDir holds the audit log the plugin records its changes in
	// (pkg/audit; default: $L3ISO_STATE_DIR, else /var/lib/l3iso).
	StateDir string `json:"stateDir,omitempty"`
}

// podArgs are the CNI_ARGS the plugin reads.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // the CNI argument's name
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive
}

// Error codes of the plugin's own errors (CNI reserves 1-99).
const (
	ErrNotUp    = 100 // l3iso is not up at the configured bpffs
	ErrAddress  = 101 // an address l3iso cannot give the container
	ErrVerify   = 102 // CHECK found a difference
	ErrInternal = 103 // anything else
)

// Gateways the container's default routes use (pkg/veth).
var gateways = map[bool]netip.Addr{true: veth.GatewayIPv4, false: veth.GatewayIPv6}

func parseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the l3iso network configuration is not valid JSON: "+err.Error(), "")
	}
	if conf.BPFFS == "" {
		conf.BPFFS = loader.DefaultBPFFS
	}
	if conf.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `the network configuration has no "name": give the network one (e.g. "l3iso")`, "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the previous plugin's result (prevResult) cannot be read: "+err.Error(), "")
	}
	return conf, nil
}

// Prefix is the start of the names of network's containers.
func Prefix(network string) string {
	sum := sha256.Sum256([]byte(network))
	return "cni" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:4] + "-"
}

// Name is the l3iso container of attachment (containerID, ifName) of
// network (see the package comment).
func Name(network, containerID, ifName string) string {
	short := []byte(strings.ToLower(containerID))
	if len(short) > 12 {
		short = short[:12]
	}
	for i, ch := range short {
		if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') {
			short[i] = '-'
		}
	}
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return Prefix(network) + string(short) + "-" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:6]
}

// open opens the installation; a missing one is a CNI error that says
// what to do.
func open(conf *NetConf, exclusive bool) (*control.Control, error) {
	c, err := control.Open(conf.BPFFS, exclusive)
	if errors.Is(err, loader.ErrNotUp) {
		return nil, types.NewError(ErrNotUp, fmt.Sprintf("l3iso is not up at %s: run `l3iso up --uplink IF` on this host (or set \"bpffs\" in network %q to the --bpffs that up used)", conf.BPFFS, conf.Name), err.Error())
	}
	if err != nil {
		return nil, types.NewError(ErrInternal, fmt.Sprintf("open the l3iso installation at %s: %v", conf.BPFFS, err), "")
	}
	return c, nil
}

// openAudit opens the audit log before anything changes: an attachment
// that cannot be recorded is not made (or removed).
func openAudit(conf *NetConf) (*audit.Log, error) {
	bpffs := conf.BPFFS
	if abs, err := filepath.Abs(bpffs); err == nil {
		bpffs = abs
	}
	l, err := audit.Open(audit.Options{StateDir: conf.StateDir, BPFFS: bpffs})
	if err != nil {
		return nil, types.NewError(ErrInternal, fmt.Sprintf("%v (network %q: or set \"stateDir\")", err, conf.Name), "")
	}
	return l, nil
}

// record records a change of the plugin's (command: ADD, DEL, GC) in the
// audit log, as `cni COMMAND`, with the attachment as its arguments. The
// change is made: a failure here is only logged on stderr.
func record(l *audit.Log, command string, conf *NetConf, args *skel.CmdArgs, changes []string) {
	a := []string{"network=" + conf.Name}
	if args.ContainerID != "" {
		a = append(a, "container="+args.ContainerID, "ifname="+args.IfName, "netns="+args.Netns)
	}
	if err := l.Record(audit.Entry{Command: "cni " + command, Args: a, Changes: changes}); err != nil {
		fmt.Fprintf(os.Stderr, "l3iso: warning: the change was made, but %v\n", err)
	}
}

// cniErr makes err a CNI error with code (it keeps one that is already).
func cniErr(code uint, err error) error {
	var e *types.Error
	if errors.As(err, &e) {
		return e
	}
	return types.NewError(code, err.Error(), "")
}

// Add attaches the runtime's namespace (CNI ADD): addresses from the IPAM
// plugin (or the previous plugin's result), extra ones and multicast
// groups from the first matching pods: rule, then control.Adopt.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	name := Name(conf.Name, args.ContainerID, args.IfName)
	// The pods: rule first, before IPAM allocates anything: a bad policy
	// file or CNI_ARGS costs no allocation to give back.
	var rule policy.PodRule
	var matched bool
	if conf.Policy != "" {
		p, err := policy.Load(conf.Policy)
		if err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("the policy file of network %q: %v: fix it (or remove \"policy\" from the network configuration)", conf.Name, err), "")
		}
		pa := podArgs{}
		if err := types.LoadArgs(args.Args, &pa); err != nil {
			return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+err.Error(), "")
		}
		names := []string{string(pa.K8S_POD_NAME), args.ContainerID}
		if pa.K8S_POD_NAMESPACE != "" && pa.K8S_POD_NAME != "" {
			names = append([]string{string(pa.K8S_POD_NAMESPACE) + "/" + string(pa.K8S_POD_NAME)}, names...)
		}
		rule, matched = p.MatchPod(names...)
	}
	var ipamRes *current.Result
	switch {
	case conf.IPAM.Type != "":
		r, err := invoke.DelegateAdd(context.Background(), conf.IPAM.Type, args.StdinData, nil)
		if err != nil {
			return cniErr(types.ErrInternal, fmt.Errorf("IPAM plugin %q: %w", conf.IPAM.Type, err))
		}
		defer func() {
			if err != nil { // release what IPAM gave
				invoke.DelegateDel(context.Background(), conf.IPAM.Type, args.StdinData, nil)
			}
		}()
		if ipamRes, err = current.NewResultFromResult(r); err != nil {
			return cniErr(types.ErrDecodingFailure, fmt.Errorf("IPAM plugin %q: %w", conf.IPAM.Type, err))
		}
	case conf.PrevResult != nil:
		if ipamRes, err = current.NewResultFromResult(conf.PrevResult); err != nil {
			return cniErr(types.ErrDecodingFailure, fmt.Errorf("previous result: %w", err))
		}
	default:
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network %q gives the l3iso plugin no addresses: add \"ipam\" (e.g. {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.88.0.0/24\"}]]}) or chain it after a plugin that allocates them", conf.Name), "")
	}
	spec := policy.Container{Name: name}
	for _, ip := range ipamRes.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		ones, _ := ip.Address.Mask.Size()
		pa := policy.Address{Addr: a}
		if ones > 0 && ones < a.BitLen() {
			pa.Subnet = netip.PrefixFrom(a, ones).Masked()
		}
		spec.Addresses = append(spec.Addresses, pa)
	}
	if len(spec.Addresses) == 0 {
		return types.NewError(ErrAddress, fmt.Sprintf("the IPAM plugin (or previous result) of network %q gave no address", conf.Name), "")
	}
	if matched {
		spec.Addresses = append(spec.Addresses, rule.Addresses...)
		spec.Multicast = rule.Multicast
	}
	if err := (&policy.Policy{Containers: []policy.Container{spec}}).Validate(); err != nil {
		return types.NewError(ErrAddress, fmt.Sprintf("container %s of network %q: %v", name, conf.Name, err), "")
	}
	log, err := openAudit(conf)
	if err != nil {
		return err
	}
	defer log.Close()
	c, err := open(conf, true)
	if err != nil {
		return err
	}
	defer c.Close()
	k, ep, err := c.Adopt(spec, control.Attachment{Netns: args.Netns, IfName: args.IfName})
	if err != nil {
		code := uint(ErrInternal)
		if errors.Is(err, control.ErrExists) {
			code = types.ErrInvalidNetworkConfig
		}
		return cniErr(code, fmt.Errorf("attach container %s (network %q) to netns %s: %w", name, conf.Name, args.Netns, err))
	}
	var changes []string
	for _, ch := range policy.Diff(nil, &policy.Policy{Containers: []policy.Container{k.Spec}}) {
		changes = append(changes, fmt.Sprintf("%s [id %d, veth %s]", ch, k.ID, ep.HostIf))
	}
	record(log, "ADD", conf, args, changes)
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: ep.HostIf, Mac: ep.HostMAC.String()},
			{Name: args.IfName, Mac: ep.PeerMAC.String(), Sandbox: args.Netns},
		},
		DNS: ipamRes.DNS,
	}
	if conf.DNS.Nameservers != nil || conf.DNS.Domain != "" || conf.DNS.Search != nil {
		res.DNS = conf.DNS
	}
	sandbox := 1
	fams := map[bool]bool{}
	for _, a := range spec.Addresses {
		bits := a.Addr.BitLen()
		if a.Subnet.IsValid() {
			bits = a.Subnet.Bits()
		}
		gw := gateways[a.Addr.Is4()]
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: &sandbox,
			Address:   net.IPNet{IP: a.Addr.AsSlice(), Mask: net.CIDRMask(bits, a.Addr.BitLen())},
			Gateway:   gw.AsSlice(),
		})
		fams[a.Addr.Is4()] = true
	}
	for is4 := range fams {
		dst := net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		if is4 {
			dst = net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		}
		res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: gateways[is4].AsSlice()})
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// Del detaches the attachment (CNI DEL): its l3iso container (its veth;
// never the runtime's namespace), then what IPAM gave it. A missing
// namespace, container or installation is no error.
func Del(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	name := Name(conf.Name, args.ContainerID, args.IfName)
	return removing(conf, args, "DEL", func(c *control.Control) ([]string, error) {
		found, err := c.DelAdopted(name)
		if err != nil {
			return nil, fmt.Errorf("remove container %s (network %q): %w", name, conf.Name, err)
		}
		if !found {
			return nil, nil
		}
		return []string{fmt.Sprintf("- container %q", name)}, nil
	}, func() error { return invoke.DelegateDel(context.Background(), conf.IPAM.Type, args.StdinData, nil) })
}

// removing is DEL and GC (command): remove (what l3iso has; it returns
// what it removed, for the audit log), with the installation open —
// nothing to do when l3iso is not up (`down` removed it all) — then, with
// an IPAM plugin, what it has (ipam).
func removing(conf *NetConf, args *skel.CmdArgs, command string, remove func(*control.Control) ([]string, error), ipam func() error) error {
	log, err := openAudit(conf)
	if err != nil {
		return err
	}
	defer log.Close()
	c, err := control.Open(conf.BPFFS, true)
	switch {
	case errors.Is(err, loader.ErrNotUp):
	case err != nil:
		return cniErr(ErrInternal, fmt.Errorf("open the l3iso installation at %s: %w", conf.BPFFS, err))
	default:
		changes, err := remove(c)
		if len(changes) > 0 {
			record(log, command, conf, args, changes)
		}
		c.Close()
		if err != nil {
			return cniErr(ErrInternal, err)
		}
	}
	if conf.IPAM.Type != "" {
		if err := ipam(); err != nil {
			return cniErr(types.ErrInternal, fmt.Errorf("IPAM plugin %q: %w", conf.IPAM.Type, err))
		}
	}
	return nil
}

// Check verifies the attachment (CNI CHECK): the IPAM plugin's own check,
// then the container's addresses against the previous result, its veth
// pair and addresses in the namespace, the TCX program and the maps.
func Check(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs the result of ADD (prevResult): the runtime did not pass it", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cniErr(types.ErrDecodingFailure, fmt.Errorf("prevResult: %w", err))
	}
	if conf.IPAM.Type != "" {
		if err := invoke.DelegateCheck(context.Background(), conf.IPAM.Type, args.StdinData, nil); err != nil {
			return cniErr(ErrVerify, fmt.Errorf("IPAM plugin %q: %w", conf.IPAM.Type, err))
		}
	}
	name := Name(conf.Name, args.ContainerID, args.IfName)
	c, err := open(conf, false)
	if err != nil {
		return err
	}
	defer c.Close()
	k, err := c.CheckAdopted(name, control.Attachment{Netns: args.Netns, IfName: args.IfName})
	if err != nil {
		return types.NewError(ErrVerify, fmt.Sprintf("container %s (network %q): %v: the runtime should DEL and ADD it again", name, conf.Name, err), "")
	}
	owned := map[netip.Addr]bool{}
	for _, a := range k.Spec.Addresses {
		owned[a.Addr] = true
	}
	for _, ip := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && !owned[a.Unmap()] {
			return types.NewError(ErrVerify, fmt.Sprintf("container %s (network %q): the result of ADD has %s, which l3iso does not give it: the runtime should DEL and ADD it again", name, conf.Name, a.Unmap()), "")
		}
	}
	return nil
}

// Status says whether the plugin can take ADDs (CNI STATUS): l3iso must be
// up at the configured bpffs, with a delivery that takes adopted
// namespaces, and the IPAM plugin must be ready.
func Status(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	c, err := open(conf, false)
	if err != nil {
		return err
	}
	defer c.Close()
	if c.State().Config.Delivery == maps.DeliveryBridge {
		return types.NewError(ErrNotUp, fmt.Sprintf("l3iso at %s delivers by bridge, which cannot take a runtime's namespaces: run `l3iso up --delivery direct` (or routed)", conf.BPFFS), "")
	}
	if conf.IPAM.Type != "" {
		if err := invoke.DelegateStatus(context.Background(), conf.IPAM.Type, args.StdinData, nil); err != nil {
			return cniErr(types.ErrPluginNotAvailable, fmt.Errorf("IPAM plugin %q: %w", conf.IPAM.Type, err))
		}
	}
	return nil
}

// GC removes the network's containers that are not valid attachments (CNI
// GC; an empty list arrives as an absent cni.dev/valid-attachments), then
// lets the IPAM plugin collect its own.
func GC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[Name(conf.Name, a.ContainerID, a.IfName)] = true
	}
	return removing(conf, args, "GC", func(c *control.Control) ([]string, error) {
		gone, err := c.GCAdopted(Prefix(conf.Name), func(name string) bool { return valid[name] })
		var changes []string
		for _, name := range gone {
			changes = append(changes, fmt.Sprintf("- container %q", name))
		}
		if err != nil {
			return changes, fmt.Errorf("network %q: %w", conf.Name, err)
		}
		return changes, nil
	}, func() error { return invoke.DelegateGC(context.Background(), conf.IPAM.Type, args.StdinData, nil) })
}
