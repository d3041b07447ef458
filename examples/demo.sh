#!/usr/bin/env bash
# examples/demo.sh — a guided tour of l3iso's L3 rules (the rules: docs/DESIGN.md).
#
#   make demo                          (builds bin/l3iso, then runs this)
#   sudo bash examples/demo.sh bin/l3iso
#
# It starts l3iso, pushes a three-container policy and then, for each rule,
# runs small Python programs inside the containers and prints what the
# kernel really answered. Each check exits non-zero on an unexpected answer,
# and the demo stops there, naming the step: a passing demo is a working
# l3iso.
#
# The demo is confined, so it is safe on any machine (it needs root):
#   network namespace  l3iso-demo (ip netns add): the demo's "host" network
#                      stack; l3iso puts the containers' addresses on its lo
#   cgroup             <cgroup v2 mount>/l3iso-demo: l3iso attaches its programs
#                      here (up --cgroup-root), never at the machine's cgroup
#                      root. Containers are .../l3iso-demo/l3iso/<name>;
#                      .../l3iso-demo/host holds a plain "host" process.
#   bpffs directory    /sys/fs/bpf/l3iso-demo (--bpffs): l3iso's pins
# Every l3iso command runs as
#   nsenter --net=/run/netns/l3iso-demo BINARY --bpffs /sys/fs/bpf/l3iso-demo ...
# (nsenter rather than `ip netns exec`: the latter remounts /sys, which hides
# the cgroup v2 and bpf file systems from l3iso.) A trap removes all of it
# when the demo ends: on success, on failure and on Ctrl-C.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 BINARY   (e.g. bin/l3iso; run as root)" >&2
	exit 2
fi
BIN=$(realpath "$1")
[ -x "$BIN" ] || { echo "demo: $1 is not an executable: run make build" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (it loads BPF programs and makes a network namespace)" >&2; exit 2; }
for c in ip nsenter python3 awk realpath; do
	command -v "$c" >/dev/null || { echo "demo: $c is missing: run make deps" >&2; exit 2; }
done

NETNS=l3iso-demo
NETNS_PATH=/run/netns/$NETNS
BPFFS=/sys/fs/bpf/l3iso-demo

# The cgroup v2 mount point, from /proc/self/mountinfo (never assumed: on
# hybrid hosts it is /sys/fs/cgroup/unified). Field 5 is the mount point;
# the file system type is the first field after the "-" separator.
CG2=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "demo: no cgroup v2 hierarchy is mounted" >&2; exit 2; }
CG2=$(printf '%b' "$CG2") # mountinfo escapes spaces as \040
CG=$CG2/l3iso-demo        # l3iso's cgroup root for the demo
HOST_CG=$CG/host          # a "host" process: under the programs, in no container

TMP=/run/l3iso-demo # policy file and ready flags (root-only /run, fixed name: a rerun removes it)
STEP="setup"
BG_PIDS=()
MOUNTED_BPFFS=

# ---------------------------------------------------------------------------
# Helpers

# l3 ARGS...: run l3iso in the demo's namespace, with the demo's pins (its
# audit log under $TMP, nothing to the machine's syslog).
l3() { L3ISO_SYSLOG=off nsenter --net="$NETNS_PATH" "$BIN" --bpffs "$BPFFS" --state-dir "$TMP/state" "$@"; }

# show ARGS...: print an l3iso command, then run it.
show() {
	printf '$ l3iso %s\n' "$*"
	l3 "$@" 2>&1 | sed 's/^/  /'
}

step() {
	STEP=$1
	printf '\n== %s\n' "$1"
}

# Python helpers shared by every snippet. check() prints what happened and
# exits 1 when it is not what docs/DESIGN.md promises.
PYLIB='
import errno, socket, sys
me = sys.argv[1]
def fam(a): return socket.AF_INET6 if ":" in a else socket.AF_INET
def fmt(sa): return ("[%s]:%d" if ":" in sa[0] else "%s:%d") % sa[:2]
def ename(e): return errno.errorcode.get(e.errno, str(e))
def check(what, got, want):
    ok = got == want
    print("  %-6s %-44s -> %-15s %s" % (me + ":", what, got, "as expected" if ok else "WRONG: expected %s" % want), flush=True)
    if not ok: sys.exit(1)
def bind(a, port):
    s = socket.socket(fam(a))
    try: s.bind((a, port)); return "ok"
    except OSError as e: return ename(e)
def listen(a, port):
    s = socket.socket(fam(a)); s.bind((a, port)); s.listen(); s.settimeout(10)
    print("  %-6s %-44s -> %s" % (me + ":", "listen %s" % fmt((a, port)), "bound to " + fmt(s.getsockname())), flush=True)
    return s
def ready(): open(sys.argv[2], "w").close()   # tells the demo the listener is up
def connect(a, port):
    s = socket.socket(fam(a)); s.settimeout(5)
    try: s.connect((a, port)); return s, "ok"
    except OSError as e: return s, ename(e)
def source_of_udp_connect(a):
    s = socket.socket(fam(a), socket.SOCK_DGRAM); s.connect((a, 9)); return s.getsockname()[0]
'

# py CONTAINER CODE [ARG]: run a Python snippet inside a container.
py() { l3 exec "$1" -- python3 -c "$PYLIB$2" "$1" "${3:-}"; }

# py_host CODE [ARG]: the same for a process in no container: a shell puts
# itself into the host cgroup, then becomes python3.
py_host() {
	nsenter --net="$NETNS_PATH" sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' \
		sh "$HOST_CG" python3 -c "$PYLIB$1" host "${2:-}"
}

# bg_start VAR COMMAND...: start a listener in the background and wait
# until it says it is ready; its pid goes to VAR. bg_wait PID: its result.
bg_start() {
	local var=$1 ready="$TMP/ready/$RANDOM" i pid
	shift
	"$@" "$ready" &
	pid=$!
	BG_PIDS+=("$pid")
	for i in $(seq 100); do
		[ -e "$ready" ] && { printf -v "$var" '%s' "$pid"; return 0; }
		kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; echo "demo: the background listener exited early" >&2; return 1; }
		sleep 0.1
	done
	echo "demo: the background listener was not ready within 10s" >&2
	return 1
}
bg_wait() { wait "$1"; }

# remove_cgroup DIR: kill what runs in DIR's subtree, then rmdir bottom-up.
remove_cgroup() {
	local dir=$1 i
	echo 1 >"$dir/cgroup.kill" 2>/dev/null || true
	for i in $(seq 100); do
		grep -q '^populated 0' "$dir/cgroup.events" 2>/dev/null && break
		sleep 0.05
	done
	find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

# teardown: undo everything the demo makes. Runs on exit, and first thing,
# in case an earlier demo was killed before its trap could run.
teardown() {
	local p
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	if [ -d "$BPFFS" ] && [ -e "$NETNS_PATH" ]; then
		# Removes the containers (killing their processes), their
		# addresses and cgroups, every link and pin.
		show down || true
	fi
	rm -rf "$BPFFS" # only if down failed: unpinning a link detaches it
	if [ -d "$CG" ]; then remove_cgroup "$CG"; fi
	if [ -e "$NETNS_PATH" ]; then ip netns delete "$NETNS" || true; fi
	rm -rf "$TMP"
	# /sys/fs/bpf is unmounted again only if the demo mounted it and nothing
	# else lives there (maps.debug and progs.debug are the kernel's own).
	if [ -n "$MOUNTED_BPFFS" ] && [ -z "$(ls -A /sys/fs/bpf | grep -vx -e maps.debug -e progs.debug)" ]; then
		umount /sys/fs/bpf || true
	fi
}

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	printf '\n== cleanup\n'
	teardown
	local left=
	[ -e "$NETNS_PATH" ] && left+=" netns $NETNS"
	[ -d "$CG" ] && left+=" cgroup $CG"
	[ -e "$BPFFS" ] && left+=" pins $BPFFS"
	[ -e "$TMP" ] && left+=" $TMP"
	if [ -n "$left" ]; then
		echo "demo: could not remove:$left" >&2
		[ "$rc" = 0 ] && rc=1
	else
		echo "  removed the namespace, the cgroups and the pins"
	fi
	if [ "$rc" = 0 ]; then
		printf '\ndemo passed: every outcome above is what docs/DESIGN.md promises\n'
	else
		printf '\ndemo FAILED (exit status %s) in step: %s\n' "$rc" "$STEP" >&2
	fi
	exit "$rc"
}

# ---------------------------------------------------------------------------
# Sandbox

if [ -e "$NETNS_PATH" ] || [ -d "$CG" ] || [ -e "$BPFFS" ] || [ -e "$TMP" ]; then
	echo "removing what an interrupted earlier demo left behind"
	teardown
fi
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "setup: namespace $NETNS, cgroup $CG, pins in $BPFFS"
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
	mount -t bpf bpf /sys/fs/bpf
	MOUNTED_BPFFS=1
fi
mkdir -m 0711 "$TMP"
# Ready flags: container root is an unprivileged host uid (exec's user
# namespace), so listeners in containers need a directory anyone may write.
mkdir -m 1777 "$TMP/ready"
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
mkdir -p "$HOST_CG"

# ---------------------------------------------------------------------------
# The demo

step "up: load the programs, attach them once at the demo's cgroup root (docs/DESIGN.md: the shape of the dataplane)"
show up --cgroup-root "$CG"

# The policy: three containers in the host network stack (mode shared).
cat >"$TMP/policy.yaml" <<'EOF'
containers:
  web:
    addresses:
      - 10.77.0.1/24        # primary IPv4, on subnet 10.77.0.0/24
      - fd77::1             # primary IPv6
  db:
    addresses:
      - 10.77.0.2/24
      - fd77::2
      - 10.77.0.9:5432/tcp  # one port of 10.77.0.9; nobody owns the others
  cache:
    addresses:
      - 10.77.0.3
    loopback: host          # uses the host's 127.0.0.1 instead of its own
EOF

step "apply --dry-run: validate the policy and print the diff; nothing changes (rule 1, ownership)"
sed 's/^/  /' "$TMP/policy.yaml"
show apply -f "$TMP/policy.yaml" --dry-run
[ "$(l3 container list -o json | tr -d ' \n')" = "[]" ] || { echo "demo: --dry-run created containers" >&2; exit 1; }

step "apply: push it atomically; the cgroups are created and the addresses owned before they are configured (rules 1 and 9)"
show apply -f "$TMP/policy.yaml"
show container list

step "rule 2 (bind): a container binds what it owns; another's address fails with EADDRNOTAVAIL"
py web '
check("bind 10.77.0.1:8081 (its own)", bind("10.77.0.1", 8081), "ok")
check("bind [fd77::1]:8081 (its own)", bind("fd77::1", 8081), "ok")
check("bind 10.77.0.2:8081 (db\x27s)", bind("10.77.0.2", 8081), "EADDRNOTAVAIL")
check("bind [fd77::2]:8081 (db\x27s)", bind("fd77::2", 8081), "EADDRNOTAVAIL")
'

step "rule 2 (bind): of a shared IP, db binds only its port; any other port fails with EACCES"
py db '
check("bind 10.77.0.9:5432 (its port)", bind("10.77.0.9", 5432), "ok")
check("bind 10.77.0.9:5433 (not its port)", bind("10.77.0.9", 5433), "EACCES")
'

step "rule 2 (bind): the host loses a pushed address; a process in no container cannot bind it"
py_host '
check("bind 10.77.0.1:8081 (web\x27s)", bind("10.77.0.1", 8081), "EADDRNOTAVAIL")
'

step "rule 3 (wildcard binds): web and db both listen on 0.0.0.0:8080; each gets only its own traffic"
# web listens in the background; when db connects to 10.77.0.1:8080, web
# (not db's own wildcard listener) must accept it, and vice versa.
bg_start WEB py web '
l = listen("0.0.0.0", 8080); ready()
c, peer = l.accept()
check("accepted on " + fmt(c.getsockname()) + ", from", peer[0], "10.77.0.2")
s, r = connect("10.77.0.2", 8080)
check("connect 10.77.0.2:8080 (db)", r, "ok")
'
py db '
l = listen("0.0.0.0", 8080)
s, r = connect("10.77.0.1", 8080)
check("connect 10.77.0.1:8080 (web)", r, "ok")
c, peer = l.accept()
check("accepted on " + fmt(c.getsockname()) + ", from", peer[0], "10.77.0.1")
'
bg_wait "$WEB"

step "rule 4 (source addresses): an unbound socket gets its container's own address as source"
# Without l3iso the kernel would use the destination itself as source here
# (both addresses are local): db would send as web.
py web '
check("udp connect 10.77.0.2:9, source is", source_of_udp_connect("10.77.0.2"), "10.77.0.1")
'
py db '
check("udp connect 10.77.0.1:9, source is", source_of_udp_connect("10.77.0.1"), "10.77.0.2")
check("udp connect [fd77::1]:9, source is", source_of_udp_connect("fd77::1"), "fd77::2")
'

step "rule 5 (loopback): web's 127.0.0.1 reaches only web's own sockets"
bg_start WEB py web '
l = listen("127.0.0.1", 8082); ready()
c, peer = l.accept()
check("accepted on " + fmt(c.getsockname()) + ", from", peer[0], "127.0.0.1")
'
py db '
s, r = connect("127.0.0.1", 8082)
check("connect 127.0.0.1:8082 (web\x27s loopback)", r, "ECONNREFUSED")
'
py web '
s, r = connect("127.0.0.1", 8082)
check("connect 127.0.0.1:8082 (its own loopback)", r, "ok")
check("  and getpeername says", fmt(s.getpeername()), "127.0.0.1:8082")
'
bg_wait "$WEB"

step "rule 5 (loopback: host): cache shares the host's 127.0.0.1; web does not"
bg_start HOST py_host '
l = listen("127.0.0.1", 8083); ready()
c, peer = l.accept()
print("  host:  accepted a connection from %s" % fmt(peer), flush=True)
'
py web '
s, r = connect("127.0.0.1", 8083)
check("connect 127.0.0.1:8083 (a host service)", r, "ECONNREFUSED")
'
py cache '
s, r = connect("127.0.0.1", 8083)
check("connect 127.0.0.1:8083 (a host service)", r, "ok")
'
bg_wait "$HOST"

step "rule 8 (capabilities): processes in a container lose NET_ADMIN, NET_RAW, SYS_ADMIN and BPF"
printf '$ l3iso exec web -- grep Cap /proc/self/status\n'
caps=$(l3 exec web -- grep Cap /proc/self/status)
sed 's/^/  /' <<<"$caps"
capeff=$(awk '/^CapEff:/ { print $2 }' <<<"$caps")
for cap in NET_ADMIN:12 NET_RAW:13 SYS_ADMIN:21 BPF:39; do
	if (((0x$capeff >> ${cap#*:}) & 1)); then
		echo "  CapEff still has CAP_${cap%%:*} (bit ${cap#*:}): WRONG" >&2
		exit 1
	fi
done
echo "  CapEff $capeff lacks CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF: ok (this shell's: $(awk '/^CapEff:/ { print $2 }' /proc/self/status))"

step "stats: what the programs counted for each container (zero counters left out)"
printf '$ l3iso stats\n'
l3 stats | sed 's/^/  /'

step "status: links, pins and containers"
show status
