package sockprobe

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// envVar marks a re-executed test binary as a sockprobe agent.
const envVar = "L3ISO_SOCKPROBE"

// AgentEnv is the environment entry that makes the test binary an agent;
// Options.Wrap must pass it on when it cleans the environment.
const AgentEnv = envVar + "=1"

// Operation names on the wire.
const (
	opSocket        = "socket"
	opSetsockoptInt = "setsockopt-int"
	opSetsockoptRaw = "setsockopt-raw"
	opGetsockoptInt = "getsockopt-int"
	opSockInfo      = "sockinfo"
	opBind          = "bind"
	opListen        = "listen"
	opConnect       = "connect"
	opSockName      = "sockname"
	opPeerName      = "peername"
	opAccept        = "accept"
	opSendTo        = "sendto"
	opRecvFrom      = "recvfrom"
	opWrite         = "write"
	opRead          = "read"
	opJoinGroup     = "join-group"
	opLeaveGroup    = "leave-group"
	opSourceFilter  = "source-filter"
	opClose         = "close"
	opGoListen      = "go-listen"
	opGoAccept      = "go-accept"
	opGoDial        = "go-dial"
	opGoListenPkt   = "go-listen-packet"
	opGoSendTo      = "go-sendto"
	opCaps          = "caps"
	opClone3Cgroup  = "clone3-cgroup"
	opBPFObjGet     = "bpf-obj-get"
	opWriteFile     = "write-file"
	opKill          = "kill"
	opPtrace        = "ptrace"
	opPidfdOpen     = "pidfd-open"
	opSetsockopt32  = "setsockopt-32"
)

// request is one command line from the test process to the agent.
type request struct {
	Seq     uint64         `json:"seq"`
	Op      string         `json:"op"`
	ID      int            `json:"id,omitempty"`
	Family  int            `json:"family,omitempty"`
	Type    int            `json:"type,omitempty"`
	Proto   int            `json:"proto,omitempty"`
	Level   int            `json:"level,omitempty"`
	Opt     int            `json:"opt,omitempty"`
	Value   int            `json:"value,omitempty"`
	Addr    netip.AddrPort `json:"addr,omitzero"`
	Src     netip.Addr     `json:"src,omitzero"`
	Network string         `json:"network,omitempty"`
	Address string         `json:"address,omitempty"`
	Payload []byte         `json:"payload,omitempty"`
	Timeout time.Duration  `json:"timeout,omitempty"`
	Ifindex int            `json:"ifindex,omitempty"`
	Group   netip.Addr     `json:"group,omitzero"`
}

// reply is one answer line from the agent. Seq 0 is the agent's hello.
type reply struct {
	Seq uint64 `json:"seq"`
	// Fatal reports a misuse of the agent (unknown socket id, wrong
	// socket kind, unknown op): the test fails instead of seeing an error.
	Fatal   string         `json:"fatal,omitempty"`
	Err     *wireError     `json:"err,omitempty"`
	ID      int            `json:"id,omitempty"`
	Value   int            `json:"value,omitempty"`
	Values  []int          `json:"values,omitempty"`
	Local   netip.AddrPort `json:"local,omitzero"`
	Remote  netip.AddrPort `json:"remote,omitzero"`
	Dst     netip.Addr     `json:"dst,omitzero"`
	Payload []byte         `json:"payload,omitempty"`
	CapEff  uint64         `json:"cap_eff,omitempty"`
	CapBnd  uint64         `json:"cap_bnd,omitempty"`
	Pid     int            `json:"pid,omitempty"`
}

// wireError carries an error across the pipe without losing its errno.
type wireError struct {
	Errno int    `json:"errno,omitempty"`
	Msg   string `json:"msg"`
	EOF   bool   `json:"eof,omitempty"`
}

// Error is an error returned by the agent that is more than a bare errno,
// for example the *net.OpError of a Go dial. Msg is the agent-side message;
// errors.Is(err, unix.ECONNREFUSED) works through Unwrap when the agent-side
// error carried an errno. Timeouts of Go operations carry unix.ETIMEDOUT.
type Error struct {
	Msg   string
	Errno unix.Errno
}

// Error returns the message of the agent-side error.
func (e *Error) Error() string { return e.Msg }

// Unwrap returns the errno carried by the agent-side error, or nil.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// encodeErr turns an agent-side error into its wire form.
func encodeErr(err error) *wireError {
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return &wireError{Msg: err.Error(), EOF: true}
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return &wireError{Errno: int(errno), Msg: err.Error()}
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &wireError{Errno: int(unix.ETIMEDOUT), Msg: err.Error()}
	}
	return &wireError{Msg: err.Error()}
}

// decode rebuilds the error on the test side: a bare unix.Errno when the
// agent saw exactly a kernel error, io.EOF for end of stream, *Error
// otherwise.
func (w *wireError) decode() error {
	if w == nil {
		return nil
	}
	if w.EOF {
		return io.EOF
	}
	errno := unix.Errno(w.Errno)
	if errno != 0 && w.Msg == errno.Error() {
		return errno
	}
	return &Error{Msg: w.Msg, Errno: errno}
}
