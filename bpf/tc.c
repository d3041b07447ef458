//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc.c — the packet path of netns-mode containers (DESIGN.md, "Two
 * container modes"). TCX ingress programs, attached with bpf_links:
 *
 *   l3_tc_uplink  on the uplink (delivery direct): a packet for a container
 *                 address gets the container's L2 header and goes straight
 *                 into its namespace with bpf_redirect_peer — no host IP
 *                 input, no forwarding, no netfilter, no bridge.
 *   l3_tc_veth    on every host-side veth (delivery direct): what leaves a
 *                 container must carry a source it owns; to a sibling
 *                 container it goes by bpf_redirect_peer, elsewhere by a FIB
 *                 lookup and bpf_redirect / bpf_redirect_neigh out of the
 *                 egress interface (the uplink), to the host itself it passes.
 *   l3_tc_guard   on every host-side veth (delivery routed and bridge): only
 *                 the source check; the kernel routes or bridges the rest.
 *
 * The host is not a hop: redirected packets keep their TTL / hop limit, as
 * they would on one L2 segment (and as Cilium's host routing does).
 *
 * Lookups are hash lookups keyed by address or ifindex: O(1) in containers.
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

#define TCX_NEXT (-1) /* TC_ACT_UNSPEC: on to the next TCX program (TC_ACT_OK ends the chain) */
#define LOOPBACK_IFINDEX 1 /* lo, in every network namespace */
#define AF_INET 2
#define AF_INET6 10

char __license[] SEC("license") = "Dual BSD/GPL";

/* What the parser extracted from an Ethernet frame. */
struct tpkt {
	struct l3_addr src, dst;
	__u8 v6;
	__u8 proto;  /* IPv4 protocol / IPv6 next header */
	__u8 tos;    /* IPv4 TOS */
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
	p->flow = *(__u32 *)ip6 & bpf_htonl(0x0fffffff);
	return P_IP;
}

/* The event of a packet dropped by a TC program, for container id (0: none). */
static __always_inline void ev_tpkt(__u32 id, __u16 reason, const struct tpkt *p)
{
	struct l3_event *e = ev_begin(id, L3_EV_TC, reason);

	if (!e)
		return;
	if (p)
		ev_addrs(e, p->proto, &p->src, 0, &p->dst, 0);
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

static __always_inline int addr_is_unspec(const struct l3_addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0 ||
	       (addr_is_mapped(a) && a->w[3] == 0);
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
		if ((d && d->id == id) || addr_is_unspec(&p->src) || addr_is_ll6(&p->src))
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
		/* A host address (or not unicast): the host stack's. */
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
		ev_tpkt(id, L3_C_TC_DROP_NO_ROUTE, p);
		return TC_ACT_SHOT;
	}
}

/* ------------------------------------------ broadcast/multicast (rule 6) */

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

static __always_inline int group(struct __sk_buff *skb, int from)
{
	int egress = from != G_IN;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple t = {};
	struct l3_lkey k = {};
	struct l3_addr dst;
	struct l3_lpages *sum;
	__u32 tuple_len, gen, mark, target, sent = 0;
	__u8 gmac[ETH_ALEN], odst[ETH_ALEN], osrc[ETH_ALEN];
	struct l3_cfg *cfg;
	__u16 dport;
	int bcast = 0, direct, saved = 0, out = 0, i;

	if (skb->pkt_type == PACKET_LOOPBACK)
		return TCX_NEXT; /* the kernel's local copy of a multicast/broadcast it sends */
	if ((void *)(eth + 1) > end)
		return TCX_NEXT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct udphdr_s { __u16 s, d; } *u;

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP ||
		    (ip->frag_off & bpf_htons(0x3fff)) || ip->ihl != 5)
			return TCX_NEXT;
		u = (void *)(ip + 1);
		if ((void *)(u + 1) > end)
			return TCX_NEXT;
		addr_set4(&dst, ip->daddr);
		if (!addr_is_mcast(&dst)) {
			/* 255.255.255.255, or a container subnet's broadcast: most
			 * unicast datagrams are told apart by the filter alone */
			if (ip->daddr != 0xffffffff) {
				cfg = config();
				if (!cfg || !maybe_bcast4(cfg, ip->daddr) ||
				    !is_bcast_for(cfg->gen, 0, &dst))
					return TCX_NEXT;
			}
			bcast = 1;
		}
		t.ipv4.saddr = ip->saddr;
		t.ipv4.sport = u->s;
		t.ipv4.dport = u->d;
		tuple_len = sizeof(t.ipv4);
		dport = bpf_ntohs(u->d);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct udphdr_s { __u16 s, d; } *u;

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return TCX_NEXT;
		u = (void *)(ip6 + 1);
		if ((void *)(u + 1) > end)
			return TCX_NEXT;
		__builtin_memcpy(dst.w, &ip6->daddr, 16);
		if (!addr_is_mcast(&dst))
			return TCX_NEXT;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		t.ipv6.sport = u->s;
		t.ipv6.dport = u->d;
		tuple_len = sizeof(t.ipv6);
		dport = bpf_ntohs(u->d);
	} else {
		return TCX_NEXT;
	}
	if (from == G_HOST_OUT) {
		struct l3_addr src;

		if (skb->mark == L3_MARK_OUT) {
			/* a container's broadcast l3iso itself sends out (below) */
			asm volatile("" : "+r"(skb));
			skb->mark = 0;
			return TCX_NEXT;
		}
		if (skb->ingress_ifindex)
			/* Received, then forwarded (ip_forward on): its copies were
			 * made where it came in. Only what this host sends is new. */
			return TCX_NEXT;

		if (tuple_len == sizeof(t.ipv4))
			addr_set4(&src, t.ipv4.saddr);
		else
			__builtin_memcpy(src.w, t.ipv6.saddr, 16);
		if (bpf_map_lookup_elem(&l3_delivs, &src))
			return TCX_NEXT; /* a netns container's: fanned out on its veth */
	}
	k.port = dport;
	if (bcast)
		bcast_key(&k.group);
	else
		k.group = dst;
	sum = bpf_map_lookup_elem(&l3_lsum, &k);
	gen = active_gen();
	asm volatile("" : "+r"(skb));
	mark = skb->mark;

	if (!egress && (mark & L3_MARK_MASK) == L3_MARK_TAG) {
		/* A copy for one container: find its socket, assign it. */
		__u32 id = mark & ~L3_MARK_MASK;
		struct bpf_sock *sk;
		struct l3_addr own = {};
		__u16 oport = 0;
		int found = 0;

		skb->mark = 0;
		if (id && id <= L3_MAX_CONTAINERS) {
			/* its entry's fixed place (struct l3_lset) */
			__u32 slot = lslot_of(id, !addr_is_mapped(&dst));
			struct l3_lset *pv;

			k.page = lpage_of(id);
			pv = bpf_map_lookup_elem(&l3_listen, &k);
			if (pv && slot < L3_LPAGE_SLOTS && pv->e[slot].id == id) {
				own = pv->e[slot].addr;
				oport = pv->e[slot].port;
				found = addr_is_mapped(&own) == addr_is_mapped(&dst);
			}
		}
		if (!found) {
			count(id, L3_C_GROUP_LOST);
			return TC_ACT_SHOT;
		}
		/* its socket holds oport (its shadow port, if it is one) */
		if (tuple_len == sizeof(t.ipv4)) {
			t.ipv4.daddr = own.w[3];
			t.ipv4.dport = bpf_htons(oport);
		} else {
			__builtin_memcpy(t.ipv6.daddr, own.w, 16);
			t.ipv6.dport = bpf_htons(oport);
		}
		own_lookup(1);
		sk = bpf_sk_lookup_udp(skb, &t, tuple_len, BPF_F_CURRENT_NETNS, 0);
		own_lookup(-1);
		if (!sk) {
			count(id, L3_C_GROUP_LOST);
			return TC_ACT_SHOT;
		}
		if (!bcast) {
			/*
			 * An assigned copy skips the kernel's per-socket source
			 * filter (UDP takes the assigned socket before its
			 * multicast branch): apply the socket's own, before a
			 * copy through lo loses its group to 224.0.0.1.
			 */
			struct l3_sk *s = bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
			struct l3_addr src;

			if (tuple_len == sizeof(t.ipv4))
				addr_set4(&src, t.ipv4.saddr);
			else
				__builtin_memcpy(src.w, t.ipv6.saddr, 16);
			if (!s || !sk_source_ok(s, &dst, &src)) {
				bpf_sk_release(sk);
				count(id, L3_C_GROUP_FILTERED);
				return TC_ACT_SHOT; /* a filter's choice: no event, as the kernel's */
			}
		}
		i = bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
		if (i) {
			count(id, L3_C_GROUP_LOST);
			return TC_ACT_SHOT;
		}
		if (skb->ifindex == LOOPBACK_IFINDEX && !bcast) {
			if (to_all_hosts(skb, tuple_len != sizeof(t.ipv4))) {
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
	 * A limited broadcast or an IPv4 multicast a shared container sends
	 * leaves through lo (the kernel routes them by their source, which is
	 * on no interface): l3iso sends it out of the uplink too, as the
	 * segment would see it from a host of its own.
	 */
	if (from == G_IN && skb->ifindex == LOOPBACK_IFINDEX && tuple_len == sizeof(t.ipv4) &&
	    (bcast ? dst.w[3] == 0xffffffff : 1)) {
		struct l3_owner_key ok = {.prefixlen = L3_OWNER_PLEN_FULL, .gen = gen};
		struct l3_owner *o;

		addr_set4(&ok.addr, t.ipv4.saddr);
		o = bpf_map_lookup_elem(&l3_owners, &ok);
		out = o && !(o->flags & L3_OF_NETNS);
	}
	if (!sum && from != G_NETNS && !out) {
		count(0, L3_C_GROUP_NO_LISTENER);
		return TCX_NEXT;
	}
	/*
	 * Copies re-enter where the datagram came in. What this host sends
	 * (uplink egress, a netns container's veth) re-enters through lo,
	 * which accepts local sources (accept_local; lo only ever receives
	 * what the host sent) — but IPv6 input on lo has no route for a
	 * multicast group, so IPv6 copies re-enter through the uplink, a
	 * member of the groups its listeners joined (IPv6 takes local
	 * sources there; IPv4 would call them martians).
	 */
	cfg = config();
	target = skb->ifindex;
	if (egress)
		target = tuple_len != sizeof(t.ipv4) && cfg && cfg->uplink_ifindex ?
				 cfg->uplink_ifindex : LOOPBACK_IFINDEX;
	direct = cfg && cfg->delivery == L3_DELIVERY_DIRECT;
	group_mac(&dst, gmac);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) <= end) {
		__builtin_memcpy(odst, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(osrc, eth->h_source, ETH_ALEN);
		saved = 1;
	}
	if (sum) {
		struct fan f = {
			.skb = skb, .sum = sum, .k = k, .dst = dst, .gen = gen, .target = target,
			.bcast = bcast, .direct = direct,
			.fam = addr_is_mapped(&dst) ? L3_SLOTS4 : L3_SLOTS6,
		};

		/* Frames into netns containers carry the group's address. */
		if (direct && saved)
			set_l2(skb, gmac, osrc);
		bpf_loop(L3_LPAGE_WORDS, fan_word, &f, 0);
		sent = f.sent;
	}
	skb->mark = mark;
	if (from == G_NETNS && cfg && cfg->uplink_ifindex && (bcast ? dst.w[3] == 0xffffffff : 1)) {
		/* and out of the uplink, as from a host on its segment */
		if (saved && set_l2(skb, gmac, osrc) == 0)
			bpf_clone_redirect(skb, cfg->uplink_ifindex, 0);
	}
	if (out && cfg && cfg->uplink_ifindex && saved && set_l2(skb, gmac, cfg->uplink_mac) == 0) {
		/* Stores through skb itself: the verifier rejects them through
		 * a saved skb+offset pointer. */
		asm volatile("" : "+r"(skb));
		skb->mark = L3_MARK_OUT; /* l3_tc_group_out lets it pass */
		bpf_clone_redirect(skb, cfg->uplink_ifindex, 0);
		asm volatile("" : "+r"(skb));
		skb->mark = mark;
	}
	if (saved)
		set_l2(skb, odst, osrc); /* the original goes on as it came */
	if (!sent)
		count(0, L3_C_GROUP_NO_LISTENER);
	return TCX_NEXT;
}


/* ------------------------------------------------- steering (rule 3) */

#define TCP_STATE_TIME_WAIT 6
#define TCP_STATE_LISTEN 10

/* A unicast TCP SYN or UDP datagram, as steer() needs it. */
struct upkt {
	struct l3_addr src, dst;
	__u16 sport, dport; /* host order */
	__u8 proto;
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

/*
 * A connection (its SYN) or a datagram for an address of a shared
 * container — or its private loopback — goes to the socket of that
 * container that l3_binds names for (address, port): one bound to the
 * address, else a wildcard one. Its socket holds the wildcard on a shadow
 * port, or the address itself (binds.h); it is assigned to the packet
 * (bpf_sk_assign), before the kernel's own lookup, which would find the
 * host's wildcard socket on the port, or nothing. What finds no entry
 * goes on, and l3_sk_lookup refuses it. O(1): an ownership lookup, at
 * most three l3_binds lookups, one socket lookup.
 */
static __always_inline void steer(struct __sk_buff *skb, const struct upkt *p)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	struct l3_owner *o;
	struct l3_bval *v;
	struct l3_bkey k;
	struct l3_addr to;
	__u32 id, len;
	int ok, tw = 0;

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
	if (!v)
		return;
	to = addr_is_any(&v->saddr) ? p->dst : v->saddr;
	if (addr_is_mapped(&to) != addr_is_mapped(&p->dst))
		return; /* a socket at an address of the other family */
	own_lookup(1);
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
		len = tuple_of(&t, p, &to, v->sport);
		sk = bpf_sk_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	} else {
		len = tuple_of(&t, p, &to, v->sport);
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	}
	own_lookup(-1);
	if (!sk)
		return;
	/* Only the socket the entry names: at its shadow port, or at its own
	 * address (never a host wildcard that shares the port with it). */
	if (addr_is_any(&v->saddr))
		ok = sk->src_port == v->sport;
	else if (addr_is_mapped(&to))
		ok = sk->src_ip4 == to.w[3];
	else
		ok = sk->src_ip6[0] == to.w[0] && sk->src_ip6[1] == to.w[1] &&
		     sk->src_ip6[2] == to.w[2] && sk->src_ip6[3] == to.w[3];
	if (ok && tw)
		bpf_map_update_elem(&l3_socks, &k, sk, BPF_ANY); /* fails for MPTCP: l3_sk_lookup refuses, the client retries */
	else if (ok && !bpf_sk_assign(skb, sk, 0))
		count(id, L3_C_STEERED);
	bpf_sk_release(sk);
}

/*
 * A datagram of a container's UDP wildcard socket leaves from its shadow
 * port: give it the port the application bound (l3_sports), as the peer
 * expects. Done where its datagrams leave the host stack: lo's ingress
 * (to the host and containers) and the uplink's egress.
 */
static __always_inline void fix_sport(struct __sk_buff *skb, __u32 l4off, __u16 sport)
{
	struct l3_sport *sp = sport_of(IPPROTO_UDP, sport);
	__u16 old, new;

	if (!sp || !sp->id)
		return;
	old = bpf_htons(sport);
	new = bpf_htons(sp->aport);
	if (bpf_l4_csum_replace(skb, l4off + 6, old, new, BPF_F_MARK_MANGLED_0 | 2))
		return;
	bpf_skb_store_bytes(skb, l4off, &new, 2, 0);
}

/* Where the L4 header starts, and its protocol (0: neither TCP nor UDP,
 * or a fragment after the first). */
static __always_inline __u8 l4_of(struct __sk_buff *skb, __u32 *off, struct upkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u16 *ports;

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
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
			return 0;
		*off = ETH_HLEN + sizeof(*ip6);
		__builtin_memcpy(p->src.w, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.w, &ip6->daddr, 16);
		p->proto = ip6->nexthdr;
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
		ev_tpkt(0, L3_C_TC_DROP_UNKNOWN_PORT, NULL);
		return TC_ACT_SHOT;
	}
	rc = parse(skb, &p);
	if (rc == P_OTHER)
		return TC_ACT_OK; /* ARP & co: the host stack (or bridge) answers */
	if (rc != P_IP) {
		/* An IP frame too short for its header: nothing may use it. */
		count(port->id, L3_C_TC_DROP_MALFORMED);
		ev_tpkt(port->id, L3_C_TC_DROP_MALFORMED, NULL);
		return TC_ACT_SHOT;
	}
	switch (check_source(port->id, &p)) {
	case SRC_SPOOF:
		/* Rule 4: never a packet from a source it does not own. */
		count(port->id, L3_C_TC_DROP_SPOOF);
		ev_tpkt(port->id, L3_C_TC_DROP_SPOOF, &p);
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
	if (!deliver)
		return TC_ACT_OK;
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
		ev_tpkt(0, L3_C_TC_DROP_SPOOF, &p);
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
	if (skb->ifindex == LOOPBACK_IFINDEX) {
		fix_sport(skb, off, p.sport);
		if (!l4_of(skb, &off, &p)) /* read again after the write */
			return TCX_NEXT;
	}
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
