// Package e2e holds l3iso's system tests: TestMain builds the real l3iso
// binary (cmd/l3iso) once per run, and every test drives it in a private
// network namespace, cgroup subtree and bpffs of its own, checking the
// rules of docs/DESIGN.md with real sockets from agents (internal/sockprobe)
// living in container cgroups and namespaces. They need root; without it
// they skip, and under CI=true or L3ISO_REQUIRE_PRIVILEGED=1 they fail.
//
// Files are named by what they check:
//
//	rule1_*  … rule9_*   one of the nine L3 rules (rule1_ ownership against
//	                     the host's addresses, rule2_ bind, rule3_ wildcard
//	                     binds, rule4_ source addresses, rule5_ loopback,
//	                     rule6_ broadcast and multicast, rule7_ IPv6 parity,
//	                     rule8_ containment, rule9_ no race on push and
//	                     crash consistency)
//	mode_netns_*         netns-mode containers and their delivery settings
//	runtime_*            CNI, podman, containerd, two nodes
//	obs_*                observability: monitor, events, metrics, audit log
//	ops_*                operator commands: the CLI, repair, stop, names,
//	                     stale sockets
//
// and the harness: env_test.go (an installation: netns, cgroups, bpffs,
// `l3iso up`), netenv_test.go (an uplink to an outside host),
// bg_test.go (long-running processes), runtime_kit_test.go (CNI tools and
// runtime sandboxes), json_test.go (the -o json shapes).
//
// Run them as root: go test ./e2e -count=1 (-run 'TestX|TestY' for a few).
//
// A test calls t.Parallel first thing when it shares nothing with the
// others: its own netns, cgroup subtree and bpffs, no host-global state
// (no address, sysctl or fixed port outside its namespaces). The few that
// do not say why (they time l3iso or kill it at instants taken from a
// timed run, load every CPU, or set environment variables). go test runs
// the parallel ones as many at once as -parallel says (GOMAXPROCS by
// default), after the serial ones.
package e2e
