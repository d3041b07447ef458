package engine

// The load generator. The engine starts the l3iso binary itself (or any
// binary that calls MaybeWorker first thing) as a worker process, born in
// the cgroup of the configuration under test (CLONE_INTO_CGROUP) and
// running in its network namespace (nsenter --net). Two roles:
//
//	server  listens on ADDR: one UDP socket (counts datagrams), one TCP
//	        listener each for tcp_rr (echo), tcp_crr (accept, read 1 byte,
//	        write 1 byte, close) and tcp_gbps (counts bytes). It prints its
//	        ports as one JSON line, then answers every "snap" line on stdin
//	        with its counters and a monotonic timestamp.
//	client  for every line "WORKLOAD NANOSECONDS" on stdin runs that
//	        workload against the server for that long and prints one JSON
//	        result line.
//
// Both use raw system calls (golang.org/x/sys/unix) on blocking sockets
// from goroutines locked to OS threads pinned to one CPU, so what is timed
// is the kernel path, not Go's netpoller. Both exit when stdin closes.

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

	"golang.org/x/sys/unix"
)

// Environment of a worker process.
const (
	envWorker = "L3ISO_BENCH_WORKER" // server or client
	envAddr   = "L3ISO_BENCH_ADDR"   // server: address to listen on; client: the server's
	envPorts  = "L3ISO_BENCH_PORTS"  // client: the server's ports (JSON)
	envCPU    = "L3ISO_BENCH_CPU"    // CPU to pin the working threads to; -1: none
)

// Payload sizes.
const (
	udpPayload    = 64       // bytes per UDP datagram (udp_pps)
	streamChunk   = 64 << 10 // bytes per write (tcp_gbps)
	udpCheckEvery = 64       // datagrams between two looks at the clock
)

// ports are the server's listening ports.
type ports struct {
	UDP    int `json:"udp"`
	RR     int `json:"rr"`
	CRR    int `json:"crr"`
	Stream int `json:"stream"`
}

// snap is the server's answer to "snap".
type snap struct {
	UDP    uint64 `json:"udp"`    // datagrams received so far
	Stream uint64 `json:"stream"` // stream bytes received so far
	Ns     int64  `json:"ns"`     // monotonic nanoseconds
}

// runResult is the client's answer to a run.
type runResult struct {
	Ops   uint64 `json:"ops"` // datagrams sent, transactions, connections or bytes
	Ns    int64  `json:"ns"`  // how long the run took
	P50   int64  `json:"p50_ns,omitempty"`
	P99   int64  `json:"p99_ns,omitempty"`
	P999  int64  `json:"p999_ns,omitempty"`
	Error string `json:"error,omitempty"`
}

// MaybeWorker runs the benchmark worker and exits if this process was
// started as one ($L3ISO_BENCH_WORKER set); otherwise it returns at once.
// Call it first thing in main (cmd/l3iso does).
func MaybeWorker() {
	role := os.Getenv(envWorker)
	if role == "" {
		return
	}
	if err := worker(role); err != nil {
		fmt.Fprintf(os.Stderr, "l3iso bench worker %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func worker(role string) error {
	addr, err := netip.ParseAddr(os.Getenv(envAddr))
	if err != nil || !addr.Is4() {
		return fmt.Errorf("$%s=%q: want an IPv4 address", envAddr, os.Getenv(envAddr))
	}
	cpu, err := strconv.Atoi(os.Getenv(envCPU))
	if err != nil {
		cpu = -1
	}
	switch role {
	case "server":
		return server(addr, cpu)
	case "client":
		var p ports
		if err := json.Unmarshal([]byte(os.Getenv(envPorts)), &p); err != nil {
			return fmt.Errorf("$%s: %w", envPorts, err)
		}
		return client(addr, p, cpu)
	}
	return fmt.Errorf("unknown role %q", role)
}

// pin locks the calling goroutine to its OS thread and that thread to cpu.
func pin(cpu int) error {
	runtime.LockOSThread()
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

// listen binds a socket of type typ to addr:0 (and listens, for TCP) and
// returns it with its port.
func listen(addr netip.Addr, typ int) (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sockaddr(addr, 0)); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("bind %s:0: %w", addr, err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 1024); err != nil {
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
	if udpFD, p.UDP, err = listen(addr, unix.SOCK_DGRAM); err != nil {
		return err
	}
	if rrFD, p.RR, err = listen(addr, unix.SOCK_STREAM); err != nil {
		return err
	}
	if crrFD, p.CRR, err = listen(addr, unix.SOCK_STREAM); err != nil {
		return err
	}
	if streamFD, p.Stream, err = listen(addr, unix.SOCK_STREAM); err != nil {
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
			_, _, err := unix.Recvfrom(udpFD, buf, 0)
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

	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(p); err != nil {
		return err
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
			if strings.TrimSpace(l) != "snap" {
				return fmt.Errorf("unknown command %q", l)
			}
			if err := out.Encode(snap{UDP: udpPkts.Load(), Stream: streamBytes.Load(), Ns: time.Since(start).Nanoseconds()}); err != nil {
				return err
			}
		}
	}
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
	addr              netip.Addr
	p                 ports
	udp, rr, stream   int
	buf1, udpBuf, big []byte
}

func client(addr netip.Addr, p ports, cpu int) error {
	if err := pin(cpu); err != nil {
		return err
	}
	c := &clientState{addr: addr, p: p, udp: -1, rr: -1, stream: -1,
		buf1: make([]byte, 1), udpBuf: make([]byte, udpPayload), big: make([]byte, streamChunk)}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 2 {
			return fmt.Errorf("command %q: want WORKLOAD NANOSECONDS", in.Text())
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || ns <= 0 {
			return fmt.Errorf("command %q: bad duration", in.Text())
		}
		res, err := c.run(f[0], time.Duration(ns))
		if err != nil {
			res.Error = err.Error()
		}
		if err := out.Encode(res); err != nil {
			return err
		}
	}
	return in.Err()
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

func (c *clientState) run(workload string, d time.Duration) (runResult, error) {
	var res runResult
	var err error
	start := time.Now()
	switch workload {
	case UDPPPS:
		if c.udp < 0 {
			if c.udp, err = c.dial(unix.SOCK_DGRAM, c.p.UDP, false); err != nil {
				return res, err
			}
		}
		for time.Since(start) < d {
			for range udpCheckEvery {
				if _, err := unix.Write(c.udp, c.udpBuf); err == nil {
					res.Ops++
				} else if !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) {
					return res, fmt.Errorf("udp send: %w", err)
				}
			}
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
