package e2e

import (
	"bytes"
	bin "encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// rawEvent mirrors struct l3_event (bpf/l3iso.h) for this test, which
// reads the ring buffer itself (pkg/maps' generated type is unexported).
type rawEvent struct {
	Ts           uint64
	ID, Pid      uint32
	Comm         [16]byte
	Type, Reason uint16
	Err          int32
	Family       uint8
	Proto        uint8
	_            uint16
	Port, Port2  uint16
	Addr, Addr2  [16]byte
	Owner        uint32
	_            uint32
}

// TestEventsRecorded: a denial writes one record to l3_events with the
// container, the task, what it asked for and who owns it; a flood of
// denials from one container is rate-limited and its loss counted.
func TestEventsRecorded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(basePolicy)
	ids := map[string]uint32{}
	for _, c := range e.listJSON() {
		ids[c.Name] = c.ID
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.bpffs, "maps", "l3_events"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	web := e.agent("web")
	id := web.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer web.Close(id)
	if err := web.Bind(id, ap("10.77.0.2:80")); !errors.Is(err, unix.EADDRNOTAVAIL) {
		t.Fatalf("web bind db's address: %v, want EADDRNOTAVAIL", err)
	}
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("no event for the denied bind: %v", err)
	}
	var ev rawEvent
	if err := bin.Read(bytes.NewReader(rec.RawSample), bin.NativeEndian, &ev); err != nil {
		t.Fatal(err)
	}
	want4 := [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 77, 14: 0, 15: 2}
	if ev.ID != ids["web"] || ev.Pid != uint32(web.Pid()) || ev.Type != 1 || ev.Err != int32(unix.EADDRNOTAVAIL) ||
		ev.Family != 4 || ev.Proto != unix.IPPROTO_TCP || ev.Addr != want4 || ev.Port != 80 || ev.Owner != ids["db"] {
		t.Errorf("event %+v: want container %d, pid %d, bind of 10.77.0.2:80/tcp, EADDRNOTAVAIL, owner %d", ev, ids["web"], web.Pid(), ids["db"])
	}
	if comm := string(bytes.TrimRight(ev.Comm[:], "\x00")); comm == "" {
		t.Error("event without the task's comm")
	}

	// A flood: 500 denied binds. The rate limit lets a burst through and
	// counts the rest as lost.
	lost := e.counters()["web"]["events_lost"]
	for i := 0; i < 500; i++ {
		web.Bind(id, ap("10.77.0.2:81"))
	}
	n := 0
	for {
		rd.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := rd.Read(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	gone := e.counters()["web"]["events_lost"] - lost
	if n >= 500 || gone == 0 || uint64(n)+gone != 500 {
		t.Errorf("a flood of 500 denials: %d events, %d lost; want fewer events, the rest counted lost", n, gone)
	}
	t.Logf("a flood of 500 denials: %d events, %d counted lost", n, gone)
}
