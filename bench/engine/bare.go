package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/l3iso/l3iso/pkg/veth"
)

// barePeerProgram is the bare prototype of direct delivery that issue 3's
// figures come from: every IPv4 packet for dst goes into the namespace of
// the veth whose host side has index peer, with bpf_redirect_peer; anything
// else goes on to the next program (TCX_NEXT). No map, no counter, no
// policy: what is left is the kernel's own cost of the path.
func barePeerProgram(dst [4]byte, peer int) *ebpf.ProgramSpec {
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80 // offsetof(struct __sk_buff, data_end)
		tcxNext    = -1
	)
	// The packet's bytes loaded as little-endian words, as the CPU does.
	ipv4 := int32(binary.LittleEndian.Uint16([]byte{0x08, 0x00}))
	addr := int32(binary.LittleEndian.Uint32(dst[:]))
	return &ebpf.ProgramSpec{
		Name:    "l3b_bare_peer",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+20), // Ethernet and IPv4 headers
			asm.JGT.Reg(asm.R4, asm.R3, "next"),
			asm.LoadMem(asm.R4, asm.R2, 12, asm.Half), // EtherType
			asm.JNE.Imm32(asm.R4, ipv4, "next"),
			asm.LoadMem(asm.R4, asm.R2, 14+16, asm.Word), // IPv4 destination
			asm.JNE.Imm32(asm.R4, addr, "next"),
			asm.Mov.Imm(asm.R1, int32(peer)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirectPeer.Call(),
			asm.Return(),
			asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
			asm.Return(),
		},
	}
}

// barePeer attaches barePeerProgram at the head of the uplink's TCX
// ingress in the installation's host namespace, for its first container:
// the outside host's packets to that container then take the prototype's
// path, ahead of anything l3iso attached there (routed delivery has only
// its broadcast program on the uplink). The teardown detaches it.
func (in *install) barePeer() error {
	// Interface indexes are those of the attaching thread's namespace.
	return inNetns(in.host, func() error {
		up, err := net.InterfaceByName("up0")
		if err != nil {
			return fmt.Errorf("bare_peer: uplink: %w", err)
		}
		peer, err := net.InterfaceByName(veth.HostIfName(in.key(in.first)))
		if err != nil {
			return fmt.Errorf("bare_peer: veth of %s: %w", in.first, err)
		}
		prog, err := ebpf.NewProgram(barePeerProgram(in.containerAddr(1).As4(), peer.Index))
		if err != nil {
			return fmt.Errorf("bare_peer: load the program: %w", err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: up.Index, Program: prog, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		if err != nil {
			prog.Close()
			return fmt.Errorf("bare_peer: attach to up0: %w", err)
		}
		in.barePeerProg = prog
		in.w.onTeardown("bare_peer program", func() error {
			return errors.Join(l.Close(), prog.Close())
		})
		return nil
	})
}
