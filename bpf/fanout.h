/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fanout.h — rule 6 on the packet path: a UDP datagram to a broadcast
 * address or a multicast group is copied once per listener registered in
 * l3_listen (registry.h, filled by the socket hooks), and sent out of the
 * uplink where the segment must see it. docs/multicast.md has the whole
 * design.
 *
 * Include after skb.h and registry.h.
 */
#ifndef L3ISO_FANOUT_H
#define L3ISO_FANOUT_H


/* The Ethernet destination of a broadcast or of multicast group g. */
static __always_inline void group_mac(const struct l3_addr *g, __u8 *mac)
{
	if (!addr_is_mcast(g)) {
		__builtin_memset(mac, 0xff, ETH_ALEN);
	} else if (addr_is_mapped(g)) {
		__u32 v = bpf_ntohl(g->w[3]);

		mac[0] = 0x01, mac[1] = 0x00, mac[2] = 0x5e;
		mac[3] = (v >> 16) & 0x7f, mac[4] = v >> 8, mac[5] = v;
	} else {
		__u32 v = bpf_ntohl(g->w[3]);

		mac[0] = 0x33, mac[1] = 0x33;
		mac[2] = v >> 24, mac[3] = v >> 16, mac[4] = v >> 8, mac[5] = v;
	}
}

/* Is dst a broadcast container id may receive (id 0: some container's subnet broadcast)? */
static __always_inline int is_bcast_for(__u32 gen, __u32 id, const struct l3_addr *dst)
{
	struct l3_local_key k = {.gen = gen, .id = id, .addr = *dst};
	struct l3_local *l;

	if (dst->w[3] == 0xffffffff)
		return 1; /* limited broadcast: every listener of the segment */
	l = bpf_map_lookup_elem(&l3_locals, &k);
	return l && l->kind == L3_LOCAL_BCAST;
}

/*
 * l3_tc_group, TCX ingress on lo and the uplink (shared mode). A UDP
 * datagram to a broadcast address or a multicast group on port P is
 * cloned once per registered listener (l3_listen) back into the same
 * device's ingress, each copy tagged with its container in skb->mark; the
 * copy's second pass assigns it to that container's socket (its own
 * address:P) with bpf_sk_assign, which UDP receive honours before its
 * broadcast/multicast branch. The IP header is untouched: recvfrom shows
 * the sender, IP_PKTINFO the broadcast address or group. The original
 * continues to the host stack (host sockets, sockets bound to the
 * broadcast address or the group itself). Cost: O(listeners of P), plus
 * one read of each word of its l3_lsum (struct l3_lpages).
 */
/* The fan-out over the registry's pages (struct l3_lset). */
struct fan {
	struct __sk_buff *skb;
	struct l3_lpages *sum;	/* the pages of (group, port) that hold anybody */
	struct l3_lkey k;	/* (group or broadcast, port, page) */
	struct l3_addr dst;
	__u64 w;		/* the word of l3_lsum being visited */
	__u64 fam;		/* the slots of the datagram's family */
	__u32 base;		/* the page of bit 0 of w */
	__u32 gen, target, bcast, direct, sent;
};

/* One page: the fan and its slots holding the datagram's family. */
struct fan_page {
	struct fan *f;
	struct l3_lset *v;
	__u64 pw;
};

/* One copy for the listener in e. */
static __always_inline void fan_one(struct fan *f, const struct l3_lent *e)
{
	struct __sk_buff *skb = f->skb;
	struct l3_deliv *d;
	struct l3_addr own;
	__u32 id;

	id = e->id;
	own = e->addr;
	if (!id || id > L3_MAX_CONTAINERS)
		return;
	if (addr_is_mapped(&own) != addr_is_mapped(&f->dst))
		return;
	if (f->bcast ? !is_bcast_for(f->gen, id, &f->dst) : !mcast_allowed(f->gen, id, &f->dst))
		return;
	d = bpf_map_lookup_elem(&l3_delivs, &own);
	if (d) {
		/*
		 * A netns container (delivery direct): one copy into its
		 * namespace, as a broadcast/multicast frame; its own kernel
		 * hands it to every socket that wants it.
		 */
		if (!f->direct || d->ifindex == skb->ifindex)
			return;
		if (!bpf_clone_redirect(skb, d->ifindex, 0)) {
			count(d->id, L3_C_GROUP_COPY);
			f->sent = 1;
		}
		return;
	}
	skb->mark = L3_MARK_TAG | id;
	if (!bpf_clone_redirect(skb, f->target, BPF_F_INGRESS))
		f->sent = 1;
}

/*
 * bpf_loop callbacks (each verified once per call site), indexed by the
 * loop's counter: the verifier bounds it, where a cursor kept in the fan
 * would need a state per value. Each stops after the last set bit.
 */
static long fan_slot(__u32 i, void *arg)
{
	struct fan_page *p = arg;

	if (i >= L3_LPAGE_SLOTS || !(p->pw >> i))
		return 1;
	if ((p->pw >> i) & 1)
		fan_one(p->f, &p->v->e[i]);
	return 0;
}

static long fan_page(__u32 i, void *arg)
{
	struct fan *f = arg;
	struct fan_page p = {.f = f};

	if (i >= 64 || !(f->w >> i))
		return 1;
	if (!((f->w >> i) & 1))
		return 0;
	f->k.page = f->base + i;
	p.v = bpf_map_lookup_elem(&l3_listen, &f->k);
	if (!p.v)
		return 0;
	p.pw = p.v->used & f->fam;
	if (p.pw)
		bpf_loop(L3_LPAGE_SLOTS, fan_slot, &p, 0);
	return 0;
}

static long fan_word(__u32 i, void *arg)
{
	struct fan *f = arg;

	if (i >= L3_LPAGE_WORDS || !f->sum)
		return 1;
	asm volatile("" : "+r"(i)); /* keep the checked copy of i */
	f->w = f->sum->pages[i & (L3_LPAGE_WORDS - 1)];
	if (f->w) {
		f->base = i * 64;
		bpf_loop(64, fan_page, f, 0);
	}
	return 0;
}

/* The slots of one family: IPv4 in the even ones, IPv6 in the odd. */
#define L3_SLOTS4 0x5555555555555555ULL
#define L3_SLOTS6 0xaaaaaaaaaaaaaaaaULL

/*
 * lo is no member of the groups containers join, so IP input would drop a
 * multicast copy steered into lo. lo is a member of the all-hosts groups
 * (224.0.0.1, ff02::1): the copy, already assigned to its socket, takes
 * that destination (checksums fixed) and is delivered. Its socket sees the
 * sender as it is, and the all-hosts group as the destination in
 * IP_PKTINFO (README, limits). The frame carries an Ethernet header.
 */
static __always_inline int to_all_hosts(struct __sk_buff *skb, int v6)
{
	if (!v6) {
		__u32 old, new = bpf_htonl(0xe0000001);
		__u32 daddr = ETH_HLEN + offsetof(struct iphdr, daddr);

		if (bpf_skb_load_bytes(skb, daddr, &old, 4) ||
		    bpf_l4_csum_replace(skb, ETH_HLEN + sizeof(struct iphdr) + 6, old, new,
					BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 4))
			return -1;
		return bpf_skb_store_bytes(skb, daddr, &new, 4, 0);
	}
	struct l3_addr old, new = {.w = {bpf_htonl(0xff020000), 0, 0, bpf_htonl(1)}};
	__u32 daddr = ETH_HLEN + offsetof(struct ipv6hdr, daddr);
	__s64 diff;

	if (bpf_skb_load_bytes(skb, daddr, &old, 16))
		return -1;
	diff = bpf_csum_diff(old.w, 16, new.w, 16, 0);
	if (diff < 0 ||
	    bpf_l4_csum_replace(skb, ETH_HLEN + sizeof(struct ipv6hdr) + 6, 0, diff, BPF_F_PSEUDO_HDR))
		return -1;
	return bpf_skb_store_bytes(skb, daddr, &new, 16, 0);
}

enum group_from {
	G_IN = 0,	/* TCX ingress of lo or the uplink */
	G_HOST_OUT = 1, /* TCX egress of the uplink: the host sends */
	G_NETNS = 2,	/* TCX ingress of a netns container's host-side veth */
};

/* A UDP datagram to a broadcast address or a group, as group() needs it. */
struct gpkt {
	struct bpf_sock_tuple t; /* its source address and ports: the listeners' lookups */
	struct l3_addr dst;
	__u32 tuple_len;	 /* sizeof t.ipv4 or t.ipv6 */
	__u16 dport;		 /* host order */
	__u8 bcast;		 /* a broadcast (else a multicast group) */
};

struct udphdr_s {
	__u16 s, d;
};

/*
 * Is the frame a UDP datagram to 255.255.255.255, to a container subnet's
 * broadcast address, or to a multicast group? Most unicast datagrams are
 * told apart by the broadcast filter alone (l3_cfg.bcast_bloom).
 */
static __always_inline int group_parse(struct __sk_buff *skb, struct gpkt *g)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct udphdr_s *u;

	__builtin_memset(g, 0, sizeof(*g));
	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct l3_cfg *cfg;

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP ||
		    (ip->frag_off & bpf_htons(0x3fff)) || ip->ihl != 5)
			return -1;
		u = (void *)(ip + 1);
		if ((void *)(u + 1) > end)
			return -1;
		addr_set4(&g->dst, ip->daddr);
		if (!addr_is_mcast(&g->dst)) {
			if (ip->daddr != 0xffffffff) {
				cfg = config();
				if (!cfg || !maybe_bcast4(cfg, ip->daddr) ||
				    !is_bcast_for(cfg->gen, 0, &g->dst))
					return -1;
			}
			g->bcast = 1;
		}
		g->t.ipv4.saddr = ip->saddr;
		g->t.ipv4.sport = u->s;
		g->t.ipv4.dport = u->d;
		g->tuple_len = sizeof(g->t.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return -1;
		u = (void *)(ip6 + 1);
		if ((void *)(u + 1) > end)
			return -1;
		__builtin_memcpy(g->dst.w, &ip6->daddr, 16);
		if (!addr_is_mcast(&g->dst))
			return -1;
		__builtin_memcpy(g->t.ipv6.saddr, &ip6->saddr, 16);
		g->t.ipv6.sport = u->s;
		g->t.ipv6.dport = u->d;
		g->tuple_len = sizeof(g->t.ipv6);
	} else {
		return -1;
	}
	g->dport = bpf_ntohs(u->d);
	return 0;
}

static __always_inline int gpkt_v4(const struct gpkt *g)
{
	return g->tuple_len == sizeof(g->t.ipv4);
}

static __always_inline void gpkt_src(const struct gpkt *g, struct l3_addr *src)
{
	if (gpkt_v4(g))
		addr_set4(src, g->t.ipv4.saddr);
	else
		__builtin_memcpy(src->w, g->t.ipv6.saddr, 16);
}

/*
 * On the uplink's egress, only what this host itself sends is new: not
 * what l3iso sends out for a container (marked), nor what it forwards
 * (its copies were made where it came in), nor a netns container's (made
 * on its veth).
 */
static __always_inline int host_out_new(struct __sk_buff *skb, const struct gpkt *g)
{
	struct l3_addr src;

	if (skb->mark == L3_MARK_OUT) {
		/* a container's broadcast l3iso itself sends out (fan_out) */
		asm volatile("" : "+r"(skb));
		skb->mark = 0;
		return 0;
	}
	if (skb->ingress_ifindex)
		return 0;
	gpkt_src(g, &src);
	return !bpf_map_lookup_elem(&l3_delivs, &src);
}

/*
 * The second pass of a copy made for one container (its id tagged in
 * skb->mark): find its socket — at the address and port its registry entry
 * names (its shadow port, if it is one) — and assign it. An assigned copy
 * skips the kernel's per-socket source filter (UDP takes the assigned
 * socket before its multicast branch): the socket's own filter is applied
 * here, before a copy through lo loses its group to 224.0.0.1.
 */
static __always_inline int deliver_copy(struct __sk_buff *skb, struct gpkt *g, struct l3_lkey *k,
					__u32 mark)
{
	__u32 id = mark & ~L3_MARK_MASK;
	struct l3_addr own = {};
	struct bpf_sock *sk;
	__u16 oport = 0;
	int found = 0;
	long err;

	skb->mark = 0;
	if (id && id <= L3_MAX_CONTAINERS) {
		/* its entry's fixed place (struct l3_lset) */
		__u32 slot = lslot_of(id, !addr_is_mapped(&g->dst));
		struct l3_lset *pv;

		k->page = lpage_of(id);
		pv = bpf_map_lookup_elem(&l3_listen, k);
		if (pv && slot < L3_LPAGE_SLOTS && pv->e[slot].id == id) {
			own = pv->e[slot].addr;
			oport = pv->e[slot].port;
			found = addr_is_mapped(&own) == addr_is_mapped(&g->dst);
		}
	}
	if (!found) {
		count(id, L3_C_GROUP_LOST);
		return TC_ACT_SHOT;
	}
	if (gpkt_v4(g)) {
		g->t.ipv4.daddr = own.w[3];
		g->t.ipv4.dport = bpf_htons(oport);
	} else {
		__builtin_memcpy(g->t.ipv6.daddr, own.w, 16);
		g->t.ipv6.dport = bpf_htons(oport);
	}
	own_lookup(1);
	/* a constant size the verifier can see (not the stored one) */
	if (gpkt_v4(g))
		sk = bpf_sk_lookup_udp(skb, &g->t, sizeof(g->t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &g->t, sizeof(g->t.ipv6), BPF_F_CURRENT_NETNS, 0);
	own_lookup(-1);
	if (!sk) {
		count(id, L3_C_GROUP_LOST);
		return TC_ACT_SHOT;
	}
	if (!g->bcast) {
		struct l3_sk *s = bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
		struct l3_addr src;

		gpkt_src(g, &src);
		if (!s || !sk_source_ok(s, &g->dst, &src)) {
			bpf_sk_release(sk);
			count(id, L3_C_GROUP_FILTERED);
			return TC_ACT_SHOT; /* a filter's choice: no event, as the kernel's */
		}
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(id, L3_C_GROUP_LOST);
		return TC_ACT_SHOT;
	}
	if (skb->ifindex == LOOPBACK_IFINDEX && !g->bcast) {
		if (to_all_hosts(skb, !gpkt_v4(g))) {
			count(id, L3_C_GROUP_LOST);
			return TC_ACT_SHOT;
		}
		asm volatile("" : "+r"(skb));
		skb->mark = L3_MARK_COPY; /* for the socket backstop */
	}
	count(id, L3_C_GROUP_COPY);
	return TC_ACT_OK; /* assigned: straight to the stack */
}

/*
 * A limited broadcast or an IPv4 multicast a shared container sends leaves
 * through lo (the kernel routes them by their source, which is on no
 * interface): l3iso sends it out of the uplink too, as the segment would
 * see it from a host of its own.
 */
static __always_inline int sent_by_shared(const struct gpkt *g, __u32 gen)
{
	struct l3_owner_key ok = {.prefixlen = L3_OWNER_PLEN_FULL, .gen = gen};
	struct l3_owner *o;

	if (!gpkt_v4(g) || (g->bcast && g->dst.w[3] != 0xffffffff))
		return 0;
	addr_set4(&ok.addr, g->t.ipv4.saddr);
	o = bpf_map_lookup_elem(&l3_owners, &ok);
	return o && !(o->flags & L3_OF_NETNS);
}

/*
 * One copy per listener of (group, port) (l3_lsum's pages, bpf_loop), and
 * out of the uplink what the segment must see. Copies re-enter where the
 * datagram came in. What this host sends (uplink egress, a netns
 * container's veth) re-enters through lo, which accepts local sources
 * (accept_local; lo only ever receives what the host sent) — but IPv6
 * input on lo has no route for a multicast group, so IPv6 copies re-enter
 * through the uplink, a member of the groups its listeners joined (IPv6
 * takes local sources there; IPv4 would call them martians). The original
 * goes on as it came.
 */
static __always_inline int fan_out(struct __sk_buff *skb, int from, const struct gpkt *g,
				   struct l3_lpages *sum, const struct l3_lkey *k, __u32 gen,
				   __u32 mark, int out)
{
	__u8 gmac[ETH_ALEN], odst[ETH_ALEN], osrc[ETH_ALEN];
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct l3_cfg *cfg = config();
	__u32 target = skb->ifindex, sent = 0;
	int direct, saved = 0;

	if (from != G_IN)
		target = !gpkt_v4(g) && cfg && cfg->uplink_ifindex ? cfg->uplink_ifindex : LOOPBACK_IFINDEX;
	direct = cfg && cfg->delivery == L3_DELIVERY_DIRECT;
	group_mac(&g->dst, gmac);
	if ((void *)(eth + 1) <= end) {
		__builtin_memcpy(odst, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(osrc, eth->h_source, ETH_ALEN);
		saved = 1;
	}
	if (sum) {
		struct fan f = {
			.skb = skb, .sum = sum, .k = *k, .dst = g->dst, .gen = gen, .target = target,
			.bcast = g->bcast, .direct = direct,
			.fam = addr_is_mapped(&g->dst) ? L3_SLOTS4 : L3_SLOTS6,
		};

		/* Frames into netns containers carry the group's address. */
		if (direct && saved)
			store_l2(skb, gmac, osrc);
		bpf_loop(L3_LPAGE_WORDS, fan_word, &f, 0);
		sent = f.sent;
	}
	asm volatile("" : "+r"(skb));
	skb->mark = mark;
	if (from == G_NETNS && cfg && cfg->uplink_ifindex && (g->bcast ? g->dst.w[3] == 0xffffffff : 1)) {
		/* and out of the uplink, as from a host on its segment */
		if (saved && store_l2(skb, gmac, osrc) == 0)
			bpf_clone_redirect(skb, cfg->uplink_ifindex, 0);
	}
	if (out && cfg && cfg->uplink_ifindex && saved && store_l2(skb, gmac, cfg->uplink_mac) == 0) {
		/* Stores through skb itself: the verifier rejects them through
		 * a saved skb+offset pointer. */
		asm volatile("" : "+r"(skb));
		skb->mark = L3_MARK_OUT; /* l3_tc_group_out lets it pass */
		bpf_clone_redirect(skb, cfg->uplink_ifindex, 0);
		asm volatile("" : "+r"(skb));
		skb->mark = mark;
	}
	if (saved)
		store_l2(skb, odst, osrc);
	if (!sent)
		count(0, L3_C_GROUP_NO_LISTENER);
	return TCX_NEXT;
}

/*
 * The broadcast/multicast path of a datagram seen at from: the second pass
 * of a copy goes to its socket; anything else is fanned out to the
 * listeners of (group, port) — O(listeners), plus one read of each word
 * of its l3_lsum. Broadcasts reach every container that listens on the
 * port with a wildcard socket; a group only those that joined it.
 */
static __always_inline int group(struct __sk_buff *skb, int from)
{
	struct l3_lkey k = {};
	struct l3_lpages *sum;
	struct gpkt g;
	__u32 gen, mark;
	int out = 0;

	if (skb->pkt_type == PACKET_LOOPBACK)
		return TCX_NEXT; /* the kernel's local copy of a multicast/broadcast it sends */
	if (group_parse(skb, &g))
		return TCX_NEXT;
	if (from == G_HOST_OUT && !host_out_new(skb, &g))
		return TCX_NEXT;
	k.port = g.dport;
	if (g.bcast)
		bcast_key(&k.group);
	else
		k.group = g.dst;
	sum = bpf_map_lookup_elem(&l3_lsum, &k);
	gen = active_gen();
	asm volatile("" : "+r"(skb));
	mark = skb->mark;
	if (from == G_IN && (mark & L3_MARK_MASK) == L3_MARK_TAG)
		return deliver_copy(skb, &g, &k, mark);
	if (from == G_IN && skb->ifindex == LOOPBACK_IFINDEX)
		out = sent_by_shared(&g, gen);
	if (!sum && from != G_NETNS && !out) {
		count(0, L3_C_GROUP_NO_LISTENER);
		return TCX_NEXT;
	}
	return fan_out(skb, from, &g, sum, &k, gen, mark, out);
}

#endif /* L3ISO_FANOUT_H */
