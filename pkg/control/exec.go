package control

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/confine"
)

// Exec runs argv inside container name, confined as package confine
// describes, and returns its exit status; with o.HostRoot it replaces the
// calling process and returns only on error. Either way the calling
// goroutine is left locked to an OS thread inside the container's
// namespaces: the caller must exit once Exec returns, and must hold no
// lock it wants to keep (Exec closes c).
func (c *Control) Exec(name string, o confine.Options, argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, fmt.Errorf("exec: no command given: l3iso exec %s -- COMMAND [ARGS...]", name)
	}
	k, err := c.Find(name)
	if err != nil {
		return 0, err
	}
	ct := confine.Container{Name: name, ID: k.ID, Cgroup: c.CgroupPath(name), Netns: -1}
	if isNetns(k) {
		p := c.NetnsPath(name)
		if ct.Netns, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return 0, fmt.Errorf("exec in container %q: open its network namespace %s: %w (run `l3iso up` to repair it)", name, p, err)
		}
	}
	c.Close()
	return confine.Run(ct, o, argv)
}
