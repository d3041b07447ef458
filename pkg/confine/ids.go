package confine

import (
	"bufio"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/l3iso/l3iso/pkg/cgroup"
)

// Container users and groups: every container has IDsPerContainer ids,
// 0..65535 inside, which are host ids HostIDs(id)..HostIDs(id)+65535 —
// for container id N (1..MaxContainerID) from HostIDBase + (N-1)*65536.
// Container ids are unique in an installation, so no two containers of one
// installation share an id; all ranges together are the host ids
// 1073741824..2147483647 (0x40000000..0x7fffffff), above the ids Debian
// gives users (useradd's SUB_UID_MAX is 600100000) and below 2^31, which
// some programs mistake for negative. A container id that is freed and
// given to a new container gives it the old one's range, and with it the
// files the old one left in world-writable directories.
const (
	IDsPerContainer = 1 << 16
	HostIDBase      = 1 << 30
	MaxContainerID  = (1<<31 - HostIDBase) / IDsPerContainer // 16384
)

// HostIDs returns the first host uid (and gid) of container id's range.
func HostIDs(id uint32) (uint32, error) {
	if id == 0 || id > MaxContainerID {
		return 0, fmt.Errorf("container id %d has no host uid range: ids 1..%d do", id, MaxContainerID)
	}
	return HostIDBase + (id-1)*IDsPerContainer, nil
}

// User is who the command runs as, in ids inside the container.
type User struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"` // supplementary
	Home   string   `json:"home"`
}

// newSpec checks the options and the command and says how to run it.
func newSpec(c Container, o Options, argv []string) (*Spec, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec: no command given: l3iso exec %s -- COMMAND [ARGS...]", c.Name)
	}
	s := &Spec{Container: c.Name, Argv: argv, HostRoot: o.HostRoot}
	var err error
	if o.HostRoot {
		if o.User != "" {
			return nil, fmt.Errorf("exec: --user %s and --host-root exclude each other: --host-root runs the command as the host's root", o.User)
		}
		s.User = User{Home: "/root"}
	} else {
		if s.HostBase, err = HostIDs(c.ID); err != nil {
			return nil, fmt.Errorf("exec in container %q: %w", c.Name, err)
		}
		if s.User, err = lookupUser(o.User); err != nil {
			return nil, err
		}
	}
	if s.Env, err = buildEnv(s.User.Home, o.EnvFiles, o.Env); err != nil {
		return nil, err
	}
	switch {
	case o.Workdir != "":
		if !filepath.IsAbs(o.Workdir) {
			return nil, fmt.Errorf("exec: --workdir %s: give an absolute path", o.Workdir)
		}
		if st, err := os.Stat(o.Workdir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("exec: --workdir %s: not a directory", o.Workdir)
		}
		s.Dir, s.DirSet = o.Workdir, true
	default:
		if s.Dir, err = os.Getwd(); err != nil {
			s.Dir = "/"
		}
	}
	// Find the command now, as the caller sees it, for a clear error
	// before anything starts; the stage looks again as the user, from
	// its working directory. A relative path waits for that.
	if filepath.IsAbs(argv[0]) || !strings.Contains(argv[0], "/") {
		if _, err := lookPath(argv[0], s.Env); err != nil {
			return nil, fmt.Errorf("exec in container %q: %w", c.Name, err)
		}
	}
	return s, nil
}

// lookupUser resolves --user NAME|UID[:GROUP|GID] ("" is root) with the
// host's /etc/passwd and /etc/group, which are the container's too.
func lookupUser(spec string) (User, error) {
	if spec == "" {
		spec = "0"
	}
	bad := func(format string, a ...any) (User, error) {
		return User{}, fmt.Errorf("exec: --user %s: "+format, append([]any{spec}, a...)...)
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	var u User
	var pw *user.User
	var err error
	if n, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		u.UID = uint32(n)
		pw, err = user.LookupId(name) // not found: a uid without an entry is fine
	} else if pw, err = user.Lookup(name); err != nil {
		return bad("no such user in /etc/passwd: give a user name or a numeric uid")
	}
	u.Home = "/"
	if pw != nil && err == nil {
		n, _ := strconv.ParseUint(pw.Uid, 10, 32)
		g, _ := strconv.ParseUint(pw.Gid, 10, 32)
		u.UID, u.GID, u.Home = uint32(n), uint32(g), pw.HomeDir
		if gids, err := pw.GroupIds(); err == nil {
			for _, s := range gids {
				if g, err := strconv.ParseUint(s, 10, 32); err == nil && g < IDsPerContainer {
					u.Groups = append(u.Groups, uint32(g))
				}
			}
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else if gr, err := user.LookupGroup(group); err == nil {
			n, _ := strconv.ParseUint(gr.Gid, 10, 32)
			u.GID = uint32(n)
		} else {
			return bad("no such group %q in /etc/group: give a group name or a numeric gid", group)
		}
		u.Groups = nil
	}
	if u.UID >= IDsPerContainer || u.GID >= IDsPerContainer {
		return bad("uid %d, gid %d: ids inside a container are 0..%d", u.UID, u.GID, IDsPerContainer-1)
	}
	return u, nil
}

// checkHostIDs refuses a host where the container's id range would give
// its processes more than nothing: a host user or group with an id in the
// range (the container would own its files), or an ancestor of the
// container's cgroup whose cgroup.procs the range may write. The kernel
// lets a process move to another cgroup — by cgroup.procs or by clone3
// with CLONE_INTO_CGROUP, through any descriptor of the cgroup's
// directory — only with write permission on the cgroup.procs of the
// common ancestor, and any cgroup outside the container has its common
// ancestor with the container's above it. (cgroup v2 without nsdelegate
// checks nothing else, and with it only the cgroup namespace.)
func checkHostIDs(c Container, base uint32) error {
	lo, hi := base, base+IDsPerContainer-1
	inRange := func(id uint32) bool { return id >= lo && id <= hi }
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		if name, id, ok := idInRange(f, inRange); ok {
			return fmt.Errorf("exec in container %q: %s has %q with id %d, in the container's host id range %d-%d: the container would own its files; give it another id",
				c.Name, f, name, id, lo, hi)
		}
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return err
	}
	for d := filepath.Dir(c.Cgroup); ; d = filepath.Dir(d) {
		p := filepath.Join(d, "cgroup.procs")
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return fmt.Errorf("exec in container %q: %s: %w", c.Name, p, err)
		}
		if st.Mode&0o002 != 0 || inRange(st.Uid) && st.Mode&0o200 != 0 || inRange(st.Gid) && st.Mode&0o020 != 0 {
			return fmt.Errorf("exec in container %q: %s (owner %d:%d, mode %o) is writable by the container's host ids %d-%d, so its processes could leave their cgroup: exec refuses; make it writable by root only",
				c.Name, p, st.Uid, st.Gid, st.Mode&0o777, lo, hi)
		}
		if d == mount || len(d) <= len(mount) {
			return nil
		}
	}
}

// idInRange returns the first entry of passwd- or group-format file f
// whose id (the third field) inRange accepts.
func idInRange(f string, inRange func(uint32) bool) (string, uint32, bool) {
	fh, err := os.Open(f)
	if err != nil {
		return "", 0, false
	}
	defer fh.Close()
	s := bufio.NewScanner(fh)
	for s.Scan() {
		fields := strings.Split(s.Text(), ":")
		if len(fields) < 3 {
			continue
		}
		if id, err := strconv.ParseUint(fields[2], 10, 32); err == nil && inRange(uint32(id)) {
			return fields[0], uint32(id), true
		}
	}
	return "", 0, false
}
