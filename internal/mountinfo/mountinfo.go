// Package mountinfo reads the kernel's mount table (proc_pid_mountinfo(5)):
// where each file system is mounted, and its type.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Self is the mount table of the calling process's mount namespace.
// Thread is that of the calling thread, which differs from Self once a
// thread has unshared its mount namespace (as `l3iso exec` does on a
// locked thread).
const (
	Self   = "/proc/self/mountinfo"
	Thread = "/proc/thread-self/mountinfo"
)

// Mount is one line of the table.
type Mount struct {
	Point  string // mount point, unescaped
	FSType string // file system type: cgroup2, bpf, proc, ...
}

// Read returns the mounts of table file (Self or Thread), in its order:
// a mount comes after the one it is mounted on.
func Read(file string) ([]Mount, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []Mount
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, after := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(after) == 0 {
			continue
		}
		out = append(out, Mount{Point: unescape(fields[4]), FSType: after[0]})
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", file, err)
	}
	return out, nil
}

// Points returns the mount points of the file systems of the given types
// in table file, in its order.
func Points(file string, fstypes ...string) ([]string, error) {
	ms, err := Read(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		for _, t := range fstypes {
			if m.FSType == t {
				out = append(out, m.Point)
				break
			}
		}
	}
	return out, nil
}

// unescape undoes the table's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
