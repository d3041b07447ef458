package audit

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLog: records go to the log, one JSON line each, and to a syslog
// socket; Read returns an installation's records and names bad lines.
func TestLog(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "log")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// No installation at these paths: nothing to count the change in.
	a, b := filepath.Join(dir, "no-bpffs-a"), filepath.Join(dir, "no-bpffs-b")
	for _, rec := range []struct {
		bpffs string
		e     Entry
	}{
		{a, Entry{Command: "container add", Args: []string{"container", "add", "web"}, Changes: []string{`+ container "web" (shared): 10.77.0.1`}}},
		{b, Entry{Command: "up"}},
		{a, Entry{Command: "apply", Changes: []string{`- container "web"`}, Apply: true}},
	} {
		l, err := Open(Options{StateDir: dir, Syslog: sock, BPFFS: rec.bpffs})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Record(rec.e); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	f, _ := os.OpenFile(Path(dir), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"time":"2026-01-01T00:00:00Z","command":"up","bpf` + "\n") // cut short by a crash
	f.Close()

	recs, bad, err := Read(dir, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Command != "container add" || recs[1].Command != "apply" {
		t.Fatalf("records of %s: %+v", a, recs)
	}
	r := recs[0]
	if r.UID != os.Getuid() || r.PID != os.Getpid() || time.Since(r.Time) > time.Minute || r.BPFFS != a ||
		strings.Join(r.Args, " ") != "container add web" || len(r.Changes) != 1 || r.Change != 0 {
		t.Errorf("record: %+v", r)
	}
	if len(bad) != 1 || bad[0].Line != 4 {
		t.Errorf("bad lines: %+v", bad)
	}
	if all, _, _ := Read(dir, ""); len(all) != 3 {
		t.Errorf("every installation's records: %d, want 3", len(all))
	}
	if st, err := os.Stat(Path(dir)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode: %v %v", st.Mode(), err)
	}

	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for i := 0; i < 3; i++ {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("syslog message %d: %v", i+1, err)
		}
		msg := string(buf[:n])
		if !strings.HasPrefix(msg, "<29>") || !strings.Contains(msg, " l3iso[") {
			t.Errorf("syslog message %q: want facility daemon, severity notice, tag l3iso", msg)
		}
		var got Record
		if err := json.Unmarshal([]byte(msg[strings.Index(msg, "]: ")+3:]), &got); err != nil {
			t.Errorf("syslog message %q: %v", msg, err)
		}
	}
}

// TestOpenUnwritable: a state directory l3iso cannot write is an error
// before any change, and it says what to do.
func TestOpenUnwritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	_, err := Open(Options{StateDir: filepath.Join(file, "state"), Syslog: "off"})
	if err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Fatalf("Open in a file: %v", err)
	}
}
