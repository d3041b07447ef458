package control

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
	"github.com/l3iso/l3iso/pkg/policy"
	"github.com/l3iso/l3iso/pkg/veth"
)

// Adopted containers (policy.Container.Adopted) are netns containers whose
// network namespace a container runtime made and handed to the CNI plugin
// (cmd/l3iso-cni). They have everything an l3iso netns container has — a
// cgroup, ownership in the maps, l3_ports / l3_delivs entries, the TCX
// program on the host-side veth — but the namespace is the runtime's:
//
//   - Adopt makes only the veth pair (veth.Attach), after the maps own the
//     addresses (rule 9), as `container add --mode netns` does;
//   - deleting one (CNI DEL, GC, `down`, `container del`) deletes the
//     host-side veth (its peer goes with it), never the namespace, and
//     stops only processes in l3iso's own cgroup of it (which the runtime's
//     are not in: it is empty unless someone ran `l3iso exec` there);
//   - a repair never makes the namespace or the veth anew: a veth that is
//     gone means the runtime released the namespace (the kernel removes
//     the pair with it) without a CNI DEL, and `l3iso up` reaps the
//     container (ReapAdopted);
//   - `apply` carries them over unchanged: the file's containers are
//     checked against them (name, addresses) but never remove or change
//     them;
//   - their processes are identified by the veth, not by a cgroup: the
//     runtime's processes live in the runtime's cgroups (on Kubernetes at
//     a depth that depends on the pod's QoS class), and the TC programs on
//     the veth deliver to them directly and drop what they send from an
//     address they do not own.
//
// Direct and routed delivery only: bridge delivery would move the
// container's routes inside a namespace l3iso does not keep a way into.

// Attachment is where an adopted container's veth goes: the runtime's
// namespace and the name its side of the veth gets there.
type Attachment struct {
	Netns  string // CNI_NETNS
	IfName string // CNI_IFNAME
}

// ErrExists says an adopted container is already attached.
var ErrExists = errors.New("already exists")

// Adopt adds netns container spec for the runtime's namespace at, as
// AddWith does (the same checks against the policy and the host, the same
// order: cgroup, maps, then the veth), and returns it with its veth.
func (c *Control) Adopt(spec policy.Container, at Attachment) (maps.Container, *veth.Endpoint, error) {
	spec.Mode, spec.Adopted = policy.ModeNetns, true
	if c.st.Config.Delivery == maps.DeliveryBridge {
		return maps.Container{}, nil, fmt.Errorf("l3iso's delivery is bridge, which cannot take containers of a runtime's namespace: switch it with `l3iso up --delivery direct` (or routed)")
	}
	if k, err := c.Find(spec.Name); err == nil {
		if !k.Spec.Adopted {
			return maps.Container{}, nil, fmt.Errorf("container %q exists and was not made by the CNI plugin: delete it (`l3iso container del %s`) or remove it from the policy", spec.Name, spec.Name)
		}
		return maps.Container{}, nil, fmt.Errorf("container %q: %w: the attachment is there; the runtime must DEL it before it adds it again", spec.Name, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return maps.Container{}, nil, err
	}
	return c.add(spec, AddOptions{}, &at)
}

// attach is plumb for an adopted container: the veth pair into the
// runtime's namespace at, wired for the delivery.
func (c *Control) attach(k maps.Container, at *Attachment) (*veth.Endpoint, error) {
	if at == nil {
		return nil, fmt.Errorf("container %q: its network namespace is a container runtime's: l3iso cannot make it anew; the runtime adds it again (CNI ADD)", k.Spec.Name)
	}
	if err := c.ensureDelivery(); err != nil {
		return nil, err
	}
	ep, err := veth.Attach(veth.AttachSpec{
		Container: c.key(k.Spec.Name), Netns: at.Netns, IfName: at.IfName,
		Addrs: vethAddrs(k), MTU: c.vethMTU(), SubnetsViaGateway: true,
	})
	if err != nil {
		return nil, err
	}
	if err := c.wire(k, ep, true); err != nil {
		c.unplumb(k, true)
		return nil, err
	}
	return ep, nil
}

// repairAdopted is repairNetns for adopted container k: its veth wired
// for the current delivery. A veth that is gone is left to ReapAdopted
// (`up`), and reported by Check.
func (c *Control) repairAdopted(k maps.Container) error {
	ep, err := veth.LookupAdopted(c.key(k.Spec.Name), ips(k))
	if errors.Is(err, veth.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if ep.PeerMAC == nil {
		// Its host neighbour entries are gone: the ones l3_delivs has.
		delivs, err := c.st.Maps.Deliveries()
		if err != nil {
			return err
		}
		for _, a := range ips(k) {
			if p, ok := delivs[a]; ok && p.ID == k.ID {
				ep.PeerMAC = p.PeerMAC
			}
		}
		if ep.PeerMAC == nil {
			return fmt.Errorf("container %q: the MAC address of its side of veth %s is unknown: delete it (CNI DEL, or `l3iso container del %s`) and let the runtime add it again", k.Spec.Name, ep.HostIf, k.Spec.Name)
		}
	}
	return c.wire(k, ep, false)
}

// checkAdopted is Check for adopted container k: its veth is there (else
// its namespace is gone) and runs the delivery's TC program.
func (c *Control) checkAdopted(k maps.Container) []loader.Problem {
	if _, err := veth.HostLink(c.key(k.Spec.Name)); err != nil {
		return []loader.Problem{{Object: "container " + k.Spec.Name, Issue: "made by the CNI plugin; its veth " + c.HostIfName(k.Spec.Name) + " is gone: the runtime released its network namespace without a CNI DEL (`l3iso up` removes the container)"}}
	}
	return c.st.CheckVethTC(c.HostIfName(k.Spec.Name))
}

// adoptedGrace is how long the processes in an adopted container's own
// cgroup (only those `l3iso exec` put there: the runtime's are elsewhere)
// get between SIGTERM and SIGKILL when it is removed.
const adoptedGrace = time.Second

// DelAdopted removes adopted container name (CNI DEL): its veth (the
// runtime's namespace stays), ownership and cgroup, and says whether there
// was one. A container that does not exist is no error (DEL is
// idempotent); one that was not adopted is.
func (c *Control) DelAdopted(name string) (bool, error) {
	k, err := c.Find(name)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !k.Spec.Adopted {
		return false, fmt.Errorf("container %q was not made by the CNI plugin: not deleting it (`l3iso container del %s` does)", name, name)
	}
	_, err = c.Del(name, adoptedGrace)
	return true, err
}

// CheckAdopted verifies adopted container name against the runtime's
// namespace at (CNI CHECK): the container exists and is adopted, its veth
// pair is whole with every address on the runtime's side, the TCX program
// runs on the host side, and the maps deliver each address to that veth.
func (c *Control) CheckAdopted(name string, at Attachment) (maps.Container, error) {
	k, err := c.Find(name)
	if err != nil {
		return k, err
	}
	if !k.Spec.Adopted {
		return k, fmt.Errorf("container %q was not made by the CNI plugin", name)
	}
	key := c.key(name)
	if err := veth.CheckAttached(key, at.Netns, at.IfName, vethAddrs(k)); err != nil {
		return k, err
	}
	if ps := c.st.CheckVethTC(c.HostIfName(name)); len(ps) > 0 {
		return k, fmt.Errorf("%s", ps[0])
	}
	l, err := veth.HostLink(key)
	if err != nil {
		return k, err
	}
	ports, err := c.st.Maps.PortIDs()
	if err != nil {
		return k, err
	}
	if ports[l.Attrs().Index] != k.ID {
		return k, fmt.Errorf("container %q: map l3_ports does not name its veth %s (ifindex %d)", name, l.Attrs().Name, l.Attrs().Index)
	}
	delivs, err := c.st.Maps.Deliveries()
	if err != nil {
		return k, err
	}
	for _, a := range ips(k) {
		if p, ok := delivs[a]; !ok || p.ID != k.ID || p.IfIndex != l.Attrs().Index {
			return k, fmt.Errorf("container %q: map l3_delivs does not deliver %s to its veth %s", name, a, l.Attrs().Name)
		}
		if id, _, err := c.gen.Owner(a); err != nil || id != k.ID {
			return k, fmt.Errorf("container %q: map l3_owners does not give it %s (owner id %d): %v", name, a, id, err)
		}
	}
	return k, nil
}

// Adopted lists the adopted containers whose names start with prefix
// ("" for all).
func (c *Control) Adopted(prefix string) ([]maps.Container, error) {
	cs, err := c.all()
	if err != nil {
		return nil, err
	}
	var out []maps.Container
	for _, k := range cs {
		if k.Spec.Adopted && strings.HasPrefix(k.Spec.Name, prefix) {
			out = append(out, k)
		}
	}
	return out, nil
}

// GCAdopted removes the adopted containers whose names start with prefix
// and that keep does not accept (CNI GC: those not in the runtime's list
// of valid attachments). It returns their names.
func (c *Control) GCAdopted(prefix string, keep func(name string) bool) ([]string, error) {
	ks, err := c.Adopted(prefix)
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, k := range ks {
		if keep(k.Spec.Name) {
			continue
		}
		if _, err := c.Del(k.Spec.Name, adoptedGrace); err != nil {
			return gone, err
		}
		gone = append(gone, k.Spec.Name)
	}
	return gone, nil
}

// ReapAdopted removes the adopted containers whose veth is gone: the
// runtime released their namespace (the kernel removes the pair with it)
// and never sent CNI DEL — Debian's podman and containerd send no GC
// either. `up` runs it. It returns their names.
func (c *Control) ReapAdopted() ([]string, error) {
	return c.GCAdopted("", func(name string) bool {
		_, err := veth.HostLink(c.key(name))
		return !errors.Is(err, veth.ErrNotFound)
	})
}

// withAdopted is policy p (validated) with the installed adopted
// containers added, for Apply: they stay as they are. A container of p
// that has an adopted one's name is refused.
func (c *Control) withAdopted(p *policy.Policy) (*policy.Policy, error) {
	var adopted []policy.Container
	err := c.gen.Scan(nil, func(m maps.Meta) {
		if m.Adopted() {
			adopted = append(adopted, m.Container().Spec)
		}
	})
	if err != nil || len(adopted) == 0 {
		return p, err
	}
	for _, a := range adopted {
		if _, ok := slices.BinarySearchFunc(p.Containers, a.Name, byPolicyName); ok { // p is sorted
			return nil, fmt.Errorf("container %q of the policy has the name of a container the CNI plugin made for a runtime's network namespace: give yours another name", a.Name)
		}
	}
	// Without p's pods: rules, checked against p's containers already: a
	// pod that got a rule's extra address owns it now, rightly.
	out := &policy.Policy{Containers: append(slices.Clip(p.Containers), adopted...)}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("%w (containers made by the CNI plugin stay as they are: a policy cannot take their addresses)", err)
	}
	return out, nil
}
