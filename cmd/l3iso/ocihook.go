package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/cgroup"
	"github.com/l3iso/l3iso/pkg/control"
)

// AnnotationContainer selects the OCI hook: a runtime container annotated
// io.l3iso.container=NAME must run inside l3iso container NAME.
const AnnotationContainer = "io.l3iso.container"

// runtimeCgroup is container name's cgroup as a runtime takes it
// (podman --cgroup-parent, ctr --cgroup): its path below the cgroup v2
// mount, with a leading '/'.
func runtimeCgroup(c *control.Control, name string) (string, error) {
	mount, err := cgroup.Mount()
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(mount, c.CgroupPath(name))
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("container %q: its cgroup %s is not below the cgroup v2 mount %s", name, c.CgroupPath(name), mount)
	}
	return "/" + rel, nil
}

func newContainerCgroup(g *globals) *cobra.Command {
	var abs bool
	cmd := &cobra.Command{
		Use:   "cgroup NAME",
		Short: "Print a container's cgroup, as podman --cgroup-parent and ctr --cgroup take it",
		Long: `cgroup prints the cgroup of container NAME below the cgroup v2 mount, the
form container runtimes take (--absolute: its directory). A runtime's
container started inside it is the l3iso container's workload, policed as
for 'l3iso exec' (shared mode):

  podman --runtime runc run --network host --cgroup-parent=$(l3iso container cgroup web) --cap-drop=NET_RAW ...
  ctr run --cgroup $(l3iso container cgroup web)/ID --net-host ...

runc puts the process in the same path in every hierarchy (crun refuses a
hybrid cgroup v1/v2 host). 'l3iso oci-hook' makes a runtime refuse to
start a container annotated io.l3iso.container=NAME outside that cgroup.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.Find(args[0]); err != nil {
				return err
			}
			path := c.CgroupPath(args[0])
			if !abs {
				if path, err = runtimeCgroup(c, args[0]); err != nil {
					return err
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), path)
			return nil
		},
	}
	cmd.Flags().BoolVar(&abs, "absolute", false, "print the cgroup's directory (under the cgroup v2 mount) instead")
	return cmd
}

// ociState is what an OCI runtime passes a hook on stdin (the runtime
// spec's state).
type ociState struct {
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Annotations map[string]string `json:"annotations"`
}

func newOCIHook(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "oci-hook",
		Short: "OCI createRuntime hook: refuse a container that is not inside its l3iso container's cgroup",
		Long: `oci-hook is an OCI runtime hook (stage createRuntime; see
examples/hooks.d/l3iso.json, for podman's --hooks-dir or
/usr/share/containers/oci/hooks.d). It reads the container's state on
stdin; for a container annotated io.l3iso.container=NAME it checks that the
container's process is inside l3iso container NAME's cgroup (as 'l3iso
container cgroup NAME' prints it for --cgroup-parent) and otherwise fails,
saying why: the runtime then does not start it. A typo in NAME, or a
forgotten --cgroup-parent, never runs a workload unconfined.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ociHook(g, cmd.InOrStdin())
		},
	}
}

func ociHook(g *globals, in io.Reader) error {
	var st ociState
	if err := json.NewDecoder(in).Decode(&st); err != nil {
		return fmt.Errorf("oci-hook: read the container's state on stdin: %w (run it as an OCI hook: see examples/hooks.d/l3iso.json)", err)
	}
	name, ok := st.Annotations[AnnotationContainer]
	if !ok {
		return nil // not an l3iso container's
	}
	if st.Pid <= 0 {
		return fmt.Errorf("oci-hook: container %s has no process in its state (pid %d): run the hook at stage createRuntime", st.ID, st.Pid)
	}
	c, err := control.Open(g.bpffs, false)
	if err != nil {
		return fmt.Errorf("oci-hook: container %s is annotated %s=%s: %w", st.ID, AnnotationContainer, name, err)
	}
	defer c.Close()
	k, err := c.Find(name)
	if err != nil {
		return fmt.Errorf("oci-hook: container %s is annotated %s=%s: %w; not starting it unconfined", st.ID, AnnotationContainer, name, err)
	}
	want, err := runtimeCgroup(c, name)
	if err != nil {
		return err
	}
	have, err := procCgroup(st.Pid)
	if err != nil {
		return fmt.Errorf("oci-hook: container %s: %w", st.ID, err)
	}
	if have != want && !strings.HasPrefix(have, want+"/") {
		return fmt.Errorf("oci-hook: container %s (process %d) is in cgroup %s, not inside l3iso container %q (%s): start it with --cgroup-parent=%s (podman) or --cgroup %s/%s (ctr); not starting it unconfined",
			st.ID, st.Pid, have, name, want, want, want, st.ID)
	}
	if id, err := cgroup.ID(c.CgroupPath(name)); err != nil || id != k.CgroupID {
		return fmt.Errorf("oci-hook: l3iso container %q has lost its cgroup (run `l3iso up` to repair): not starting container %s", name, st.ID)
	}
	return nil
}

// procCgroup is process pid's cgroup v2 path (the "0::" line of
// /proc/PID/cgroup).
func procCgroup(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("read the cgroup of process %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("process " + fmt.Sprint(pid) + " has no cgroup v2 path in /proc/PID/cgroup")
}
