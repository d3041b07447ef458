package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/pkg/control"
	"github.com/l3iso/l3iso/pkg/policy"
)

// The benchmarks re-execute the test binary as a child that is born in the
// cgroup under test (clone3 with CLONE_INTO_CGROUP) and runs in the network
// namespace under test (nsenter --net). $L3ISO_BENCH_CHILD says what it does.
//
// A socket workload child (bind, connect, sendto) sets its sockets up once,
// then serves batches: for each line "N" on stdin it runs the workload N
// times on the clock and prints one JSON loopResult line on stdout, until
// stdin closes. Keeping one child per configuration alive lets the parent
// alternate configurations every ~0.1 s, which pairs them far more tightly
// than one process per measurement when the machine's load drifts.
//
// The add child runs once and prints one JSON addResult.
const (
	envChild = "L3ISO_BENCH_CHILD" // workload: bind, connect, sendto, add
	envAddr  = "L3ISO_BENCH_ADDR"  // IPv4 address to bind, listen on, send to
	envBPFFS = "L3ISO_BENCH_BPFFS" // add: the installation's --bpffs
	envNames = "L3ISO_BENCH_NAMES" // add: JSON list of {name, addr}
)

// loopResult is what a socket workload child prints per batch.
type loopResult struct {
	NsPerOp float64 `json:"ns_per_op"`
	Iters   int     `json:"iters"`
}

// addResult is what the add child prints.
type addResult struct {
	OpenNs int64   `json:"open_ns"` // control.Open (lock, read maps, reconcile)
	AddNs  []int64 `json:"add_ns"`  // each control.Add
}

// addSpec is one container the add child creates.
type addSpec struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Loopback string `json:"loopback,omitempty"` // "" = the default (isolated)
}

// childMain runs the child named by $L3ISO_BENCH_CHILD and returns the
// process exit status.
func childMain(kind string) int {
	var err error
	if kind == "add" {
		var res addResult
		if res, err = childAdd(); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(res)
		}
	} else {
		err = serveWorkload(kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench child %s: %v\n", kind, err)
		return 1
	}
	return 0
}

// serveWorkload sets workload kind up and runs the batches asked for on stdin.
func serveWorkload(kind string) error {
	addr, err := netip.ParseAddr(os.Getenv(envAddr))
	if err != nil || !addr.Is4() {
		return fmt.Errorf("$%s=%q: want an IPv4 address", envAddr, os.Getenv(envAddr))
	}
	var op func() error
	switch kind {
	case "bind":
		op = bindOp(addr)
	case "connect":
		op, err = connectOp(addr)
	case "sendto":
		op, err = sendtoOp(addr)
	default:
		return fmt.Errorf("unknown workload %q", kind)
	}
	if err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(in.Text()))
		if err != nil || n <= 0 {
			return fmt.Errorf("batch %q: want a positive number of iterations", in.Text())
		}
		ns, err := timeLoop(op, n)
		if err != nil {
			return err
		}
		if err := out.Encode(loopResult{NsPerOp: ns, Iters: n}); err != nil {
			return err
		}
	}
	return in.Err()
}

// timeLoop runs op iters times and returns the mean time per call in
// nanoseconds.
func timeLoop(op func() error, iters int) (float64, error) {
	start := time.Now()
	for i := 0; i < iters; i++ {
		if err := op(); err != nil {
			return 0, fmt.Errorf("iteration %d: %w", i, err)
		}
	}
	return float64(time.Since(start).Nanoseconds()) / float64(iters), nil
}

// bindOp: socket(TCP) + bind(addr:0) + listen + close. In a container, the
// bind4 hook checks ownership (addr is its own); the kernel picks a port.
func bindOp(addr netip.Addr) func() error {
	sa := &unix.SockaddrInet4{Addr: addr.As4()}
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

// listenOn binds a socket of type typ (with socket flags) to addr:0,
// listens if it is a stream socket, and returns it and its port.
func listenOn(addr netip.Addr, typ, flags int) (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|flags|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.As4()}); err != nil {
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
		return -1, 0, fmt.Errorf("getsockname: got %T, want an IPv4 address", sa)
	}
	return fd, in4.Port, nil
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
	dst := &unix.SockaddrInet4{Addr: addr.As4(), Port: port}
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
// measures the whole send and receive path minus the copy to user space
// and the wake-up, the same way in every configuration.
func sendtoOp(addr netip.Addr) (func() error, error) {
	rx, port, err := listenOn(addr, unix.SOCK_DGRAM, 0)
	if err != nil {
		return nil, err
	}
	_ = rx // stays open, unread, until the child exits
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	dst := &unix.SockaddrInet4{Addr: addr.As4(), Port: port}
	buf := make([]byte, 64)
	return func() error {
		if err := unix.Sendto(fd, buf, 0, dst); err != nil {
			return fmt.Errorf("sendto %s:%d: %w", addr, port, err)
		}
		return nil
	}, nil
}

// childAdd opens the installation at $L3ISO_BENCH_BPFFS and adds the
// containers of $L3ISO_BENCH_NAMES one by one with control.Add, timing each.
func childAdd() (addResult, error) {
	var specs []addSpec
	if err := json.Unmarshal([]byte(os.Getenv(envNames)), &specs); err != nil {
		return addResult{}, fmt.Errorf("$%s: %w", envNames, err)
	}
	var res addResult
	start := time.Now()
	c, err := control.Open(os.Getenv(envBPFFS), true)
	if err != nil {
		return res, err
	}
	defer c.Close()
	res.OpenNs = time.Since(start).Nanoseconds()
	for _, s := range specs {
		a, err := policy.ParseAddress(s.Addr)
		if err != nil {
			return res, err
		}
		spec := policy.Container{Name: s.Name, Addresses: []policy.Address{a}, Loopback: policy.Loopback(s.Loopback)}
		start := time.Now()
		if _, err := c.Add(spec); err != nil {
			return res, fmt.Errorf("add %s: %w", s.Name, err)
		}
		res.AddNs = append(res.AddNs, time.Since(start).Nanoseconds())
	}
	return res, nil
}
