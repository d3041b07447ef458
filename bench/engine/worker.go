package engine

// The worker protocol: the one way the benchmarks start load generators
// and other children (bench/README.md, "Workers"). A worker is the
// benchmark's own binary started again — l3iso-bench, or a test binary
// whose TestMain calls MaybeWorker first thing — born in the cgroup of the
// configuration under test (CLONE_INTO_CGROUP) and in its network
// namespace (started from a thread that entered it; StartWorker).
//
//	environment  $L3ISO_BENCH_WORKER names the role; $L3ISO_BENCH_ADDR,
//	             $L3ISO_BENCH_PORTS and $L3ISO_BENCH_CPU say where it
//	             works, as the role needs them
//	stdout       an optional hello line when it is ready, then exactly one
//	             JSON line per command
//	stdin        one command per line
//	exit         0 when stdin closes; non-zero on a failure, the reason on
//	             stderr
//
// The roles:
//
//	server    listens on ADDR: one UDP socket (counts datagrams), one TCP
//	          listener each for tcp_rr (echo), tcp_crr (accept, read 1
//	          byte, write 1 byte, close) and tcp_gbps (counts bytes).
//	          Hello: its ports. Answers every "snap" with its counters and
//	          a monotonic timestamp.
//	listener  bcast_fanout's receiver: one UDP socket bound to ADDR (the
//	          wildcard) and the port in $L3ISO_BENCH_PORTS, counting
//	          datagrams. Hello: its port. Answers "snap" like the server,
//	          with its socket's drops and the machine's busy CPU time added.
//	client    for every line "WORKLOAD NANOSECONDS" runs that workload for
//	          that long and answers with a runResult: against the server
//	          (udp_pps, tcp_rr, tcp_crr, tcp_gbps), the broadcast address
//	          ADDR (bcast_fanout), or on its own (the system-call loops
//	          bind, connect and sendto, each against a socket of its own on
//	          ADDR: the socket-hook workloads).
//
// A test binary can add roles of its own (MaybeWorker's extra): one
// command line in, one result out.
//
// Clients and servers use raw system calls (golang.org/x/sys/unix) on
// blocking sockets from goroutines locked to OS threads pinned to one CPU,
// so what is timed is the kernel path, not Go's netpoller.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Environment of a worker process.
const (
	envWorker = "L3ISO_BENCH_WORKER" // the role
	envAddr   = "L3ISO_BENCH_ADDR"   // server, listener: address to listen on; client: the server's, or its own for the loops
	envPorts  = "L3ISO_BENCH_PORTS"  // client: the server's ports (JSON); listener: its port (bcast)
	envCPU    = "L3ISO_BENCH_CPU"    // CPU to pin the working threads to; -1 or unset: none
	envNice   = "L3ISO_BENCH_NICE"   // nice value of the working threads (-20 … 19); unset: the inherited one
)

// nice is the working threads' nice value ($L3ISO_BENCH_NICE); 0: left
// as inherited.
var nice int

// Payload sizes.
const (
	udpPayload    = 64       // bytes per UDP datagram (udp_pps, sendto)
	streamChunk   = 64 << 10 // bytes per write (tcp_gbps)
	udpCheckEvery = 64       // datagrams between two looks at the clock
)

// The client's system-call loops (the socket-hook workloads): each runs
// against a socket of the client's own on ADDR, in the same cgroup and
// network namespace.
const (
	LoopBind    = "bind"        // socket(TCP), bind(ADDR:0), listen, close
	LoopConnect = "connect"     // socket(TCP), SO_LINGER{1,0}, connect to a listener on ADDR, close (RST)
	LoopSendto  = "sendto"      // sendto of 64 bytes from an unbound, unconnected UDP socket to a UDP socket on ADDR that never reads
	LoopDenied  = "bind-denied" // socket(UDP), bind(ADDR:0) refused with EADDRNOTAVAIL (ADDR is another's), close
)

// ports are the server's listening ports.
type ports struct {
	UDP    int `json:"udp"`
	RR     int `json:"rr"`
	CRR    int `json:"crr"`
	Stream int `json:"stream"`
	Bcast  int `json:"bcast,omitempty"` // bcast_fanout: the listeners' port
}

// snap is the server's answer to "snap".
type snap struct {
	UDP    uint64 `json:"udp"`    // datagrams received so far
	Stream uint64 `json:"stream"` // stream bytes received so far
	Ns     int64  `json:"ns"`     // monotonic nanoseconds
	// Busy is the machine's busy CPU time so far, all CPUs, from
	// /proc/stat, read together with the counters (listener only).
	Busy int64 `json:"busy_ns,omitempty"`
	// Drops are the datagrams the listener's socket dropped so far
	// because its receive buffer was full (listener only).
	Drops uint64 `json:"drops,omitempty"`
}

// RunResult is the client's answer to a run.
type RunResult struct {
	Ops   uint64 `json:"ops"` // datagrams sent, transactions, connections, bytes or loop iterations
	Ns    int64  `json:"ns"`  // how long the run took
	P50   int64  `json:"p50_ns,omitempty"`
	P99   int64  `json:"p99_ns,omitempty"`
	P999  int64  `json:"p999_ns,omitempty"`
	Error string `json:"error,omitempty"`
}

// NsPerOp is the run's time per operation.
func (r RunResult) NsPerOp() float64 {
	if r.Ops == 0 {
		return 0
	}
	return float64(r.Ns) / float64(r.Ops)
}

// Role is a worker role a test binary adds (MaybeWorker): it answers one
// command line with one result, which the worker prints as one JSON line.
type Role func(cmd string) (any, error)

// MaybeWorker runs the worker and exits if this process was started as
// one ($L3ISO_BENCH_WORKER set); otherwise it returns at once. Call it
// first thing in main (cmd/l3iso-bench does) or in TestMain. extra are
// roles of the caller's own, by name.
func MaybeWorker(extra map[string]Role) {
	role := os.Getenv(envWorker)
	if role == "" {
		return
	}
	if err := worker(role, extra); err != nil {
		fmt.Fprintf(os.Stderr, "bench worker %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func worker(role string, extra map[string]Role) error {
	if r, ok := extra[role]; ok {
		return serveLines(nil, nil, func(cmd string) (any, error) { return r(cmd) })
	}
	addr, err := netip.ParseAddr(os.Getenv(envAddr))
	if err != nil || !addr.Is4() {
		return fmt.Errorf("$%s=%q: want an IPv4 address", envAddr, os.Getenv(envAddr))
	}
	cpu, err := strconv.Atoi(os.Getenv(envCPU))
	if err != nil {
		cpu = -1
	}
	if v := os.Getenv(envNice); v != "" {
		if nice, err = strconv.Atoi(v); err != nil || nice < -20 || nice > 19 {
			return fmt.Errorf("$%s=%q: want -20 to 19", envNice, v)
		}
	}
	var p ports
	if role == "listener" || role == "client" {
		if v := os.Getenv(envPorts); v != "" {
			if err := json.Unmarshal([]byte(v), &p); err != nil {
				return fmt.Errorf("$%s: %w", envPorts, err)
			}
		}
	}
	switch role {
	case "server":
		return server(addr, cpu)
	case "listener":
		return listener(addr, p.Bcast, cpu)
	case "client":
		return client(addr, p, cpu)
	}
	return fmt.Errorf("unknown role %q", role)
}

// pin locks the calling goroutine to its OS thread, that thread to cpu,
// and gives it the worker's nice value (setpriority of a thread id
// changes that thread only).
func pin(cpu int) error {
	runtime.LockOSThread()
	if nice != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, nice); err != nil {
			return fmt.Errorf("nice %d: %w", nice, err)
		}
	}
	if cpu < 0 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}

func sockaddr(a netip.Addr, port int) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: a.As4(), Port: port}
}

// listenOn binds a socket of type typ (with socket flags) to addr:0,
// listens if it is a stream socket, and returns it with its port.
func listenOn(addr netip.Addr, typ, flags int) (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|flags|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sockaddr(addr, 0)); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("bind %s:0: %w", addr, err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 4096); err != nil {
			unix.Close(fd)
			return -1, 0, fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("getsockname: %w", err)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("getsockname: got %T, want IPv4", sa)
	}
	return fd, in4.Port, nil
}

// retry repeats a system call interrupted by a signal (the Go runtime's
// own signals reach these threads too).
func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

func server(addr netip.Addr, cpu int) error {
	start := time.Now()
	var p ports
	var udpFD, rrFD, crrFD, streamFD int
	var err error
	if udpFD, p.UDP, err = listenOn(addr, unix.SOCK_DGRAM, 0); err != nil {
		return err
	}
	if rrFD, p.RR, err = listenOn(addr, unix.SOCK_STREAM, 0); err != nil {
		return err
	}
	if crrFD, p.CRR, err = listenOn(addr, unix.SOCK_STREAM, 0); err != nil {
		return err
	}
	if streamFD, p.Stream, err = listenOn(addr, unix.SOCK_STREAM, 0); err != nil {
		return err
	}
	var udpPkts, streamBytes atomic.Uint64
	fail := make(chan error, 4)

	go func() { // udp_pps: count datagrams
		if err := pin(cpu); err != nil {
			fail <- err
			return
		}
		buf := make([]byte, 2048)
		for {
			err := recvFrom(udpFD, buf)
			if err == nil {
				udpPkts.Add(1)
			} else if !errors.Is(err, unix.EINTR) {
				fail <- fmt.Errorf("udp recv: %w", err)
				return
			}
		}
	}()
	// tcp_rr: echo one byte per transaction, one goroutine per connection.
	go acceptLoop(rrFD, cpu, fail, func(fd int) {
		buf := make([]byte, 1)
		for {
			if n, err := retry(func() (int, error) { return unix.Read(fd, buf) }); n <= 0 || err != nil {
				return
			}
			if _, err := retry(func() (int, error) { return unix.Write(fd, buf) }); err != nil {
				return
			}
		}
	})
	go func() { // tcp_crr: one connection at a time, like the client
		if err := pin(cpu); err != nil {
			fail <- err
			return
		}
		buf := make([]byte, 1)
		for {
			fd, _, err := unix.Accept4(crrFD, unix.SOCK_CLOEXEC)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
					continue
				}
				fail <- fmt.Errorf("crr accept: %w", err)
				return
			}
			if n, err := retry(func() (int, error) { return unix.Read(fd, buf) }); n == 1 && err == nil {
				retry(func() (int, error) { return unix.Write(fd, buf) })
			}
			unix.Close(fd)
		}
	}()
	// tcp_gbps: count bytes.
	go acceptLoop(streamFD, cpu, fail, func(fd int) {
		buf := make([]byte, 256<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
				return
			}
			streamBytes.Add(uint64(n))
		}
	})

	return answerSnaps(p, fail, func() (any, error) {
		return snap{UDP: udpPkts.Load(), Stream: streamBytes.Load(), Ns: time.Since(start).Nanoseconds()}, nil
	})
}

// serveLines prints hello (unless nil) as one JSON line, then answers
// every line on stdin with one JSON line of handle's result; it returns
// when stdin closes, on a failure from fail (nil: none), or when handle
// fails.
func serveLines(hello any, fail <-chan error, handle func(cmd string) (any, error)) error {
	out := json.NewEncoder(os.Stdout)
	if hello != nil {
		if err := out.Encode(hello); err != nil {
			return err
		}
	}
	lines := make(chan string)
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			lines <- in.Text()
		}
		close(lines)
	}()
	for {
		select {
		case err := <-fail:
			return err
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			v, err := handle(l)
			if err != nil {
				return err
			}
			if err := out.Encode(v); err != nil {
				return err
			}
		}
	}
}

// answerSnaps is serveLines for the server and the listener: their one
// command is "snap".
func answerSnaps(hello any, fail <-chan error, snapshot func() (any, error)) error {
	return serveLines(hello, fail, func(cmd string) (any, error) {
		if strings.TrimSpace(cmd) != "snap" {
			return nil, fmt.Errorf("unknown command %q", cmd)
		}
		return snapshot()
	})
}

// listener counts the datagrams that arrive on one UDP socket bound to
// addr:port — in bcast_fanout the wildcard address, the way an application
// that wants broadcasts listens — and answers "snap" with the count and the
// machine's busy CPU time.
func listener(addr netip.Addr, port, cpu int) error {
	start := time.Now()
	if port <= 0 {
		return fmt.Errorf("$%s: no bcast port", envPorts)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, sockaddr(addr, port)); err != nil {
		return fmt.Errorf("bind %s:%d: %w", addr, port, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat the socket: %w", err)
	}
	if _, err := socketDrops(st.Ino); err != nil {
		return err
	}
	if _, err := busyNs(); err != nil {
		return err
	}
	var pkts atomic.Uint64
	fail := make(chan error, 1)
	go func() {
		if err := pin(cpu); err != nil {
			fail <- err
			return
		}
		buf := make([]byte, 2048)
		for {
			err := recvFrom(fd, buf)
			if err == nil {
				pkts.Add(1)
			} else if !errors.Is(err, unix.EINTR) {
				fail <- fmt.Errorf("udp recv: %w", err)
				return
			}
		}
	}()
	return answerSnaps(ports{Bcast: port}, fail, func() (any, error) {
		drops, err := socketDrops(st.Ino)
		if err != nil {
			return nil, err
		}
		busy, err := busyNs()
		if err != nil {
			return nil, err
		}
		return snap{UDP: pkts.Load(), Ns: time.Since(start).Nanoseconds(), Busy: busy, Drops: drops}, nil
	})
}

// recvFrom receives one datagram into buf with recvfrom(2), asking for
// the sender's address as a server does: the kernel runs the cgroup
// recvmsg hooks (l3iso's l3_recvmsg4/6) only for a call that asks for it,
// so read(2) would leave them out of the measured path. The address goes
// to a buffer of the calling goroutine's stack, not to a new Sockaddr per
// call as x/sys/unix's Recvfrom makes (whose garbage the collector then
// clears on the CPUs the measured path is pinned to).
func recvFrom(fd int, buf []byte) error {
	var from unix.RawSockaddrAny
	fromLen := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0,
		uintptr(unsafe.Pointer(&from)), uintptr(unsafe.Pointer(&fromLen)))
	if e != 0 {
		return e
	}
	return nil
}

// socketDrops is the drop count of the UDP socket with inode ino, from
// /proc/net/udp of this process's network namespace: datagrams the kernel
// had for it but discarded, mostly because its receive buffer was full.
func socketDrops(ino uint64) (uint64, error) {
	b, err := os.ReadFile("/proc/self/net/udp")
	if err != nil {
		return 0, err
	}
	want := strconv.FormatUint(ino, 10)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
		f := strings.Fields(l)
		if len(f) >= 13 && f[9] == want {
			return strconv.ParseUint(f[12], 10, 64)
		}
	}
	return 0, fmt.Errorf("socket inode %d is not in /proc/self/net/udp", ino)
}

// userHZ is the unit of /proc/stat: 1/100 s on every Linux architecture
// Go runs on here (USER_HZ, not the kernel's HZ).
const userHZ = 100

// busyNs is the busy CPU time of the machine so far, summed over all CPUs:
// user, nice, system, irq and softirq of the "cpu" line of /proc/stat
// (idle, iowait and steal left out; guest time is already in user). Its
// resolution is 10 ms, and the kernel samples it at each tick.
func busyNs() (int64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system . . irq softirq
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		busy += v
	}
	return busy * (1e9 / userHZ), nil
}

// acceptLoop accepts connections on ln and serves each in its own
// goroutine, on a thread pinned to cpu.
func acceptLoop(ln, cpu int, fail chan<- error, serve func(fd int)) {
	if err := pin(cpu); err != nil {
		fail <- err
		return
	}
	for {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			fail <- fmt.Errorf("accept: %w", err)
			return
		}
		go func() {
			defer unix.Close(fd)
			if err := pin(cpu); err != nil {
				fail <- err
				return
			}
			serve(fd)
		}()
	}
}

// clientState keeps the client's long-lived sockets between runs.
type clientState struct {
	addr                   netip.Addr
	p                      ports
	udp, rr, stream, bcast int
	buf1, udpBuf, big      []byte
	loops                  map[string]func() error // the system-call loops, set up on first use
}

func client(addr netip.Addr, p ports, cpu int) error {
	if err := pin(cpu); err != nil {
		return err
	}
	c := &clientState{addr: addr, p: p, udp: -1, rr: -1, stream: -1, bcast: -1,
		buf1: make([]byte, 1), udpBuf: make([]byte, udpPayload), big: make([]byte, streamChunk), loops: map[string]func() error{}}
	// handle runs on this goroutine, the pinned thread.
	return serveLines(nil, nil, func(cmd string) (any, error) {
		f := strings.Fields(cmd)
		if len(f) != 2 {
			return nil, fmt.Errorf("command %q: want WORKLOAD NANOSECONDS", cmd)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || ns <= 0 {
			return nil, fmt.Errorf("command %q: bad duration", cmd)
		}
		res, err := c.run(f[0], time.Duration(ns))
		if err != nil {
			res.Error = err.Error()
		}
		return res, nil
	})
}

// dial connects a new socket of type typ to the server's port.
func (c *clientState) dial(typ, port int, linger bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if typ == unix.SOCK_STREAM {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if linger {
			// Abortive close: RST instead of FIN, so no TIME_WAIT
			// piles up and the ephemeral ports never run out.
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
	}
	// Without socket timeouts a blocking connect is restarted after a
	// signal; the engine bounds the whole run instead.
	if err := unix.Connect(fd, sockaddr(c.addr, port)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s:%d: %w", c.addr, port, err)
	}
	return fd, nil
}

// dialBroadcast connects a UDP socket with SO_BROADCAST to the broadcast
// address and the listeners' port. The outside host routes the containers'
// subnet broadcast like any address via the l3iso host, but a sender that
// knows it as a broadcast address needs SO_BROADCAST (else EACCES), so it
// is set, as a broadcasting application would.
func (c *clientState) dialBroadcast() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_BROADCAST: %w", err)
	}
	if err := unix.Connect(fd, sockaddr(c.addr, c.p.Bcast)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s:%d: %w", c.addr, c.p.Bcast, err)
	}
	return fd, nil
}

func (c *clientState) run(workload string, d time.Duration) (RunResult, error) {
	var res RunResult
	var err error
	start := time.Now()
	switch workload {
	case LoopBind, LoopConnect, LoopSendto, LoopDenied:
		if res.Ops, err = c.loop(workload, start, d); err != nil {
			return res, err
		}
	case UDPPPS:
		if c.udp < 0 {
			if c.udp, err = c.dial(unix.SOCK_DGRAM, c.p.UDP, false); err != nil {
				return res, err
			}
		}
		if res.Ops, err = c.blast(c.udp, start, d); err != nil {
			return res, err
		}
	case BcastFanout:
		if c.bcast < 0 {
			if c.bcast, err = c.dialBroadcast(); err != nil {
				return res, err
			}
		}
		if res.Ops, err = c.blast(c.bcast, start, d); err != nil {
			return res, err
		}
	case TCPRR:
		if c.rr < 0 {
			if c.rr, err = c.dial(unix.SOCK_STREAM, c.p.RR, false); err != nil {
				return res, err
			}
		}
		lat := make([]int64, 0, 1<<16)
		for {
			t0 := time.Now()
			if t0.Sub(start) >= d {
				break
			}
			if err := c.transact(c.rr); err != nil {
				unix.Close(c.rr)
				c.rr = -1
				return res, err
			}
			lat = append(lat, time.Since(t0).Nanoseconds())
		}
		res.Ops = uint64(len(lat))
		slices.Sort(lat)
		res.P50, res.P99, res.P999 = pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999)
	case TCPCRR:
		for time.Since(start) < d {
			fd, err := c.dial(unix.SOCK_STREAM, c.p.CRR, true)
			if err != nil {
				return res, err
			}
			err = c.transact(fd)
			unix.Close(fd)
			if err != nil {
				return res, err
			}
			res.Ops++
		}
	case TCPGbps:
		if c.stream < 0 {
			if c.stream, err = c.dial(unix.SOCK_STREAM, c.p.Stream, false); err != nil {
				return res, err
			}
		}
		for time.Since(start) < d {
			n, err := unix.Write(c.stream, c.big)
			if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
				return res, fmt.Errorf("stream write: %w", err)
			}
			if n > 0 {
				res.Ops += uint64(n)
			}
		}
	default:
		return res, fmt.Errorf("unknown workload %q", workload)
	}
	res.Ns = time.Since(start).Nanoseconds()
	return res, nil
}

// loop runs the system-call loop named workload until d has passed since
// start and returns how many iterations it made. It looks at the clock
// every loopCheckEvery[workload] iterations: a clock read costs little
// next to one iteration (4–30 µs here), and nothing next to a batch.
func (c *clientState) loop(workload string, start time.Time, d time.Duration) (uint64, error) {
	op, ok := c.loops[workload]
	if !ok {
		var err error
		switch workload {
		case LoopBind:
			op = bindOp(c.addr)
		case LoopConnect:
			op, err = connectOp(c.addr)
		case LoopSendto:
			op, err = sendtoOp(c.addr)
		case LoopDenied:
			op = deniedOp(c.addr)
		}
		if err != nil {
			return 0, err
		}
		c.loops[workload] = op
	}
	every := 1
	if workload == LoopSendto {
		every = udpCheckEvery
	}
	var n uint64
	for time.Since(start) < d {
		for range every {
			if err := op(); err != nil {
				return n, fmt.Errorf("%s, iteration %d: %w", workload, n, err)
			}
			n++
		}
	}
	return n, nil
}

// bindOp: socket(TCP) + bind(addr:0) + listen + close. In a container, the
// bind4 hook checks ownership (addr is its own); the kernel picks a port.
func bindOp(addr netip.Addr) func() error {
	sa := sockaddr(addr, 0)
	return func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind %s:0: %w", addr, err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		return unix.Close(fd)
	}
}

// deniedOp: socket(UDP) + bind(addr:0), which must be refused with
// EADDRNOTAVAIL (addr belongs to another container), + close: a denial
// and, unless the rate limit stops it, an l3_events record per iteration.
func deniedOp(addr netip.Addr) func() error {
	sa := sockaddr(addr, 0)
	return func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		err = unix.Bind(fd, sa)
		unix.Close(fd)
		if !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("bind %s:0: %v, want EADDRNOTAVAIL", addr, err)
		}
		return nil
	}
}

// connectOp: socket(TCP) + SO_LINGER{1,0} + connect(addr:port) + close,
// against a listener on addr:port in the same process (same cgroup, same
// netns). The client socket is unbound: in a container the connect4 hook
// picks its source (bpf_bind). Closing with a zero linger sends RST, so no
// TIME_WAIT piles up and the ephemeral ports never run out.
//
// The whole loop is one thread: on loopback the handshake runs in the
// connecting thread's softirq, and every acceptBatch connects the same
// thread accepts (and closes) what is queued on the non-blocking listener.
// No second thread means no dependence on whether the other vCPU is free.
func connectOp(addr netip.Addr) (func() error, error) {
	const acceptBatch = 256 // well below the listen backlog
	ln, port, err := listenOn(addr, unix.SOCK_STREAM, unix.SOCK_NONBLOCK)
	if err != nil {
		return nil, err
	}
	drain := func() error {
		for {
			fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
			switch {
			case err == nil:
				unix.Close(fd)
			case errors.Is(err, unix.EAGAIN):
				return nil
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			default:
				return fmt.Errorf("accept: %w", err)
			}
		}
	}
	dst := sockaddr(addr, port)
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	n := 0
	return func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger); err != nil {
			unix.Close(fd)
			return fmt.Errorf("SO_LINGER: %w", err)
		}
		if err := unix.Connect(fd, dst); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connect %s:%d: %w", addr, port, err)
		}
		if err := unix.Close(fd); err != nil {
			return err
		}
		if n++; n%acceptBatch == 0 {
			return drain()
		}
		return nil
	}, nil
}

// sendtoOp: sendto of 64 bytes from one unconnected, unbound UDP socket to
// a UDP socket on addr:port in the same process. In a container the
// sendmsg4 hook fills in the source on every call. The receiver never
// reads: once its buffer is full, each datagram is dropped at the
// receiving socket — after the cgroup ingress hook has run — so the loop
// measures the whole send and receive path (on loopback it all runs in
// the sending thread) minus the copy to user space and the wake-up, the
// same way in every configuration.
func sendtoOp(addr netip.Addr) (func() error, error) {
	_, port, err := listenOn(addr, unix.SOCK_DGRAM, 0) // stays open, unread, until the worker exits
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	dst := sockaddr(addr, port)
	buf := make([]byte, udpPayload)
	return func() error {
		if err := unix.Sendto(fd, buf, 0, dst); err != nil {
			return fmt.Errorf("sendto %s:%d: %w", addr, port, err)
		}
		return nil
	}, nil
}

// blast writes 64-byte datagrams on the connected UDP socket fd until d
// has passed since start and returns how many the kernel took.
func (c *clientState) blast(fd int, start time.Time, d time.Duration) (uint64, error) {
	var n uint64
	for time.Since(start) < d {
		for range udpCheckEvery {
			if _, err := unix.Write(fd, c.udpBuf); err == nil {
				n++
			} else if !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) {
				return n, fmt.Errorf("udp send: %w", err)
			}
		}
	}
	return n, nil
}

// transact writes one byte and reads one back.
func (c *clientState) transact(fd int) error {
	if _, err := retry(func() (int, error) { return unix.Write(fd, c.buf1) }); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	n, err := retry(func() (int, error) { return unix.Read(fd, c.buf1) })
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if n != 1 {
		return errors.New("read response: connection closed")
	}
	return nil
}

// pct is the q-quantile of sorted (nearest rank).
func pct(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
