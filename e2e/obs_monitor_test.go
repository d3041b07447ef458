package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/maps"
)

// eventRing opens the installation's event ring buffer (<bpffs>/maps/
// l3_events), creating and pinning one where the programs have none (a
// build without the BPF side of events): `down` removes it with the maps.
func (e *env) eventRing() *ebpf.Map {
	e.t.Helper()
	pin := filepath.Join(e.bpffs, "maps", maps.EventsPin)
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		if m, err = ebpf.NewMap(&ebpf.MapSpec{Name: maps.EventsPin, Type: ebpf.RingBuf, MaxEntries: 1 << 16}); err == nil {
			err = m.Pin(pin)
		}
	}
	if err != nil {
		e.t.Fatalf("event ring buffer: %v", err)
	}
	e.t.Cleanup(func() { m.Close() })
	return m
}

// ringWriter returns a function that writes records into ring with
// bpf_ringbuf_output, as the programs do: from an XDP program run with
// BPF_PROG_TEST_RUN whose packet is the record.
func ringWriter(t *testing.T, ring *ebpf.Map) func(maps.Event) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{
			// bpf_xdp_load_bytes(ctx, 0, fp-size, size): the record to the stack
			// (helpers may not read the packet itself) ...
			asm.Mov.Imm(asm.R2, 0),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -int32(maps.EventSize)),
			asm.Mov.Imm(asm.R4, int32(maps.EventSize)),
			asm.FnXdpLoadBytes.Call(),
			asm.JNE.Imm(asm.R0, 0, "out"),
			// ... then bpf_ringbuf_output(ring, fp-size, size, 0).
			asm.LoadMapPtr(asm.R1, ring.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -int32(maps.EventSize)),
			asm.Mov.Imm(asm.R3, int32(maps.EventSize)),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnRingbufOutput.Call(),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the ring buffer writer: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return func(ev maps.Event) {
		t.Helper()
		b, err := maps.EncodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := prog.Run(&ebpf.RunOptions{Data: b}); err != nil {
			t.Fatalf("write an event: %v", err)
		}
	}
}

// bootNow is CLOCK_BOOTTIME, the clock of the records.
func bootNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// nextEvent reads the next -o json line of a monitor.
func nextEvent(t *testing.T, p *bgProc) map[string]any {
	t.Helper()
	l := p.next(5 * time.Second)
	var m map[string]any
	if err := json.Unmarshal([]byte(l), &m); err != nil {
		t.Fatalf("monitor -o json printed %q: %v", l, err)
	}
	return m
}

// TestMonitorRecords: monitor decodes records of the ring buffer as the
// programs write them (bpf_ringbuf_output), names containers (the host; a
// container deleted since by its id; a bind's owner), turns
// CLOCK_BOOTTIME into wall time, skips what was written before it started
// and says so, filters by container and type, and refuses to be a second
// reader, naming the first.
func TestMonitorRecords(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.9:5432/tcp")
	e.mustRun("container", "add", "gone", "--addr", "10.77.0.20")
	ids := map[string]uint32{}
	for _, c := range e.listJSON() {
		ids[c.Name] = c.ID
	}
	e.mustRun("container", "del", "gone")
	write := ringWriter(t, e.eventRing())

	write(maps.Event{Boot: bootNow(), ID: ids["web"], Type: "bind", Reason: "bind_denied_foreign", Errno: syscall.EADDRNOTAVAIL, Family: 4, Proto: 6}) // the backlog
	mon := e.start("reading the events", binary, "--bpffs", e.bpffs, "monitor", "-o", "json")
	// A second reader would take the first one's events: it refuses, at
	// once, naming the first.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, "nsenter", "--net="+e.netns, binary, "--bpffs", e.bpffs, "monitor")
	second.Env = append(os.Environ(), e.environ()...)
	out, err := second.CombinedOutput()
	msg := strings.TrimSpace(string(out))
	switch {
	case ctx.Err() != nil:
		t.Fatalf("a second monitor ran beside the first (killed after 5 s): %s", msg)
	case err == nil:
		t.Fatalf("a second monitor succeeded: %s", msg)
	}
	for _, f := range []string{"another l3iso monitor", fmt.Sprintf("pid %d", mon.cmd.Process.Pid), "monitor -o json", "one read position"} {
		if !strings.Contains(msg, f) {
			t.Errorf("second monitor: %q does not say %q", msg, f)
		}
	}
	t.Logf("second monitor: %s", msg)

	recs := []maps.Event{
		{ID: ids["web"], PID: 4123, Comm: "nginx", Type: "bind", Reason: "bind_denied_port", Errno: syscall.EACCES, Family: 4, Proto: 6,
			Addr: netip.MustParseAddr("10.77.0.9"), Port: 5432, Owner: ids["db"]},
		{ID: 0, PID: 77, Comm: "sh", Type: "join", Reason: "join_denied", Errno: syscall.EPERM, Family: 6, Proto: 17,
			Addr: netip.MustParseAddr("ff15::9")},
		{ID: ids["gone"], Type: "tc", Reason: "tc_dropped_spoof", Family: 4, Proto: 17,
			Addr: netip.MustParseAddr("10.77.0.99"), Port: 5000, Addr2: netip.MustParseAddr("1.1.1.1"), Port2: 53},
		{ID: ids["db"], Type: "ingress", Reason: "ingress_dropped_foreign", Family: 6, Proto: 6,
			Addr: netip.MustParseAddr("fd77::5"), Port: 40000, Addr2: netip.MustParseAddr("fd77::1"), Port2: 80},
	}
	for i := range recs {
		recs[i].Boot = bootNow()
		write(recs[i])
	}
	for i, r := range recs {
		got := nextEvent(t, mon)
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got["time"]))
		if err != nil || time.Since(at).Abs() > 5*time.Second {
			t.Errorf("event %d: time %v (%v), want about now", i+1, got["time"], err)
		}
		want := map[string]any{
			"kind": "event", "container_id": float64(r.ID), "pid": float64(r.PID), "type": r.Type, "reason": r.Reason,
			"errno": float64(r.Errno), "family": float64(r.Family), "port": float64(r.Port), "addr": r.Addr.String(),
		}
		switch i {
		case 0:
			want["container"], want["comm"], want["verdict"], want["error"], want["proto"], want["owner"] = "web", "nginx", "denied", "EACCES", "tcp", "db"
		case 1:
			want["container"], want["comm"], want["verdict"], want["error"], want["proto"] = "(host)", "sh", "refused", "EPERM", "udp"
		case 2:
			want["container"], want["verdict"], want["proto"], want["dst"], want["dst_port"] = fmt.Sprintf("id %d", ids["gone"]), "dropped", "udp", "1.1.1.1", float64(53)
		case 3:
			want["container"], want["verdict"], want["proto"], want["dst"], want["dst_port"] = "db", "dropped", "tcp", "fd77::1", float64(80)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("event %d: %s = %v, want %v (%v)", i+1, k, got[k], v, got)
			}
		}
	}
	if !mon.waitStderr("skipped 1 events written before monitor started", 2*time.Second) {
		t.Errorf("monitor did not say it skipped the backlog: %s", mon.stderr())
	}
	mon.stop()

	// One container, one type; text lines.
	mon = e.start("reading the events", binary, "--bpffs", e.bpffs, "monitor", "--container", "web", "--type", "bind,spoof")
	for _, r := range []maps.Event{
		{ID: ids["db"], Type: "bind", Reason: "bind_denied_foreign", Errno: syscall.EADDRNOTAVAIL, Family: 4, Proto: 6, Addr: netip.MustParseAddr("10.77.0.1"), Port: 1},
		{ID: ids["web"], Type: "ingress", Reason: "ingress_dropped_foreign", Family: 4, Proto: 6, Addr: netip.MustParseAddr("10.77.0.5"), Port: 2, Addr2: netip.MustParseAddr("10.77.0.1"), Port2: 3},
		{ID: ids["web"], PID: 9, Comm: "curl", Type: "sendmsg", Reason: "send_denied_spoof", Errno: syscall.EPERM, Family: 6, Proto: 17,
			Addr: netip.MustParseAddr("fd77::99"), Port: 4, Addr2: netip.MustParseAddr("fd00::1"), Port2: 53},
	} {
		r.Boot = bootNow()
		write(r)
	}
	line := mon.next(5 * time.Second)
	if want := " web pid 9 (curl) sendmsg [fd77::99]:4 -> [fd00::1]:53/udp denied: source fd77::99 is not its own (EPERM)"; !strings.HasSuffix(line, want) {
		t.Errorf("monitor --container web --type bind,spoof printed\n %q\nwant ...%q", line, want)
	}
	select {
	case l := <-mon.lines:
		t.Errorf("monitor printed a line its filter excludes: %q", l)
	case <-time.After(300 * time.Millisecond):
	}

	mon.stop()

	if r := e.run("monitor", "--type", "bnid"); r.code == 0 || !strings.Contains(r.stderr, `"bnid"`) {
		t.Errorf("monitor --type bnid: exit %d, %q", r.code, r.stderr)
	}
	if r := e.run("monitor", "--container", "nope"); r.code == 0 || !strings.Contains(r.stderr, `"nope"`) {
		t.Errorf("monitor --container nope: exit %d, %q", r.code, r.stderr)
	}
}

// addCounter adds n to counter name of container id on CPU 0, as the
// programs count (for a test of what reads the counters).
func (e *env) addCounter(id uint32, name string, n uint64) {
	e.t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.bpffs, "maps", "l3_counters"), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer m.Close()
	idx := -1
	for i, c := range maps.CounterNames {
		if c == name {
			idx = i
		}
	}
	const width = 40 // L3_C_MAX
	if idx < 0 || m.ValueSize() != 8*width {
		e.t.Fatalf("counter %q: index %d, value size %d (want %d)", name, idx, m.ValueSize(), 8*width)
	}
	var vals [][width]uint64
	if err := m.Lookup(id, &vals); err != nil {
		e.t.Fatal(err)
	}
	vals[0][idx] += n
	if err := m.Update(id, vals, ebpf.UpdateExist); err != nil {
		e.t.Fatal(err)
	}
}

// TestMonitorLost: when a container's events_lost counter grows, monitor
// says how many were lost, for that container, within a second or so.
func TestMonitorLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.2")
	var web uint32
	for _, c := range e.listJSON() {
		if c.Name == "web" {
			web = c.ID
		}
	}
	e.eventRing()
	mon := e.start("reading the events", binary, "--bpffs", e.bpffs, "monitor", "-o", "json")
	before := e.counters()["web"]["events_lost"]
	e.addCounter(web, "events_lost", 1204)
	got := nextEvent(t, mon)
	if got["kind"] != "lost" || got["container"] != "web" || got["lost"] != float64(1204) || got["total"] != float64(before+1204) {
		t.Errorf("loss report: %v, want web lost 1204", got)
	}
	mon.stop()
	mon = e.start("reading the events", binary, "--bpffs", e.bpffs, "monitor")
	e.addCounter(web, "events_lost", 5)
	if l := mon.next(5 * time.Second); !strings.HasSuffix(l, " web ... 5 events lost (rate limit or full ring buffer; "+fmt.Sprint(before+1209)+" in all)") {
		t.Errorf("loss report: %q", l)
	}
}
