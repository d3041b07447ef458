package e2e

// The `-o json` shapes the tests read, as a user's script sees them: the
// fields and names of cmd/l3iso's container.go and status.go (the stable
// output of `container list`, `status` and friends), decoded here the way
// any consumer decodes them. Types of importable packages are the
// product's own.

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/loader"
	"github.com/l3iso/l3iso/pkg/maps"
)

// containerJSON is one container of `container list -o json` (and of
// status).
type containerJSON struct {
	Name      string   `json:"name"`
	ID        uint32   `json:"id"`
	Mode      string   `json:"mode"`
	Loopback  string   `json:"loopback"`
	Addresses []string `json:"addresses"`
	Multicast []string `json:"multicast"`
	Cgroup    string   `json:"cgroup"`
	CgroupID  uint64   `json:"cgroup_id"`
	Loopback4 string   `json:"loopback4,omitempty"`
	Loopback6 string   `json:"loopback6,omitempty"`
	Netns     string   `json:"netns,omitempty"`
	HostVeth  string   `json:"host_veth,omitempty"`
	Adopted   bool     `json:"cni,omitempty"`
}

// statusJSON is `status -o json`.
type statusJSON struct {
	BPFFS        string              `json:"bpffs"`
	CgroupRoot   string              `json:"cgroup_root"`
	Uplink       string              `json:"uplink"`
	ExtraUplinks []string            `json:"extra_uplinks"`
	Delivery     string              `json:"delivery"`
	Links        []loader.LinkInfo   `json:"links"`
	Interfaces   []interfaceJSON     `json:"interfaces"`
	Containers   []containerStatJSON `json:"containers"`
	Host         maps.Counters       `json:"host_counters"`
	Listeners    []listenerJSON      `json:"listeners"`
	Stale        []control.Stale     `json:"stale_sockets"`
	Problems     []loader.Problem    `json:"problems"`
	Repair       string              `json:"repair,omitempty"`
}

// listenerJSON is one entry of status's broadcast/multicast registry.
type listenerJSON struct {
	Container string `json:"container"`
	Group     string `json:"group"`
	Port      uint16 `json:"port"`
	Addr      string `json:"addr"`
	Sockets   uint32 `json:"sockets"`
}

// interfaceJSON is what runs on the TCX hooks of one interface.
type interfaceJSON struct {
	Name     string              `json:"name"`
	Ifindex  int                 `json:"ifindex"`
	Role     string              `json:"role"`
	Programs []loader.TCXProgram `json:"tcx"`
}

// containerStatJSON is one container of status, with its counters.
type containerStatJSON struct {
	containerJSON
	Counters maps.Counters `json:"counters"`
}

// decodeStrict decodes out, one JSON value, into v, refusing fields that v
// lacks: the shapes here mirror the whole output, so a field l3iso adds or
// renames fails the test until it is mirrored (and checked) here too.
func decodeStrict(out string, v any) error {
	d := json.NewDecoder(bytes.NewReader([]byte(out)))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}
