/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * skb.h — reading and rewriting the frames the TC programs see (tc.c,
 * fanout.h, steer.h): the parsers, Ethernet rewrites, address classes.
 *
 * Include after maps.h and events.h.
 */
#ifndef L3ISO_SKB_H
#define L3ISO_SKB_H

#define TCX_NEXT (-1) /* TC_ACT_UNSPEC: on to the next TCX program (TC_ACT_OK ends the chain) */
#define LOOPBACK_IFINDEX 1 /* lo, in every network namespace */
#define AF_INET 2
#define AF_INET6 10

#define TCP_STATE_TIME_WAIT 6
#define TCP_STATE_LISTEN 10

/* What the parser extracted from an Ethernet frame. */
struct tpkt {
	struct l3_addr src, dst;
	__u8 v6;
	__u8 proto;  /* IPv4 protocol / IPv6 next header */
	__u8 tos;    /* IPv4 TOS */
	__u16 l4;    /* where the L4 header starts */
	__u32 flow;  /* IPv6 flow label word */
};

enum parse_result {
	P_IP = 0,	  /* IPv4 or IPv6, src/dst filled in */
	P_OTHER = 1,	  /* not IP (ARP, ...) */
	P_MALFORMED = -1, /* IP with a truncated header */
};

static __always_inline int parse(struct __sk_buff *skb, struct tpkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 need;

#ifdef L3ISO_VARIANT
	/* The upgrade test's "older binary" (as in config(), maps.h): programs
	 * that never read l3_config differ too. */
	asm volatile("r0 = 0" ::: "r0");
#endif

	if ((void *)(eth + 1) > end)
		return P_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		need = sizeof(struct ethhdr) + sizeof(struct iphdr);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		need = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
	else
		return P_OTHER;
	if (data + need > end) {
		/* Headers not in the linear part: pull them in, or give up. */
		if (skb->len < need || bpf_skb_pull_data(skb, need))
			return P_MALFORMED;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + need > end)
			return P_MALFORMED;
		eth = data;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return P_MALFORMED;
		addr_set4(&p->src, ip->saddr);
		addr_set4(&p->dst, ip->daddr);
		p->v6 = 0;
		p->proto = ip->protocol;
		p->tos = ip->tos;
		p->l4 = ETH_HLEN + (ip->ihl & 0xf) * 4;
		p->flow = 0;
		return P_IP;
	}
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) > end)
		return P_MALFORMED;
	__builtin_memcpy(p->src.w, &ip6->saddr, 16);
	__builtin_memcpy(p->dst.w, &ip6->daddr, 16);
	p->v6 = 1;
	p->proto = ip6->nexthdr;
	p->tos = 0;
	p->l4 = ETH_HLEN + sizeof(*ip6);
	p->flow = *(__u32 *)ip6 & bpf_htonl(0x0fffffff);
	return P_IP;
}

/*
 * The event of a packet dropped by a TC program, for container id (0:
 * none): its addresses and, for TCP and UDP in the frame's linear part,
 * its ports (read here, on the drop path only).
 */
static __always_inline void ev_tpkt(struct __sk_buff *skb, __u32 id, __u16 reason,
				    const struct tpkt *p)
{
	struct l3_event *e = ev_begin(id, L3_EV_TC, reason);
	__u16 ports[2] = {};

	if (!e)
		return;
	if (p) {
		if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
		    bpf_skb_load_bytes(skb, p->l4 & 0x1ff, ports, sizeof(ports)))
			ports[0] = ports[1] = 0;
		ev_addrs(e, p->proto, &p->src, bpf_ntohs(ports[0]), &p->dst, bpf_ntohs(ports[1]));
	}
	ev_submit(e);
}

/* Rewrite the Ethernet addresses. The header is linear: parse checked it. */
static __always_inline int set_l2(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return 0;
}

/*
 * set_l2 with a helper instead of a store through the packet pointer. A
 * program that stores through it gets a prologue from the verifier that
 * makes every cloned skb it sees writable — a copy of the headers of
 * every TCP segment, which TCP sends as clones — whether it writes or
 * not. l3_tc_group and l3_tc_group_out, on lo and the uplink, see all of
 * the host's traffic and rewrite only the frames they fan out: they use
 * this, and pay for a writable copy only then.
 */
static __always_inline int store_l2(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 l2[2 * ETH_ALEN];

	__builtin_memcpy(l2, dst, ETH_ALEN);
	__builtin_memcpy(l2 + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, l2, sizeof(l2), 0);
}

/* fe80::/10 */
static __always_inline int addr_is_ll6(const struct l3_addr *a)
{
	return !addr_is_mapped(a) && (bpf_ntohl(a->w[0]) & 0xffc00000) == 0xfe800000;
}

/*
 * Destinations the host never forwards: IPv4 limited broadcast and
 * multicast (no multicast routing); IPv6 multicast and fe80::/10. The host
 * stack handles them. (IPv4 169.254/16 is not among them: Linux would route
 * it, so it takes the FIB path like any unicast destination.)
 */
static __always_inline int dst_link_scope(const struct l3_addr *a)
{
	if (addr_is_mapped(a)) {
		__u32 v = bpf_ntohl(a->w[3]);

		return v == 0xffffffff || (v >> 28) == 0xe;
	}
	return (bpf_ntohl(a->w[0]) >> 24) == 0xff || addr_is_ll6(a);
}

/* A unicast TCP SYN or UDP datagram, as steer() needs it. */
struct upkt {
	struct l3_addr src, dst;
	__u16 sport, dport; /* host order */
	__u8 proto;
	__u8 frag; /* the first fragment of a datagram: the kernel reassembles it */
};

/* The tuple of a lookup from p's source to (to, port), by to's family. */
static __always_inline __u32 tuple_of(struct bpf_sock_tuple *t, const struct upkt *p,
				      const struct l3_addr *to, __u16 port)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (addr_is_mapped(to)) {
		t->ipv4.saddr = p->src.w[3];
		t->ipv4.sport = bpf_htons(p->sport);
		t->ipv4.daddr = to->w[3];
		t->ipv4.dport = bpf_htons(port);
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->src.w, 16);
	t->ipv6.sport = bpf_htons(p->sport);
	__builtin_memcpy(t->ipv6.daddr, to->w, 16);
	t->ipv6.dport = bpf_htons(port);
	return sizeof(t->ipv6);
}

/* IPv6's fragment header (RFC 8200, 4.5). */
struct frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset (8-octet units) << 3, M flag in bit 0 */
	__be32 id;
};

/*
 * The IPv6 extension headers before the transport header, from offset o
 * (the end of the fixed header) with next header nh: hop-by-hop,
 * destination options, routing, fragment (at most L3_EXTHDRS, within the
 * frame's first 256 bytes). Returns the transport header's offset << 8 |
 * its protocol, | 1 << 16 behind a fragment header (a first fragment);
 * 0 for a later fragment or a chain it does not follow. Out of line
 * (global: the verifier checks it once): most packets have no extension
 * header, and l4_of's path for them stays as short as it was.
 */
__noinline int ipv6_exthdrs(struct __sk_buff *skb, __u32 o, __u32 nh)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 frag = 0;

	if (o > 255)
		return 0;
#pragma unroll
	for (int i = 0; i < L3_EXTHDRS; i++) {
		__u8 *h = data + o;

		if (nh == NEXTHDR_FRAGMENT) {
			struct frag6 *fh = (void *)h;

			if ((void *)(fh + 1) > end || (fh->frag_off & bpf_htons(0xfff8)))
				return 0; /* a fragment after the first */
			nh = fh->nexthdr;
			o += sizeof(*fh);
			frag = 1;
		} else if (ext_hdr(nh)) {
			if ((void *)(h + 2) > end)
				return 0;
			nh = h[0];
			o += ((__u32)h[1] + 1) * 8;
		} else {
			break;
		}
		if (o > 255)
			return 0;
	}
	return frag << 16 | o << 8 | (nh & 0xff);
}

/* Where the L4 header starts, and its protocol (0: neither TCP nor UDP,
 * or a fragment after the first). IPv6 extension headers are walked
 * (ipv6_exthdrs). */
static __always_inline __u8 l4_of(struct __sk_buff *skb, __u32 *off, struct upkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u16 *ports;

#ifdef L3ISO_VARIANT
	asm volatile("r0 = 0" ::: "r0"); /* as in parse() */
#endif
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || (ip->frag_off & bpf_htons(0x1fff)))
			return 0;
		if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
			return 0;
		*off = ETH_HLEN + (ip->ihl & 0xf) * 4;
		addr_set4(&p->src, ip->saddr);
		addr_set4(&p->dst, ip->daddr);
		p->proto = ip->protocol;
		p->frag = (ip->frag_off & bpf_htons(0x2000)) != 0; /* IP_MF, at offset 0 */
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__u8 nh;

		if ((void *)(ip6 + 1) > end)
			return 0;
		nh = ip6->nexthdr;
		*off = ETH_HLEN + sizeof(*ip6);
		p->frag = 0;
		__builtin_memcpy(p->src.w, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.w, &ip6->daddr, 16);
		if (nh != IPPROTO_TCP && nh != IPPROTO_UDP) {
			int r = ipv6_exthdrs(skb, ETH_HLEN + sizeof(*ip6), nh);

			if (!r)
				return 0;
			nh = r & 0xff;
			*off = (r >> 8) & 0xff;
			p->frag = (r >> 16) & 1;
			/* the call may have moved the packet's data */
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
		}
		if (nh != IPPROTO_TCP && nh != IPPROTO_UDP)
			return 0;
		p->proto = nh;
	} else {
		return 0;
	}
	if (*off > 255)
		return 0;
	ports = data + *off;
	if ((void *)(ports + 2) > end)
		return 0;
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	return p->proto;
}

/* Is the TCP segment at off a SYN without ACK (a new connection)? */
static __always_inline int tcp_syn(struct __sk_buff *skb, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *flags = data + off + 13;

	if (off > 255 || (void *)(flags + 1) > end)
		return 0;
	return (*flags & 0x12) == 0x02;
}

#endif /* L3ISO_SKB_H */
