package bench

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/l3iso/l3iso/bench/engine"
	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/policy"
)

// The benchmarks' children are bench/engine's workers (worker.go): the
// test binary re-executed, born in the cgroup under test inside the
// network namespace under test. The socket workloads are the engine's
// client loops (bind, connect, sendto); this package adds one role of its
// own, "add": one JSON line of addSpecs in, one addResult out —
// control.Add in process, timed, in the installation's netns.
const roleAdd = "add"

// addResult is what the add child prints.
type addResult struct {
	OpenNs int64   `json:"open_ns"` // control.Open (lock, read maps, reconcile)
	AddNs  []int64 `json:"add_ns"`  // each control.Add
}

// addSpec is one container the add child creates.
type addSpec struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Loopback string `json:"loopback,omitempty"` // "" = the default (isolated)
}

// addRequest is the add child's command.
type addRequest struct {
	BPFFS string    `json:"bpffs"` // the installation's --bpffs
	Add   []addSpec `json:"add"`
}

// workerRoles are the roles this test binary adds to the engine's.
var workerRoles = map[string]engine.Role{roleAdd: func(cmd string) (any, error) {
	var req addRequest
	if err := json.Unmarshal([]byte(cmd), &req); err != nil {
		return nil, fmt.Errorf("add: bad command %q: %w", cmd, err)
	}
	return childAdd(req)
}}

// childAdd opens the installation at req.BPFFS and adds the containers
// of req.Add one by one with control.Add, timing each.
func childAdd(req addRequest) (addResult, error) {
	var res addResult
	start := time.Now()
	c, err := control.Open(req.BPFFS, true)
	if err != nil {
		return res, err
	}
	defer c.Close()
	res.OpenNs = time.Since(start).Nanoseconds()
	for _, s := range req.Add {
		a, err := policy.ParseAddress(s.Addr)
		if err != nil {
			return res, err
		}
		spec := policy.Container{Name: s.Name, Addresses: []policy.Address{a}, Loopback: policy.Loopback(s.Loopback)}
		start := time.Now()
		if _, err := c.Add(spec); err != nil {
			return res, fmt.Errorf("add %s: %w", s.Name, err)
		}
		res.AddNs = append(res.AddNs, time.Since(start).Nanoseconds())
	}
	return res, nil
}
