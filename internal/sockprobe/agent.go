// Package sockprobe lets privileged tests drive real sockets from processes
// that live inside a given cgroup v2 directory and, optionally, a given
// network namespace, and observe exact results: errno values and addresses
// in the form the kernel reports them.
//
// The workhorse is the Agent: the current test binary re-executed as a
// long-lived child (see MaybeServe and Start) that performs socket calls on
// command, one JSON line per command and reply over its stdin and stdout.
// Raw operations (Socket, Bind, Connect, SendTo, ...) map one-to-one to
// system calls; Go operations (GoListen, GoDial, ...) use package net
// exactly as an application would, which matters because Go listeners are
// dual-stack IPv6 and, since Go 1.24, MPTCP sockets.
//
// Addresses keep their exact form in both directions: an IPv4 netip.Addr
// becomes a sockaddr_in, any IPv6 address (v4-mapped included) a
// sockaddr_in6, and addresses read back from the kernel are not unmapped.
//
// The package also has the environment helpers such tests need:
// RequirePrivileged, NewNetns, NewCgroup, CgroupMount, Command and Python.
package sockprobe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startTimeout bounds how long Start waits for the agent to say hello.
const startTimeout = 10 * time.Second

// replySlack is added to an operation's own timeout to bound the wait for
// its reply; an agent that stays silent longer than that is broken.
const replySlack = 30 * time.Second

// defaultDialTimeout is used by GoDial when the caller passes no timeout.
const defaultDialTimeout = 3 * time.Second

// Options says where a process started by this package runs. The zero
// value runs it where the test process runs.
type Options struct {
	// CgroupDir is a cgroup v2 directory the process is born in
	// (clone3 with CLONE_INTO_CGROUP, so it never runs elsewhere).
	CgroupDir string
	// NetnsPath is a network namespace file (for example from NewNetns);
	// the process is started through nsenter --net=NetnsPath. The test
	// process itself never changes namespace.
	NetnsPath string
	// Wrap, when set, is a command line that starts the process: its
	// path and arguments are appended to it (for example `l3iso exec
	// NAME --env` AgentEnv `--`, which must pass AgentEnv on).
	Wrap []string
	// Binary is the agent's executable (Start only); default: this test
	// binary. A wrapper that runs the agent as another user needs a copy
	// that user may execute.
	Binary string
}

// Agent is a child process that performs socket operations on command.
// Socket results (including kernel errors) are returned as values; a
// broken agent or a misused socket id fails the test with t.Fatalf, so
// call Agent methods from the test goroutine.
type Agent struct {
	t      testing.TB
	opts   Options
	pid    int
	stderr *syncBuffer

	proc  *os.Process
	waitC chan struct{} // closed when the child has been reaped
	in    *os.File      // agent's stdin
	out   *os.File      // agent's stdout

	wmu sync.Mutex
	enc *json.Encoder

	mu      sync.Mutex
	seq     uint64
	pending map[uint64]chan *reply
	done    chan struct{} // closed when no more replies will come
	readErr error
}

// syncBuffer collects the agent's stderr for failure messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(b.buf.String())
	if len(s) > 4096 {
		s = "..." + s[len(s)-4096:]
	}
	return s
}

// Start re-executes the current test binary as an agent in the cgroup and
// network namespace given by o, and waits until it is ready. The test
// binary's TestMain must call MaybeServe first. t.Cleanup kills the agent
// and waits for it.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("sockprobe: find the test binary to re-execute: %v", err)
	}
	if o.Binary != "" {
		exe = o.Binary
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatalf("sockprobe: agent stdin pipe: %v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		t.Fatalf("sockprobe: agent stdout pipe: %v", err)
	}
	// -test.run=^$ keeps a binary whose TestMain lacks MaybeServe from
	// running the tests again; it then fails the hello below.
	cmd, closeFD, err := newCmd(context.Background(), o, exe, "-test.run=^$")
	if err != nil {
		t.Fatalf("sockprobe: start agent: %v", err)
	}
	a := &Agent{
		t:       t,
		opts:    o,
		stderr:  &syncBuffer{},
		waitC:   make(chan struct{}),
		in:      inW,
		out:     outR,
		enc:     json.NewEncoder(inW),
		pending: map[uint64]chan *reply{},
		done:    make(chan struct{}),
	}
	cmd.Env = append(os.Environ(), AgentEnv)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, a.stderr
	err = cmd.Start()
	closeFD()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		t.Fatalf("sockprobe: start agent %s (%s): %v", exe, o, err)
	}
	a.proc = cmd.Process
	go func() {
		cmd.Wait()
		close(a.waitC)
	}()
	t.Cleanup(a.stop)

	hello := make(chan *reply, 1)
	go a.readReplies(hello)
	select {
	case rep := <-hello:
		a.pid = rep.Pid
	case <-a.done:
		a.mu.Lock()
		err := a.readErr
		a.mu.Unlock()
		hint := ""
		if !errors.Is(err, io.EOF) {
			// The child wrote something else than the protocol.
			hint = " (does TestMain call sockprobe.MaybeServe first?)"
		}
		exit := "still running"
		select {
		case <-a.waitC:
			exit = cmd.ProcessState.String()
		case <-time.After(time.Second):
		}
		t.Fatalf("sockprobe: agent (%s) did not start: %v%s; agent %s; agent stderr: %s", o, err, hint, exit, a.stderr)
	case <-time.After(startTimeout):
		t.Fatalf("sockprobe: agent (%s) sent no hello within %v; agent stderr: %s", o, startTimeout, a.stderr)
	}
	return a
}

// String describes the options for messages.
func (o Options) String() string {
	var parts []string
	if o.CgroupDir != "" {
		parts = append(parts, "cgroup "+o.CgroupDir)
	}
	if o.NetnsPath != "" {
		parts = append(parts, "netns "+o.NetnsPath)
	}
	if len(o.Wrap) > 0 {
		parts = append(parts, "through "+strings.Join(o.Wrap, " "))
	}
	if len(parts) == 0 {
		return "test's own cgroup and netns"
	}
	return strings.Join(parts, ", ")
}

func (a *Agent) readReplies(hello chan<- *reply) {
	defer close(a.done)
	dec := json.NewDecoder(a.out)
	first := true
	for {
		rep := new(reply)
		if err := dec.Decode(rep); err != nil {
			a.mu.Lock()
			a.readErr = fmt.Errorf("read agent reply: %w", err)
			a.mu.Unlock()
			return
		}
		if first {
			first = false
			if rep.Seq != 0 || rep.Pid == 0 {
				a.mu.Lock()
				a.readErr = fmt.Errorf("agent's first line is not a hello: %+v", rep)
				a.mu.Unlock()
				return
			}
			hello <- rep
			continue
		}
		a.mu.Lock()
		ch := a.pending[rep.Seq]
		delete(a.pending, rep.Seq)
		a.mu.Unlock()
		if ch != nil {
			ch <- rep
		}
	}
}

func (a *Agent) stop() {
	a.in.Close()
	a.proc.Kill()
	<-a.waitC
	<-a.done
	a.out.Close()
}

// call sends one command and waits for its reply.
func (a *Agent) call(req *request) *reply {
	a.t.Helper()
	ch := make(chan *reply, 1)
	a.mu.Lock()
	a.seq++
	req.Seq = a.seq
	a.pending[req.Seq] = ch
	a.mu.Unlock()

	a.wmu.Lock()
	err := a.enc.Encode(req)
	a.wmu.Unlock()
	if err != nil {
		a.t.Fatalf("sockprobe agent %d: send %s: %v; agent stderr: %s", a.pid, req.Op, err, a.stderr)
	}

	limit := time.NewTimer(max(req.Timeout, connectTimeout) + replySlack)
	defer limit.Stop()
	select {
	case rep := <-ch:
		return a.checked(req, rep)
	case <-a.done:
		select {
		case rep := <-ch:
			return a.checked(req, rep)
		default:
		}
		a.mu.Lock()
		err := a.readErr
		a.mu.Unlock()
		a.t.Fatalf("sockprobe agent %d: %s: agent gone: %v; agent stderr: %s", a.pid, req.Op, err, a.stderr)
	case <-limit.C:
		a.t.Fatalf("sockprobe agent %d: %s: no reply; agent stderr: %s", a.pid, req.Op, a.stderr)
	}
	return nil
}

func (a *Agent) checked(req *request, rep *reply) *reply {
	a.t.Helper()
	if rep.Fatal != "" {
		a.t.Fatalf("sockprobe agent %d: %s: %s", a.pid, req.Op, rep.Fatal)
	}
	return rep
}

// Pid returns the agent's process id.
func (a *Agent) Pid() int { return a.pid }

// Options returns the options the agent was started with.
func (a *Agent) Options() Options { return a.opts }

// Socket creates a socket (socket(2) with SOCK_NONBLOCK|SOCK_CLOEXEC added;
// blocking operations are emulated with poll) and returns its id in the
// agent. family is unix.AF_INET or unix.AF_INET6, typ unix.SOCK_STREAM or
// unix.SOCK_DGRAM, proto 0 or for example unix.IPPROTO_MPTCP. Datagram
// sockets get IP_PKTINFO (AF_INET) or IPV6_RECVPKTINFO (AF_INET6) so that
// RecvFrom reports destination addresses. The test fails if the socket
// cannot be created; use TrySocket to observe that error.
func (a *Agent) Socket(family, typ, proto int) int {
	a.t.Helper()
	id, err := a.TrySocket(family, typ, proto)
	if err != nil {
		a.t.Fatalf("sockprobe agent %d: socket(%d, %d, %d): %v", a.pid, family, typ, proto, err)
	}
	return id
}

// TrySocket is Socket returning the creation error instead of failing.
func (a *Agent) TrySocket(family, typ, proto int) (int, error) {
	a.t.Helper()
	rep := a.call(&request{Op: opSocket, Family: family, Type: typ, Proto: proto})
	return rep.ID, rep.Err.decode()
}

// SetsockoptInt sets an integer socket option on socket id.
func (a *Agent) SetsockoptInt(id, level, opt, value int) error {
	a.t.Helper()
	return a.call(&request{Op: opSetsockoptInt, ID: id, Level: level, Opt: opt, Value: value}).Err.decode()
}

// SetsockoptRaw sets a socket option whose value is optval's bytes
// (IPV6_DSTOPTS: an extension header) on socket id.
func (a *Agent) SetsockoptRaw(id, level, opt int, optval []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opSetsockoptRaw, ID: id, Level: level, Opt: opt, Payload: optval}).Err.decode()
}

// GetsockoptInt reads an integer socket option of socket id.
func (a *Agent) GetsockoptInt(id, level, opt int) (int, error) {
	a.t.Helper()
	rep := a.call(&request{Op: opGetsockoptInt, ID: id, Level: level, Opt: opt})
	return rep.Value, rep.Err.decode()
}

// SetV6Only sets IPV6_V6ONLY on an AF_INET6 socket.
func (a *Agent) SetV6Only(id int, on bool) error {
	a.t.Helper()
	return a.SetsockoptInt(id, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(on))
}

// SetReuseAddr sets SO_REUSEADDR.
func (a *Agent) SetReuseAddr(id int) error {
	a.t.Helper()
	return a.SetsockoptInt(id, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
}

// SetBroadcast sets or clears SO_BROADCAST, needed to send to a broadcast
// address.
func (a *Agent) SetBroadcast(id int, on bool) error {
	a.t.Helper()
	return a.SetsockoptInt(id, unix.SOL_SOCKET, unix.SO_BROADCAST, boolInt(on))
}

// SockInfo returns SO_DOMAIN, SO_TYPE and SO_PROTOCOL of any socket in the
// agent, for example to see whether a GoListen listener is MPTCP.
func (a *Agent) SockInfo(id int) (family, typ, proto int, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opSockInfo, ID: id})
	if err := rep.Err.decode(); err != nil {
		return 0, 0, 0, err
	}
	if len(rep.Values) != 3 {
		a.t.Fatalf("sockprobe agent %d: sockinfo: got %d values, want 3", a.pid, len(rep.Values))
	}
	return rep.Values[0], rep.Values[1], rep.Values[2], nil
}

// Bind binds socket id to ap. A kernel failure is returned as a bare
// unix.Errno.
func (a *Agent) Bind(id int, ap netip.AddrPort) error {
	a.t.Helper()
	return a.call(&request{Op: opBind, ID: id, Addr: ap}).Err.decode()
}

// Listen calls listen(2) with a backlog of 128.
func (a *Agent) Listen(id int) error {
	a.t.Helper()
	return a.call(&request{Op: opListen, ID: id}).Err.decode()
}

// Connect connects socket id to ap, waiting up to 3 s for a stream
// connection to complete; it returns unix.ETIMEDOUT when it does not.
func (a *Agent) Connect(id int, ap netip.AddrPort) error {
	a.t.Helper()
	return a.call(&request{Op: opConnect, ID: id, Addr: ap}).Err.decode()
}

// SockName returns getsockname(2) of any socket in the agent, in the exact
// form the kernel reports it.
func (a *Agent) SockName(id int) (netip.AddrPort, error) {
	a.t.Helper()
	rep := a.call(&request{Op: opSockName, ID: id})
	return rep.Local, rep.Err.decode()
}

// PeerName returns getpeername(2) of any socket in the agent, in the exact
// form the kernel reports it.
func (a *Agent) PeerName(id int) (netip.AddrPort, error) {
	a.t.Helper()
	rep := a.call(&request{Op: opPeerName, ID: id})
	return rep.Remote, rep.Err.decode()
}

// Accept waits up to timeout for a connection on listening socket id and
// returns the new socket's id and the peer address accept(2) reported. It
// returns unix.ETIMEDOUT when no connection came; a zero timeout only
// checks.
func (a *Agent) Accept(id int, timeout time.Duration) (newID int, peer netip.AddrPort, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opAccept, ID: id, Timeout: timeout})
	return rep.ID, rep.Remote, rep.Err.decode()
}

// SendTo sends payload to ap with sendto(2), or with send(2) on a
// connected socket when ap is the zero AddrPort. It works on Socket and
// GoListenPacket sockets.
func (a *Agent) SendTo(id int, ap netip.AddrPort, payload []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opSendTo, ID: id, Addr: ap, Payload: payload}).Err.decode()
}

// SendFrom is SendTo with an explicit source address, passed as an
// IP_PKTINFO (src is IPv4) or IPV6_PKTINFO (src is IPv6, v4-mapped
// included) control message. dst may be zero on a connected socket.
func (a *Agent) SendFrom(id int, src netip.Addr, dst netip.AddrPort, payload []byte) error {
	a.t.Helper()
	if !src.IsValid() {
		a.t.Fatalf("sockprobe: SendFrom: invalid source address")
	}
	return a.call(&request{Op: opSendTo, ID: id, Src: src, Addr: dst, Payload: payload}).Err.decode()
}

// RecvFrom waits up to timeout for one datagram on socket id and returns
// it with its source and its header destination address (from
// IP_PKTINFO/IPV6_PKTINFO; on a dual-stack socket an IPv4 destination shows
// v4-mapped). dst is the zero Addr when no packet info was delivered, as on
// GoListenPacket sockets unless the test enabled it. It returns
// unix.ETIMEDOUT when nothing arrived.
func (a *Agent) RecvFrom(id int, timeout time.Duration) (payload []byte, from netip.AddrPort, dst netip.Addr, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opRecvFrom, ID: id, Timeout: timeout})
	return rep.Payload, rep.Remote, rep.Dst, rep.Err.decode()
}

// Write writes all of b to a connected Socket or Accept socket.
func (a *Agent) Write(id int, b []byte) error {
	a.t.Helper()
	return a.call(&request{Op: opWrite, ID: id, Payload: b}).Err.decode()
}

// Read waits up to timeout for data on a Socket or Accept socket and
// returns what one read(2) gave (at most 64 KiB). It returns io.EOF at end
// of stream and unix.ETIMEDOUT when nothing arrived.
func (a *Agent) Read(id int, timeout time.Duration) ([]byte, error) {
	a.t.Helper()
	rep := a.call(&request{Op: opRead, ID: id, Timeout: timeout})
	return rep.Payload, rep.Err.decode()
}

// JoinGroup joins multicast group on interface ifindex (0: the kernel
// chooses): IP_ADD_MEMBERSHIP for an IPv4 group, IPV6_JOIN_GROUP for an
// IPv6 one.
func (a *Agent) JoinGroup(id int, group netip.Addr, ifindex int) error {
	a.t.Helper()
	return a.call(&request{Op: opJoinGroup, ID: id, Src: group, Ifindex: ifindex}).Err.decode()
}

// LeaveGroup leaves a group joined with JoinGroup (IP_DROP_MEMBERSHIP,
// IPV6_LEAVE_GROUP).
func (a *Agent) LeaveGroup(id int, group netip.Addr, ifindex int) error {
	a.t.Helper()
	return a.call(&request{Op: opLeaveGroup, ID: id, Src: group, Ifindex: ifindex}).Err.decode()
}

// SourceFilter changes socket id's source filter for a multicast group
// (RFC 3678) with option opt, source being the source it names:
//
//   - unix.IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP,
//     IP_BLOCK_SOURCE, IP_UNBLOCK_SOURCE: the IPv4 API (struct
//     ip_mreq_source, at IPPROTO_IP); IPv4 group and source only, the
//     interface named by its first IPv4 address (ifindex 0: the kernel
//     chooses);
//   - unix.MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP,
//     MCAST_BLOCK_SOURCE, MCAST_UNBLOCK_SOURCE: the protocol-independent
//     API (struct group_source_req), at IPPROTO_IP for an IPv4 group and
//     IPPROTO_IPV6 for an IPv6 one, on interface ifindex (0: the kernel
//     chooses).
//
// A kernel failure is returned as a bare unix.Errno.
func (a *Agent) SourceFilter(id, opt int, group, source netip.Addr, ifindex int) error {
	a.t.Helper()
	return a.call(&request{Op: opSourceFilter, ID: id, Opt: opt, Group: group, Src: source, Ifindex: ifindex}).Err.decode()
}

// Close closes any socket in the agent; for a GoListen listener also the
// connections it accepted.
func (a *Agent) Close(id int) error {
	a.t.Helper()
	return a.call(&request{Op: opClose, ID: id}).Err.decode()
}

// GoListen calls net.Listen(network, addr) exactly as an application
// would: GoListen("tcp", ":8080") gives a dual-stack IPv6 listener, MPTCP
// where the kernel has it. local is the listener's getsockname. The agent
// accepts connections in the background, echoes the first read (up to 64
// bytes) of each and keeps them open until Close(id); GoAccept reports them.
func (a *Agent) GoListen(network, addr string) (id int, local netip.AddrPort, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opGoListen, Network: network, Address: addr})
	return rep.ID, rep.Local, rep.Err.decode()
}

// GoAccept waits up to timeout for the next connection accepted on GoListen
// listener id and returns its peer address (getpeername of the accepted
// socket). It returns unix.ETIMEDOUT when none came.
func (a *Agent) GoAccept(id int, timeout time.Duration) (peer netip.AddrPort, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opGoAccept, ID: id, Timeout: timeout})
	return rep.Remote, rep.Err.decode()
}

// GoDial dials with net.Dialer{Timeout: timeout} (3 s when zero), writes
// "ping", reads the echo within timeout and closes. local and remote are
// getsockname and getpeername of the connection, reported even when the
// echo fails. Go errors arrive as *Error; errors.Is works with the errno
// they carry (unix.ETIMEDOUT for timeouts).
func (a *Agent) GoDial(network, addr string, timeout time.Duration) (local, remote netip.AddrPort, err error) {
	a.t.Helper()
	if timeout <= 0 {
		timeout = defaultDialTimeout
	}
	rep := a.call(&request{Op: opGoDial, Network: network, Address: addr, Timeout: timeout})
	return rep.Local, rep.Remote, rep.Err.decode()
}

// GoListenPacket calls net.ListenPacket(network, addr) as an application
// would. Use SendTo, RecvFrom, SockName, JoinGroup and Close on the id.
func (a *Agent) GoListenPacket(network, addr string) (id int, local netip.AddrPort, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opGoListenPkt, Network: network, Address: addr})
	return rep.ID, rep.Local, rep.Err.decode()
}

// GoSendTo sends one datagram the way a Go client would: net.Dial(network,
// addr), Write(payload), Close. local and remote are getsockname and
// getpeername of the dialled socket.
func (a *Agent) GoSendTo(network, addr string, payload []byte) (local, remote netip.AddrPort, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opGoSendTo, Network: network, Address: addr, Payload: payload})
	return rep.Local, rep.Remote, rep.Err.decode()
}

// Caps returns the agent's effective and bounding capability sets
// (CapEff and CapBnd of /proc/self/status), bit n being capability n.
func (a *Agent) Caps() (effective, bounding uint64, err error) {
	a.t.Helper()
	rep := a.call(&request{Op: opCaps})
	return rep.CapEff, rep.CapBnd, rep.Err.decode()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
