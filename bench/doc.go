// Package bench measures what l3iso costs: the socket hooks on the hot path
// (bind, connect, unconnected sendto) as ratios against processes that no
// l3iso program sees, measured in the same run, and the control plane
// (container add, apply of a 10,000-container policy).
//
// Everything lives in the package's benchmarks (sockhooks_test.go and
// friends); their children are bench/engine's workers. The delivery-path
// benchmark, l3iso-bench (cmd/l3iso-bench: loopback, shared, host, bridge,
// bridge_ct, routed, direct side by side), is package bench/engine. See
// README.md for what is measured, how to run it and the figures of the
// reference machine. The benchmarks need root and build their own world:
// a test cgroup subtree, a private bpffs mount and fresh network
// namespaces, all removed afterwards. They never attach at the machine's
// cgroup root.
package bench
