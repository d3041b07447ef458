/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * steer.h — rule 3 on the packet path (docs/ARCHITECTURE.md, "Sharing a
 * port"): a new connection or a datagram for a shared container goes to
 * the socket l3_binds names for it; a shadow UDP socket's datagrams get
 * their application port back. Used by l3_tc_group and l3_tc_group_out.
 *
 * Include after skb.h and binds.h.
 */
#ifndef L3ISO_STEER_H
#define L3ISO_STEER_H

/*
 * Is there a UDP socket connected to exactly this datagram's source at its
 * destination? A wildcard socket holds a shadow, so its port is free in
 * the kernel's table, and a client socket of the same container may get
 * it when the kernel picks it a port (autobind: never below 1024 unless
 * ip_local_port_range says so). The datagram is that client's reply: the
 * kernel's to deliver. A connected socket's local address is its source
 * (connect sets it), so one of another container or the host never
 * matches a container's address. An unconnected client at the port
 * cannot be told from a host wildcard socket sharing it: the wildcard
 * socket gets those. t: the caller's, to spare the stack.
 */
static __always_inline int udp_flow_socket(struct __sk_buff *skb, const struct upkt *p,
					   struct bpf_sock_tuple *t)
{
	struct bpf_sock *sk;
	__u32 len = tuple_of(t, p, &p->dst, p->dport);
	__u32 diff4, diff6, dport;

	sk = bpf_sk_lookup_udp(skb, t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	/* every field read, whatever the family: the compiler would
	 * otherwise load through a pointer it selects, which the verifier
	 * refuses for a socket */
	dport = sk->dst_port;
	diff4 = sk->dst_ip4 ^ p->src.w[3];
	diff6 = (sk->dst_ip6[0] ^ p->src.w[0]) | (sk->dst_ip6[1] ^ p->src.w[1]) |
		(sk->dst_ip6[2] ^ p->src.w[2]) | (sk->dst_ip6[3] ^ p->src.w[3]);
	asm volatile("" ::"r"(diff4), "r"(diff6));
	bpf_sk_release(sk);
	if (dport != bpf_htons(p->sport))
		return 0;
	return addr_is_mapped(&p->src) ? !diff4 : !diff6;
}

/*
 * A connection (its SYN) or a datagram for an address of a shared
 * container — or its private loopback — goes to the socket of that
 * container that l3_binds names for (address, port): one bound to the
 * address, else a wildcard one. Its socket holds the wildcard on a shadow
 * port, or the address itself (binds.h); it is assigned to the packet
 * (bpf_sk_assign), before the kernel's own lookup, which would find the
 * host's wildcard socket on the port, or nothing. What finds no entry
 * goes on, and l3_sk_lookup refuses it. The first fragment of a datagram
 * (the only one with ports) enters the socket in l3_socks instead, where
 * l3_sk_lookup finds it for the reassembled datagram. O(1): an ownership
 * lookup, at most three l3_binds lookups, at most two socket lookups (the
 * second: a TCP SYN's 4-tuple, or a UDP datagram's to a port >= 1024,
 * udp_flow_socket).
 */
static __always_inline void steer(struct __sk_buff *skb, const struct upkt *p)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	struct l3_owner *o;
	struct l3_bval *v;
	const struct l3_addr *to;
	struct l3_bkey k;
	__u32 id, len;
	int ok, tw = 0;

	/* UDP: only a wildcard socket needs steering (a socket at the address
	 * the kernel finds itself); most ports have none. */
	if (p->proto == IPPROTO_UDP && !uwild_on(p->dport))
		return;
	if (addr_is_private_loop(&p->dst)) {
		if (addr_is_host(&p->dst))
			return;
		id = private_id(&p->dst);
	} else {
		o = owner_of(active_gen(), &p->dst, p->proto, p->dport);
		if (!o || (o->flags & L3_OF_NETNS))
			return; /* the host's, or a netns container's (its own stack) */
		id = o->id;
	}
	if (!id)
		return;
	v = binds_find(id, p->proto, p->dport, &p->dst, &k);
	if (!v || (p->proto == IPPROTO_UDP && k.kind == L3_BK_EXACT))
		return; /* nobody (l3_sk_lookup decides), or a UDP socket at the address itself */
	to = addr_is_any(&v->saddr) ? &p->dst : &v->saddr;
	if (addr_is_mapped(to) != addr_is_mapped(&p->dst))
		return; /* a socket at an address of the other family */
	own_lookup(1);
	if (p->proto == IPPROTO_UDP && p->dport >= 1024 && udp_flow_socket(skb, p, &t)) {
		own_lookup(-1);
		return;
	}
	if (p->proto == IPPROTO_TCP) {
		/*
		 * A SYN of a connection the kernel knows already (sent again
		 * while its request waits, a simultaneous open) is the
		 * kernel's. One for a 4-tuple in TIME_WAIT too: the kernel
		 * ends the TIME_WAIT and looks the listener up itself (an
		 * assigned listener would meet the TIME_WAIT socket in the
		 * hash and drop the SYN) — through l3_sk_lookup, which finds
		 * it in l3_socks, entered below.
		 */
		len = tuple_of(&t, p, &p->dst, p->dport);
		sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			__u32 st = sk->state;

			bpf_sk_release(sk);
			if (st == TCP_STATE_TIME_WAIT) {
				tw = 1;
			} else if (st != TCP_STATE_LISTEN) {
				own_lookup(-1);
				return;
			}
		}
		len = tuple_of(&t, p, to, v->sport);
		sk = bpf_sk_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	} else {
		len = tuple_of(&t, p, to, v->sport);
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	}
	own_lookup(-1);
	if (!sk)
		return;
	/* Only the socket the entry names: at its shadow port, or at its own
	 * address (never a host wildcard that shares the port with it). */
	if (addr_is_any(&v->saddr))
		ok = sk->src_port == v->sport;
	else if (addr_is_mapped(to))
		ok = sk->src_ip4 == to->w[3];
	else
		ok = sk->src_ip6[0] == to->w[0] && sk->src_ip6[1] == to->w[1] &&
		     sk->src_ip6[2] == to->w[2] && sk->src_ip6[3] == to->w[3];
	if (ok && (tw || p->frag))
		/*
		 * For l3_sk_lookup, which the kernel runs once the datagram is
		 * whole (an assignment to a fragment does not survive its
		 * reassembly), or for the listener a TIME_WAIT's SYN ends up
		 * looking for. Fails for MPTCP: l3_sk_lookup refuses, the
		 * client retries.
		 */
		bpf_map_update_elem(&l3_socks, &k, sk, BPF_ANY);
	else if (ok && !bpf_sk_assign(skb, sk, 0))
		count(id, L3_C_STEERED);
	bpf_sk_release(sk);
}

/*
 * A datagram of a container's UDP wildcard socket leaves from its shadow
 * port: give it the port the application bound (l3_sports), as the peer
 * expects. Done where its datagrams leave the host stack: lo's ingress
 * (to the host and containers) and the uplink's egress. Returns 1 when
 * it touched the packet (its pointers are stale then).
 */
static __always_inline int fix_sport(struct __sk_buff *skb, __u32 l4off, __u16 sport)
{
	struct l3_sport *sp = sport_of(IPPROTO_UDP, sport);
	__u16 old, new;

	if (!sp || !sp->id)
		return 0;
	old = bpf_htons(sport);
	new = bpf_htons(sp->aport);
	if (bpf_l4_csum_replace(skb, l4off + 6, old, new, BPF_F_MARK_MANGLED_0 | 2))
		return 1; /* may have written: the caller reads the packet again */
	bpf_skb_store_bytes(skb, l4off, &new, 2, 0);
	return 1;
}

#endif /* L3ISO_STEER_H */
