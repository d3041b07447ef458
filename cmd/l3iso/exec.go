package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/l3iso/l3iso/pkg/confine"
	"github.com/l3iso/l3iso/pkg/control"
)

func newExec(g *globals) *cobra.Command {
	var o confine.Options
	cmd := &cobra.Command{
		Use:   "exec NAME [flags] -- COMMAND [ARGS...]",
		Short: "Run a command inside a container (its exit status is the command's)",
		Long: `exec runs COMMAND inside the container: in its cgroup (and network namespace,
for a netns container), with its own PID, user, mount and cgroup namespaces.

- Users: container root and every --user are mapped to host ids that own
  nothing on the host: container id N gets host uids and gids
  1073741824+(N-1)*65536 .. +65535 (inside: 0..65535). Privileged ports on the
  container's own addresses still bind.
- Processes: COMMAND runs under a small init (pid 1) that forwards SIGHUP,
  SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM, SIGCONT and
  SIGPWR sent to exec, reaps orphans and ends with COMMAND, taking what is
  left with it: exec's exit status is COMMAND's (128+N after a death by
  signal N). It sees and signals no process outside, has no controlling
  terminal and a session keyring of its own.
- Mounts: no bpf file system; /proc of its own PID namespace, /proc/sys and
  /sys read-only, /proc/kcore, /proc/keys, /sys/firmware and runc's other
  masked paths hidden; the cgroup v2 mount shows its container's cgroup only.
  The file system is otherwise the host's.
- Capabilities NET_ADMIN, NET_RAW, SYS_ADMIN, BPF, PERFMON, SYS_MODULE and
  SYS_PTRACE are gone for good (and all others act inside its user namespace
  only); no_new_privs is set; 32-bit system calls fail with EPERM.
- Environment: PATH, HOME, and TERM and LANG if set, then --env-file, then
  --env. The working directory is --workdir, else the caller's if the user
  may enter it, else /.

exec refuses to start when it cannot keep these promises on this host: when
a cgroup above the container's is writable by its host ids, or /etc/passwd or
/etc/group has an id in its range.
If COMMAND cannot be started inside, exec says why and exits 126 (127: not
found).

--host-root is the old model, for commands that must act as the host's root:
no user and no PID namespace; exec becomes COMMAND, as host root. The
mounts, capabilities, no_new_privs and the 32-bit filter above still apply,
but the command can signal and trace host processes, write host files and
leave its cgroup. It prints a warning saying so.`,
		Args: func(cmd *cobra.Command, args []string) error {
			// Without "--", exec's flag parser would read COMMAND's own
			// flags (grep -w DIR runs grep in DIR; id -u fails as a flag
			// of exec's): COMMAND starts after "--", always.
			if at := cmd.ArgsLenAtDash(); at != 1 || len(args) < 2 {
				name := "NAME"
				if len(args) > 0 && at != 0 {
					name = args[0]
				}
				return fmt.Errorf("exec takes NAME, then -- and the command: l3iso exec [flags] %s -- COMMAND [ARGS...]", name)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.Open(g.bpffs, false)
			if err != nil {
				return err
			}
			defer c.Close()
			code, err := c.Exec(args[0], o, args[1:])
			if err != nil && code == 0 {
				return err
			}
			if err != nil { // the command could not be started
				fmt.Fprintln(os.Stderr, "l3iso:", err)
			}
			os.Exit(code)
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w (the command's own flags go after --: l3iso exec [flags] NAME -- COMMAND [ARGS...])", err)
	})
	f := cmd.Flags()
	f.StringVarP(&o.User, "user", "u", "", "run as `NAME|UID[:GROUP|GID]` (ids inside the container; default root)")
	f.StringArrayVarP(&o.Env, "env", "e", nil, "set `NAME=VALUE` in the command's environment (NAME alone: the caller's value); repeatable")
	f.StringArrayVar(&o.EnvFiles, "env-file", nil, "read NAME=VALUE lines (# comments) from `FILE`; repeatable")
	f.StringVarP(&o.Workdir, "workdir", "w", "", "run in `DIR` (absolute)")
	f.BoolVar(&o.HostRoot, "host-root", false, "run as the host's root without user and PID namespaces (unsafe: prints a warning)")
	return cmd
}
