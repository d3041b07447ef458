//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc.c — the packet path (docs/DESIGN.md, "Two container modes on one host"; rules 3, 4, 6).
 * TCX programs, attached with bpf_links:
 *
 *   l3_tc_group     TCX ingress of lo and the uplink: a new connection or a
 *                   unicast datagram for a shared container goes to its socket
 *                   (steer.h, rule 3); a broadcast or multicast datagram is
 *                   copied to its listeners (fanout.h, rule 6); on lo, a shared
 *                   container's shadow UDP port gets its application port back.
 *   l3_tc_group_out TCX egress of the uplink: the same port fix, and the
 *                   listeners' copies of what the host sends out.
 *   l3_tc_uplink    before l3_tc_group on the uplink (delivery direct): a
 *                   packet for a netns container gets its L2 header and goes
 *                   straight into its namespace with bpf_redirect_peer — no
 *                   host IP input, no forwarding, no netfilter, no bridge.
 *   l3_tc_veth      on every host-side veth (delivery direct): what leaves a
 *                   container must carry a source it owns; a broadcast or
 *                   multicast from its own address is copied to the listeners
 *                   and out of the uplink (fanout.h, rule 6) before the host
 *                   stack gets it; to a sibling it goes
 *                   by bpf_redirect_peer, elsewhere by a FIB lookup and
 *                   bpf_redirect / bpf_redirect_neigh out of the egress
 *                   interface, to the host itself it passes.
 *   l3_tc_guard     on every host-side veth (delivery routed and bridge): only
 *                   the source check; the kernel routes or bridges the rest.
 *                   Both: what is for a shared container's socket goes to it
 *                   (steer.h), as from lo and the uplink (l3_tc_guard: when
 *                   routed).
 *   l3_tc_bridge    on the bridge's ingress (delivery bridge): the same for
 *                   what containers send to the host through the bridge.
 *   l3_tc_veth_out  on the egress of every host-side veth: what a shared
 *                   container's shadow UDP port sends gets its port back.
 *   l3_purge        attached nowhere: user space runs it to purge the registry.
 *
 * The host is not a hop: redirected packets keep their TTL / hop limit, as
 * they would on one L2 segment (and as Cilium's host routing does).
 *
 * Units: l3iso.h (the map layouts, shared with Go), maps.h (the maps, address
 * helpers), registry.h (quotas, the listener registry), binds.h (l3_binds),
 * events.h (denial records), skb.h (frame parsing), steer.h, fanout.h.
 * Lookups are hash, array or LPM lookups keyed by address, port or ifindex:
 * O(1) in containers; a fan-out is O(listeners).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "l3iso.h"
#include "maps.h"
#include "registry.h"
#include "binds.h"
#include "events.h"
#include "skb.h"
#include "fanout.h"
#include "steer.h"

char __license[] SEC("license") = "Dual BSD/GPL";

enum src_verdict {
	SRC_OWN,   /* a source the container owns */
	SRC_LINK,  /* link-scope traffic (no address yet, link-local): host only */
	SRC_SPOOF, /* anything else */
};

/*
 * Rule 4 at the packet level: a container emits only sources it owns. The
 * one exception is link-scope traffic from the unspecified or a link-local
 * source (IPv6 neighbour discovery, MLD, DHCP), which the host stack
 * consumes and never forwards.
 */
static __always_inline enum src_verdict check_source(__u32 id, const struct tpkt *p)
{
	struct l3_deliv *d = bpf_map_lookup_elem(&l3_delivs, &p->src);

	if (dst_link_scope(&p->dst)) {
		if ((d && d->id == id) || addr_is_any(&p->src) || addr_is_ll6(&p->src))
			return SRC_LINK;
		return SRC_SPOOF;
	}
	if (d && d->id == id)
		return SRC_OWN;
	return SRC_SPOOF;
}

/* Into a sibling container's namespace. */
static __always_inline int to_peer(struct __sk_buff *skb, struct l3_deliv *d)
{
	if (set_l2(skb, d->peer_mac, d->host_mac)) {
		/* Cannot happen after parse; never deliver a half-rewritten frame. */
		return TC_ACT_SHOT;
	}
	count(d->id, L3_C_TC_REDIRECT_IN);
	return bpf_redirect_peer(d->ifindex, 0);
}

/*
 * What a netns container sends to the host stack: a new connection or a
 * unicast datagram for a shared container goes to its socket, as from lo
 * and the uplink (steer.h) — its wildcard socket holds a shadow port,
 * where the kernel's own lookup would not find it. Never to a private
 * loopback: each is one shared container's own (and l3_ingress would drop
 * it). A function of its own: its stack is not on the path to group()'s.
 * Global, so the verifier checks it once, and the compiler cannot drop
 * its return value (a static one's, unused, may leave r0 a stack pointer,
 * which the verifier refuses).
 */
__noinline int steer_in(struct __sk_buff *skb)
{
	struct upkt p;
	__u32 off;
	__u8 proto = l4_of(skb, &off, &p);

	if (!proto || addr_is_private_loop(&p.dst))
		return 0;
	if (proto == IPPROTO_TCP && !tcp_syn(skb, off))
		return 0;
	steer(skb, &p);
	return 0;
}

/*
 * Out of the host, by the kernel's FIB: bpf_redirect with resolved MACs, or
 * bpf_redirect_neigh to let the neighbour subsystem resolve the next hop.
 * tot_len 0 makes the kernel check the MTU against the skb (GSO aware).
 */
static __always_inline int to_fib(struct __sk_buff *skb, __u32 id, const struct tpkt *p)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	int rc;

	fib.ifindex = skb->ifindex;
	fib.l4_protocol = p->proto;
	if (p->v6) {
		fib.family = AF_INET6;
		fib.flowinfo = p->flow;
		__builtin_memcpy(fib.ipv6_src, p->src.w, 16);
		__builtin_memcpy(fib.ipv6_dst, p->dst.w, 16);
	} else {
		fib.family = AF_INET;
		fib.tos = p->tos;
		fib.ipv4_src = p->src.w[3];
		fib.ipv4_dst = p->dst.w[3];
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		if (set_l2(skb, fib.dmac, fib.smac))
			return TC_ACT_SHOT; /* cannot happen after parse */
		count(id, L3_C_TC_REDIRECT_OUT);
		return bpf_redirect(fib.ifindex, 0);
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		nh.nh_family = fib.family;
		if (p->v6)
			__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
		else
			nh.ipv4_nh = fib.ipv4_dst;
		count(id, L3_C_TC_REDIRECT_OUT);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		/* A host address (or not unicast): the host stack's — a shared
		 * container's socket, if it is one of theirs. */
		steer_in(skb);
		count(id, L3_C_TC_TO_HOST);
		return TC_ACT_OK;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		/* Too big for the egress MTU: the stack sends the ICMP error. */
		count(id, L3_C_TC_TO_HOST);
		return TC_ACT_OK;
	default:
		/*
		 * Blackhole, unreachable or prohibited routes, no route at
		 * all, forwarding disabled on the veth: the host would not
		 * forward this either.
		 */
		count(id, L3_C_TC_DROP_NO_ROUTE);
		ev_tpkt(skb, id, L3_C_TC_DROP_NO_ROUTE, p);
		return TC_ACT_SHOT;
	}
}

/* Shared by l3_tc_veth (deliver) and l3_tc_guard (check only). */
static __always_inline int from_container(struct __sk_buff *skb, int deliver)
{
	__u32 ifindex = skb->ifindex;
	struct l3_port *port = bpf_map_lookup_elem(&l3_ports, &ifindex);
	struct l3_deliv *d;
	struct tpkt p;
	int rc;

	if (!port) {
		/*
		 * A veth l3iso attached to but has no container for (being
		 * created or deleted): fail closed.
		 */
		count(0, L3_C_TC_DROP_UNKNOWN_PORT);
		ev_tpkt(skb, 0, L3_C_TC_DROP_UNKNOWN_PORT, NULL);
		return TC_ACT_SHOT;
	}
	rc = parse(skb, &p);
	if (rc == P_OTHER)
		return TC_ACT_OK; /* ARP & co: the host stack (or bridge) answers */
	if (rc != P_IP) {
		/* An IP frame too short for its header: nothing may use it. */
		count(port->id, L3_C_TC_DROP_MALFORMED);
		ev_tpkt(skb, port->id, L3_C_TC_DROP_MALFORMED, NULL);
		return TC_ACT_SHOT;
	}
	switch (check_source(port->id, &p)) {
	case SRC_SPOOF:
		/* Rule 4: never a packet from a source it does not own. */
		count(port->id, L3_C_TC_DROP_SPOOF);
		ev_tpkt(skb, port->id, L3_C_TC_DROP_SPOOF, &p);
		return TC_ACT_SHOT;
	case SRC_LINK:
		if (deliver)
			/* Broadcast/multicast from its own address: copies to the
			 * listening containers (and the uplink); the host stack
			 * gets the original. */
			group(skb, G_NETNS);
		count(port->id, L3_C_TC_TO_HOST);
		return TC_ACT_OK;
	default:
		break;
	}
	if (!deliver) {
		/*
		 * Routed or bridged by the kernel. What is for the host itself
		 * (to this veth's MAC: routed) may be for a shared container's
		 * socket. Bridged frames (to the bridge's MAC) are steered at
		 * the bridge (l3_tc_bridge): an assignment made on its port
		 * does not reach the host's socket lookup.
		 */
		if (skb->pkt_type == PACKET_HOST)
			steer_in(skb);
		return TC_ACT_OK;
	}
	if (skb->pkt_type != PACKET_HOST) {
		/* Not sent to the gateway's MAC (L2 broadcast): the host's,
		 * and a directed broadcast's copies to its listeners. */
		group(skb, G_NETNS);
		count(port->id, L3_C_TC_TO_HOST);
		return TC_ACT_OK;
	}
	d = bpf_map_lookup_elem(&l3_delivs, &p.dst);
	if (d) {
		count(port->id, L3_C_TC_REDIRECT_OUT);
		return to_peer(skb, d);
	}
	return to_fib(skb, port->id, &p);
}

SEC("tcx/ingress")
int l3_tc_veth(struct __sk_buff *skb)
{
	return from_container(skb, 1);
}

SEC("tcx/ingress")
int l3_tc_guard(struct __sk_buff *skb)
{
	return from_container(skb, 0);
}

SEC("tcx/ingress")
int l3_tc_uplink(struct __sk_buff *skb)
{
	struct l3_deliv *d;
	struct tpkt p;

	/*
	 * First on the uplink's ingress: a container's unicast goes in at
	 * once, without l3_tc_group's look at it. Everything else goes on
	 * to l3_tc_group (broadcasts and multicasts, to be copied to the
	 * listeners) and then to the stack.
	 */
	if (skb->pkt_type != PACKET_HOST)
		return TCX_NEXT; /* broadcast, multicast, not for us */
	if (parse(skb, &p) != P_IP)
		return TCX_NEXT; /* ARP, NDP's L2 part, junk: the stack decides */
	d = bpf_map_lookup_elem(&l3_delivs, &p.dst);
	if (!d)
		return TCX_NEXT; /* the host's own traffic, a directed broadcast */
	if (bpf_map_lookup_elem(&l3_delivs, &p.src)) {
		/*
		 * From outside, claiming a local container's address: a
		 * container's packets to a sibling never cross the uplink.
		 */
		count(0, L3_C_TC_DROP_SPOOF);
		ev_tpkt(skb, 0, L3_C_TC_DROP_SPOOF, &p);
		return TC_ACT_SHOT;
	}
	return to_peer(skb, d);
}

/*
 * TCX ingress of lo and the uplink (shared containers): a datagram from a
 * container's shadow port gets its port back (lo: it was sent here); a
 * broadcast or multicast goes to its listeners (group); a new connection
 * or a unicast datagram for a container to its socket (steer).
 */
SEC("tcx/ingress")
int l3_tc_group(struct __sk_buff *skb)
{
	struct upkt p;
	__u32 off;
	__u8 proto;

	if (skb->pkt_type == PACKET_LOOPBACK)
		return TCX_NEXT; /* the kernel's local copy of a multicast/broadcast it sends */
	proto = l4_of(skb, &off, &p);
	if (!proto)
		return TCX_NEXT;
	if (proto == IPPROTO_TCP) {
		if (tcp_syn(skb, off))
			steer(skb, &p);
		return TCX_NEXT;
	}
	if (skb->ifindex == LOOPBACK_IFINDEX && fix_sport(skb, off, p.sport) && !l4_of(skb, &off, &p))
		return TCX_NEXT; /* read again after the write */
	if (addr_is_mcast(&p.dst) || (addr_is_mapped(&p.dst) && p.dst.w[3] == 0xffffffff))
		return group(skb, G_IN);
	if (addr_is_mapped(&p.dst)) {
		struct l3_cfg *cfg = config();

		if (cfg && maybe_bcast4(cfg, p.dst.w[3]) && is_bcast_for(cfg->gen, 0, &p.dst))
			return group(skb, G_IN);
	}
	steer(skb, &p);
	return TCX_NEXT;
}

/* On the uplink's egress: what a container's shadow port sends gets its
 * port back; broadcasts this host sends out of it go to the listeners. */
SEC("tcx/egress")
int l3_tc_group_out(struct __sk_buff *skb)
{
	struct upkt p;
	__u32 off;

	if (!skb->ingress_ifindex && l4_of(skb, &off, &p) == IPPROTO_UDP)
		fix_sport(skb, off, p.sport);
	return group(skb, G_HOST_OUT);
}

/*
 * TCX ingress of the bridge (delivery bridge): what a netns container sends
 * to the host itself, after the bridge, goes to a shared container's socket
 * if it is for one (steer_in).
 */
SEC("tcx/ingress")
int l3_tc_bridge(struct __sk_buff *skb)
{
	if (skb->pkt_type == PACKET_HOST)
		steer_in(skb);
	return TCX_NEXT;
}

/*
 * On the egress of every host-side veth: what a shared container's UDP
 * wildcard socket sends to a netns container leaves from its shadow port;
 * it gets its application port back, as on the uplink. Only what the host
 * stack sends (no ingress interface): not what it forwards or bridges.
 */
SEC("tcx/egress")
int l3_tc_veth_out(struct __sk_buff *skb)
{
	struct upkt p;
	__u32 off;

	if (!skb->ingress_ifindex && l4_of(skb, &off, &p) == IPPROTO_UDP)
		fix_sport(skb, off, p.sport);
	return TCX_NEXT;
}

/*
 * Not attached anywhere: user space runs it (BPF_PROG_TEST_RUN) to remove
 * a deleted container's leftover entries from l3_listen (sockets that
 * outlived their container). Under the registry's lock, like the socket
 * hooks (registry.h): a write from user space would replace the whole page
 * and could undo a registration another container's socket makes
 * meanwhile. Returns the number of entries removed.
 */
SEC("tc")
int l3_purge(struct __sk_buff *skb)
{
	struct l3_purge_req r;
	int removed;

#ifdef L3ISO_VARIANT
	asm volatile("r0 = 0" ::: "r0"); /* the upgrade test's "older binary" */
#endif
	if (bpf_skb_load_bytes(skb, 0, &r, sizeof(r)) || !r.id || r.id > L3_MAX_CONTAINERS)
		return 0;
	removed = reg_del(&r.key.group, r.key.port, r.id, 0, 1);
	removed += reg_del(&r.key.group, r.key.port, r.id, 1, 1);
	return removed;
}
