// Package audit keeps l3iso's audit trail: every command that changes an
// installation (up, down, apply, container add and del, the CNI plugin's
// ADD and DEL) appends one JSON line to the audit log in the state
// directory, sends the same record to syslog (journald listens there) when
// a syslog socket exists, and counts the change in the installation's
// pinned change record (pkg/maps, l3_changes), which `l3iso metrics`
// exports as the apply generation and the time of the last change.
//
// Usage: Open the log before changing anything (so a command that cannot
// audit changes nothing), Record after the change succeeded (a command that
// fails and changes nothing writes nothing), Close. Record while still
// holding the installation's exclusive lock, so that the change count and
// the log's order are those of the changes.
package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/l3iso/l3iso/pkg/maps"
)

// DefaultStateDir is where the audit log lives unless $L3ISO_STATE_DIR or
// --state-dir says otherwise.
const DefaultStateDir = "/var/lib/l3iso"

// LogName is the audit log's file name in the state directory.
const LogName = "audit.log"

// DefaultSyslog is the syslog socket records go to when it exists.
const DefaultSyslog = "/dev/log"

// StateDirFromEnv is the state directory the environment asks for:
// $L3ISO_STATE_DIR, else DefaultStateDir.
func StateDirFromEnv() string {
	if d := os.Getenv("L3ISO_STATE_DIR"); d != "" {
		return d
	}
	return DefaultStateDir
}

// SyslogFromEnv is the syslog socket the environment asks for:
// $L3ISO_SYSLOG (a socket path, or "off"), else DefaultSyslog.
func SyslogFromEnv() string {
	if s := os.Getenv("L3ISO_SYSLOG"); s != "" {
		return s
	}
	return DefaultSyslog
}

// Options say where an installation's changes are recorded.
type Options struct {
	// StateDir holds the audit log ("" = StateDirFromEnv()). One log
	// serves every installation of the machine; each record names its
	// --bpffs.
	StateDir string
	// Syslog is the syslog socket ("" = SyslogFromEnv(); "off" = none).
	// A missing socket is no error: there is no syslog to tell.
	Syslog string
	// BPFFS is the installation's --bpffs directory.
	BPFFS string
}

// Record is one line of the audit log.
type Record struct {
	Time time.Time `json:"time"` // UTC
	UID  int       `json:"uid"`  // the real uid of the process
	// LoginUID is the kernel's audit login uid (/proc/self/loginuid): the
	// user who logged in, through sudo and su; absent when unset.
	LoginUID *uint32 `json:"login_uid,omitempty"`
	PID      int     `json:"pid"`
	// Command is what changed the installation: "up", "down", "apply",
	// "container add", "container del", "cni ADD", "cni DEL".
	Command string   `json:"command"`
	Args    []string `json:"args"`  // its arguments (the command line after the command)
	BPFFS   string   `json:"bpffs"` // the installation
	// Change numbers the changes of the installation since `up` made it
	// (the pinned change record); 0 after `down` removed it.
	Change uint64 `json:"change"`
	// Changes says what changed, one line each.
	Changes []string `json:"changes"`
}

// Entry is what a command says about the change it made.
type Entry struct {
	Command string
	Args    []string
	Changes []string
	// Apply marks an apply that switched the policy: it also counts as a
	// new apply generation.
	Apply bool
}

// Log is an audit log open for appending.
type Log struct {
	o    Options
	path string
	f    *os.File
}

// Path is the audit log of the state directory dir ("" = StateDirFromEnv()).
func Path(dir string) string {
	if dir == "" {
		dir = StateDirFromEnv()
	}
	return filepath.Join(dir, LogName)
}

// Open opens (creating it and the state directory) the audit log for
// appending. Call it before changing anything: an error means the change
// could not be audited, and the command should change nothing.
func Open(o Options) (*Log, error) {
	if o.StateDir == "" {
		o.StateDir = StateDirFromEnv()
	}
	if o.Syslog == "" {
		o.Syslog = SyslogFromEnv()
	}
	l := &Log{o: o, path: Path(o.StateDir)}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("audit log: create state directory %s: %w (pass --state-dir or set L3ISO_STATE_DIR to a writable directory)", o.StateDir, err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: open %s: %w (pass --state-dir or set L3ISO_STATE_DIR to a writable directory)", l.path, err)
	}
	l.f = f
	return l, nil
}

// Path is the file the log appends to.
func (l *Log) Path() string { return l.path }

// Close closes the log.
func (l *Log) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Record records a change that was made: it counts it in the
// installation's change record, appends one JSON line to the log, and
// sends it to syslog. The change has happened whatever this returns: an
// error is for a warning, not for a failed command.
func (l *Log) Record(e Entry) error {
	r := Record{
		Time: time.Now().UTC(), UID: os.Getuid(), LoginUID: loginUID(), PID: os.Getpid(),
		Command: e.Command, Args: e.Args, BPFFS: l.o.BPFFS, Changes: e.Changes,
	}
	if r.Args == nil {
		r.Args = []string{}
	}
	if r.Changes == nil {
		r.Changes = []string{}
	}
	var errs []error
	ch, err := maps.RecordChange(filepath.Join(l.o.BPFFS, "maps"), e.Apply, r.Time)
	if err != nil {
		errs = append(errs, fmt.Errorf("count the change: %w", err))
	}
	r.Change = ch.Count
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit record: %w", err)
	}
	// One write of the whole line: appends of concurrent writers (other
	// installations' commands) never interleave within a line.
	if _, err := l.f.Write(append(line, '\n')); err != nil {
		errs = append(errs, fmt.Errorf("append to %s: %w", l.path, err))
	}
	if err := sendSyslog(l.o.Syslog, line); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("audit: %w", errors.Join(errs...))
	}
	return nil
}

// loginUID is the kernel's audit login uid, nil where it is unset.
func loginUID() *uint32 {
	b, err := os.ReadFile("/proc/self/loginuid")
	if err != nil {
		return nil
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil || v == 1<<32-1 {
		return nil
	}
	u := uint32(v)
	return &u
}

// syslogTimeout bounds a send to syslog: a stuck syslog daemon must not
// hang a command that already made its change.
const syslogTimeout = 200 * time.Millisecond

// sendSyslog sends msg to the syslog socket at path (a datagram socket,
// as /dev/log is), facility daemon, severity notice, tag "l3iso".
// A missing socket is no error; "off" sends nothing.
func sendSyslog(path string, msg []byte) error {
	if path == "off" {
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unixgram", path, syslogTimeout)
	if err != nil {
		return fmt.Errorf("syslog %s: %w", path, err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(syslogTimeout))
	const daemonNotice = 3<<3 | 5
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>%s l3iso[%d]: ", daemonNotice, time.Now().Format(time.Stamp), os.Getpid())
	b.Write(msg)
	if _, err := c.Write(b.Bytes()); err != nil {
		return fmt.Errorf("syslog %s: %w", path, err)
	}
	return nil
}

// BadLine is a line of the log that is no record (a write cut short by a
// crash, or something else's text).
type BadLine struct {
	Line int
	Err  error
}

// Read returns the records of installation bpffs ("" = every
// installation's) in the log of state directory dir, oldest first, and
// the lines that are no record. A log that does not exist holds no
// records.
func Read(dir, bpffs string) ([]Record, []BadLine, error) {
	f, err := os.Open(Path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	var (
		out []Record
		bad []BadLine
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // an apply of many containers is one long line
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Command == "" {
			if err == nil {
				err = errors.New("no command")
			}
			bad = append(bad, BadLine{n, err})
			continue
		}
		if bpffs == "" || filepath.Clean(r.BPFFS) == filepath.Clean(bpffs) {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		return out, bad, fmt.Errorf("audit log %s: %w", Path(dir), err)
	}
	return out, bad, nil
}
