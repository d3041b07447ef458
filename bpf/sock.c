//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sock.c — the socket layer of l3iso (DESIGN.md rules 1–5, 7).
 *
 * Attached once, as bpf_links, at l3iso's cgroup v2 root. A container is the
 * ancestor cgroup at cfg.level of the calling task (sock_addr hooks) or of
 * the socket (cgroup_skb hooks), so sub-cgroups inherit their container.
 *
 *   bind4/6      ownership and derivative addresses; wildcard → own address
 *   connect4/6   unbound sockets get the container's source (bpf_bind)
 *   sendmsg4/6   same for unconnected UDP; explicit foreign sources denied
 *   recvmsg4/6, getsockname4/6, getpeername4/6
 *                the private loopback shows as 127.0.0.1 / ::1
 *   ingress/egress (cgroup_skb)
 *                backstop: no container socket receives traffic for an
 *                address it does not own (autobound and listen()-without-
 *                bind() sockets included) or emits a source it does not own
 *
 * Every lookup is a hash or LPM lookup: O(1) in containers and addresses.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "l3iso.h"
#include "maps.h"

#define EPERM 1
#define EACCES 13
#define ENETUNREACH 101
#define EADDRNOTAVAIL 99

#define SK_PASS 1
#define SK_DROP 0

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keep the enums in BTF so bpf2go generates Go constants for them. */
const enum l3_limits *unused_limits __attribute__((unused));
const enum l3_counter *unused_counter __attribute__((unused));
const enum l3_local_kind *unused_local_kind __attribute__((unused));
const enum l3_cont_flags *unused_cont_flags __attribute__((unused));
const enum l3_owner_flags *unused_owner_flags __attribute__((unused));
const enum l3_spec_flags *unused_spec_flags __attribute__((unused));
const enum l3_mode *unused_mode __attribute__((unused));
const enum l3_delivery *unused_delivery __attribute__((unused));
const enum l3_sk_flags *unused_sk_flags __attribute__((unused));
const enum l3_cfg_flags *unused_cfg_flags __attribute__((unused));
const enum l3_group_limits *unused_group_limits __attribute__((unused));
const enum l3_bloom *unused_bloom __attribute__((unused));
const enum l3_lpage_limits *unused_lpage_limits __attribute__((unused));
const struct l3_purge_req *unused_purge_req __attribute__((unused)); /* tc.c's l3_purge */

/* Maps and the helpers every program shares: maps.h. */

/* Unspecified: :: or 0.0.0.0 (in mapped form). */
static __always_inline int addr_is_any(const struct l3_addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0 ||
	       (addr_is_mapped(a) && a->w[3] == 0);
}

/* 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104 */
static __always_inline int addr_is_loopback(const struct l3_addr *a)
{
	if (addr_is_mapped(a))
		return (bpf_ntohl(a->w[3]) >> 24) == 127;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && a->w[3] == bpf_htonl(1);
}

/* l3iso's private loopback ranges: 127.128.0.0/9, fd6c:3369:736f::/48 */
static __always_inline int addr_is_private_loop(const struct l3_addr *a)
{
	if (addr_is_mapped(a))
		return (bpf_ntohl(a->w[3]) & 0xff800000) == L3_LO4_BASE;
	return a->w[0] == bpf_htonl(L3_LO6_W0) &&
	       (bpf_ntohl(a->w[1]) & 0xffff0000) == L3_LO6_W1;
}

static __always_inline void loopback_of(const struct l3_addr *like, struct l3_addr *out)
{
	if (addr_is_mapped(like)) {
		addr_set4(out, bpf_htonl(0x7f000001));
	} else {
		out->w[0] = 0;
		out->w[1] = 0;
		out->w[2] = 0;
		out->w[3] = bpf_htonl(1);
	}
}

/* The container of the calling task, or NULL for "not a container". */
static __always_inline struct l3_cont *task_container(__u32 gen, struct l3_cfg *cfg)
{
	struct l3_cont_key k = {.gen = gen};

	k.cgid = bpf_get_current_ancestor_cgroup_id(cfg->level);
	if (!k.cgid)
		return NULL;
	return bpf_map_lookup_elem(&l3_conts, &k);
}

static __always_inline struct l3_local *local_of(__u32 gen, __u32 id, const struct l3_addr *a)
{
	struct l3_local_key k = {.gen = gen, .id = id, .addr = *a};

	return bpf_map_lookup_elem(&l3_locals, &k);
}

static __always_inline struct l3_owner *owner_of(__u32 gen, const struct l3_addr *a,
						 __u8 proto, __u16 port /* host order */)
{
	struct l3_owner_key k = {
		.prefixlen = L3_OWNER_PLEN_FULL,
		.gen = gen,
		.addr = *a,
		.proto = proto,
		.port_hi = port >> 8,
		.port_lo = port & 0xff,
	};

	return bpf_map_lookup_elem(&l3_owners, &k);
}

/* Is the whole IP (or any port of it) owned by some container? */
static __always_inline int owned_by_anyone(__u32 gen, const struct l3_addr *a)
{
	return owner_of(gen, a, 0, 0) != NULL;
}

/* Owned by a shared-mode container, i.e. local on the host? */
static __always_inline int owned_on_host(__u32 gen, const struct l3_addr *a)
{
	struct l3_owner *o = owner_of(gen, a, 0, 0);

	return o && !(o->flags & L3_OF_NETNS);
}

/* May container c use address a, port port (proto) as a local address? */
enum verdict {
	V_OK = 0,
	V_FOREIGN,	/* not its address: EADDRNOTAVAIL */
	V_PORT,		/* a port of a shared IP it does not own: EACCES */
};

static __always_inline enum verdict may_use(__u32 gen, struct l3_cont *c,
					    const struct l3_addr *a, __u8 proto, __u16 port)
{
	struct l3_local *l = local_of(gen, c->id, a);
	struct l3_owner *o;

	if (!l) {
		if (addr_is_mcast(a) && mcast_allowed(gen, c->id, a))
			return V_OK;
		if ((c->flags & L3_CF_LOOP_HOST) && addr_is_loopback(a))
			return V_OK;
		return V_FOREIGN;
	}
	if (l->kind != L3_LOCAL_PART)
		return V_OK;
	/* Shared IP: only the port ranges owned by this container. */
	o = owner_of(gen, a, proto, port);
	if (o && o->id == c->id)
		return V_OK;
	return V_PORT;
}

/* The source a container's unbound socket gets toward dst (rule 4). */
static __always_inline int pick_source(__u32 gen, struct l3_cont *c,
				       const struct l3_addr *dst, struct l3_addr *src)
{
	if (c->flags & L3_CF_SUBNETS) {
		struct l3_route_key k = {.prefixlen = 64 + 128, .gen = gen, .id = c->id, .addr = *dst};
		struct l3_route *r = bpf_map_lookup_elem(&l3_routes, &k);

		if (r) {
			*src = r->src;
			return 0;
		}
	}
	if (addr_is_mapped(dst)) {
		if (!(c->flags & L3_CF_HAS4))
			return -1;
		*src = c->primary4;
	} else {
		if (!(c->flags & L3_CF_HAS6))
			return -1;
		*src = c->primary6;
	}
	return 0;
}

static __always_inline void load_user4(struct bpf_sock_addr *ctx, struct l3_addr *a)
{
	addr_set4(a, ctx->user_ip4);
}

static __always_inline void load_user6(struct bpf_sock_addr *ctx, struct l3_addr *a)
{
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void store_user6(struct bpf_sock_addr *ctx, const struct l3_addr *a)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

/* Deny with an errno of our choosing (as a real namespace would answer). */
static __always_inline int deny(int err)
{
	bpf_set_retval(-err);
	return 0;
}

/* Is a listening (tcp) or bound (udp) socket at a:port in this netns? */
static __always_inline int has_socket(struct bpf_sock_addr *ctx, const struct l3_addr *a,
				      __u16 port_be, int udp)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;

	if (addr_is_mapped(a)) {
		t.ipv4.saddr = a->w[3];
		t.ipv4.daddr = a->w[3];
		t.ipv4.dport = port_be;
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, a->w, 16);
		__builtin_memcpy(t.ipv6.daddr, a->w, 16);
		t.ipv6.dport = port_be;
		len = sizeof(t.ipv6);
	}
	if (udp)
		sk = bpf_sk_lookup_udp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/*
 * Where does an isolated container's 127.0.0.1:port (or ::1) lead? To its
 * private loopback address — unless nothing listens there and its wildcard
 * listener (which bind rewrote to its primary address) does: a real
 * namespace's wildcard listener answers on 127.0.0.1 too.
 */
static __always_inline int loopback_target(struct bpf_sock_addr *ctx, struct l3_cont *c,
					   const struct l3_addr *dst, struct l3_addr *to)
{
	int udp = ctx->type == 2; /* SOCK_DGRAM */
	const struct l3_addr *lo, *prim;
	int has;

	if (addr_is_mapped(dst)) {
		lo = &c->lo4;
		prim = &c->primary4;
		has = c->flags & L3_CF_HAS4;
	} else {
		lo = &c->lo6;
		prim = &c->primary6;
		has = c->flags & L3_CF_HAS6;
	}
	*to = *lo;
	if (has && !has_socket(ctx, lo, ctx->user_port, udp) &&
	    has_socket(ctx, prim, ctx->user_port, udp)) {
		*to = *prim;
		return 1;
	}
	return 0;
}

static __always_inline void mark_loop_primary(struct bpf_sock_addr *ctx)
{
	struct l3_sk *s;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	s = bpf_sk_storage_get(&l3_skstore, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (s)
		s->flags |= L3_SK_LOOP_PRIMARY;
}

static __always_inline int host_netns(struct bpf_sock_addr *ctx, struct l3_cfg *cfg)
{
	return !cfg->netns_cookie || bpf_get_netns_cookie(ctx) == cfg->netns_cookie;
}

/* ------------------------------------ broadcast/multicast registry (rule 6) */

/* An empty l3_lset (too big for the stack), an empty l3_lsum. */
static const struct l3_lset lset_zero;
static const struct l3_lpages lsum_zero;

/* The entry of key k in map m, made from zero when missing. */
static __always_inline void *lookup_or_make(void *m, const struct l3_lkey *k, const void *zero)
{
	void *v = bpf_map_lookup_elem(m, k);

	if (!v) {
		bpf_map_update_elem(m, k, zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(m, k);
	}
	return v;
}

/*
 * Register (or count once more) container id, listening at addr, under
 * (group, port): O(1), its entry has a fixed place (struct l3_lset).
 * Returns 0, or -1 when the registry is out of memory or entries.
 */
static __always_inline int reg_add(const struct l3_addr *group, __u16 port, __u32 id,
				   const struct l3_addr *addr)
{
	struct l3_lkey k = {.group = *group, .port = port};
	struct l3_lpages *sum;
	struct l3_lset *v;
	struct l3_lent *e;
	__u32 pg, slot;

	if (!id || id > L3_MAX_CONTAINERS)
		return -1;
	pg = lpage_of(id);
	slot = lslot_of(id, !addr_is_mapped(addr));
	sum = lookup_or_make(&l3_lsum, &k, &lsum_zero);
	if (!sum)
		return -1;
	k.page = pg;
	v = lookup_or_make(&l3_listen, &k, &lset_zero);
	if (!v)
		return -1;
	e = &v->e[slot];
	bpf_spin_lock(&v->lock);
	if (e->id == id) {
		e->refs++;
	} else {
		/* free (or left by a deleted container whose id came back) */
		e->id = id;
		e->refs = 1;
		e->addr = *addr;
		v->used |= 1ULL << slot;
		__sync_fetch_and_or(&sum->pages[pg / 64], 1ULL << (pg % 64));
	}
	bpf_spin_unlock(&v->lock);
	return 0;
}

static __always_inline void reg_del(const struct l3_addr *group, __u16 port, __u32 id,
				    const struct l3_addr *addr)
{
	struct l3_lkey k = {.group = *group, .port = port};
	struct l3_lpages *sum;
	struct l3_lset *v;
	struct l3_lent *e;
	__u32 pg, slot;

	if (!id || id > L3_MAX_CONTAINERS)
		return;
	pg = lpage_of(id);
	slot = lslot_of(id, !addr_is_mapped(addr));
	sum = bpf_map_lookup_elem(&l3_lsum, &k);
	if (!sum)
		return;
	k.page = pg;
	v = bpf_map_lookup_elem(&l3_listen, &k);
	if (!v)
		return;
	e = &v->e[slot];
	bpf_spin_lock(&v->lock);
	if (e->id == id) {
		if (e->refs > 1)
			e->refs--;
		else
			lset_free(v, sum, pg, slot);
	}
	bpf_spin_unlock(&v->lock);
}

/*
 * Is slot i the first of its group in s? A group with several sources
 * fills several slots; l3_listen holds it once per socket.
 */
static __always_inline int first_slot(const struct l3_sk *s, int i)
{
	int j;

	for (j = 0; j < L3_SK_GROUPS && j < i; j++)
		if (addr_eq(&s->groups[j], &s->groups[i]))
			return 0;
	return 1;
}

/*
 * A UDP wildcard bind of container id, rewritten to addr (shared) or kept
 * (netns): remember it on the socket; l3_post_bind registers it once the
 * kernel has bound the socket — so a bind that fails registers nothing,
 * and a bind to port 0 is registered on the port the kernel chose.
 */
static __always_inline void mark_listener(struct bpf_sock_addr *ctx, __u32 id,
					  const struct l3_addr *addr)
{
	struct l3_sk *s;

	if (!ctx->sk)
		return;
	s = bpf_sk_storage_get(&l3_skstore, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s || (s->flags & L3_SK_LISTENER))
		return;
	s->id = id;
	s->addr = *addr;
	s->flags |= L3_SK_BIND_PENDING;
}

/* ------------------------------------------------------------------- bind */

static __always_inline int do_bind(struct bpf_sock_addr *ctx, struct l3_addr *a, int v6)
{
	struct l3_cfg *cfg = config();
	__u16 port = bpf_ntohs(ctx->user_port);
	__u8 proto = ctx->protocol;
	struct l3_cont *c;
	enum verdict v;
	__u32 gen;

	if (!cfg)
		return 1;
	gen = active_gen();
	c = task_container(gen, cfg);

	if (!c) {
		/* Rule 2: the host loses visibility of pushed addresses. */
		if (!host_netns(ctx, cfg))
			return 1;
		if (owned_by_anyone(gen, a) || addr_is_private_loop(a)) {
			count(0, L3_C_HOST_BIND_DENIED);
			return deny(EADDRNOTAVAIL);
		}
		return 1;
	}

	if (addr_is_any(a)) {
		/* Rule 3: a wildcard bind becomes a bind to its own address. */
		if (!v6 || addr_is_mapped(a)) {
			if (!(c->flags & L3_CF_HAS4))
				goto foreign;
			*a = c->primary4;
		} else if (c->flags & L3_CF_HAS6) {
			*a = c->primary6;
		} else if (c->flags & L3_CF_HAS4) {
			*a = c->primary4; /* dual-stack socket, IPv4-only container */
		} else {
			goto foreign;
		}
		if (c->flags & L3_CF_NETNS) {
			/*
			 * Its own stack: no other container can collide with
			 * its wildcard, and its kernel delivers broadcasts and
			 * multicast to it. Registered under its address (which
			 * l3_delivs maps to its veth) for the TC fan-out.
			 */
			if (proto == IPPROTO_UDP)
				mark_listener(ctx, c->id, a);
			count(c->id, L3_C_BIND_ALLOWED);
			return 1;
		}
		if (v6)
			store_user6(ctx, a);
		else
			ctx->user_ip4 = a->w[3];
		count(c->id, L3_C_BIND_REWRITTEN);
		if (proto == IPPROTO_UDP)
			mark_listener(ctx, c->id, a);
		return 1;
	}

	if (addr_is_loopback(a) && !(c->flags & L3_CF_LOOP_HOST)) {
		/* Rule 5: its 127.0.0.1 / ::1 is its private loopback. */
		if (addr_is_mapped(a)) {
			if (v6)
				store_user6(ctx, &c->lo4);
			else
				ctx->user_ip4 = c->lo4.w[3];
		} else {
			store_user6(ctx, &c->lo6);
		}
		count(c->id, L3_C_LOOP_REMAPPED);
		return 1;
	}

	v = may_use(gen, c, a, proto, port);
	if (v == V_OK) {
		count(c->id, L3_C_BIND_ALLOWED);
		return 1;
	}
	if (v == V_PORT) {
		/* Another container owns this port of a shared IP (or nobody does). */
		count(c->id, L3_C_BIND_DENIED_PORT);
		return deny(EACCES);
	}
foreign:
	/* Not an address of this container: as in a namespace without it. */
	count(c->id, L3_C_BIND_DENIED_FOREIGN);
	return deny(EADDRNOTAVAIL);
}

SEC("cgroup/bind4")
int l3_bind4(struct bpf_sock_addr *ctx)
{
	struct l3_addr a;

	load_user4(ctx, &a);
	return do_bind(ctx, &a, 0);
}

SEC("cgroup/bind6")
int l3_bind6(struct bpf_sock_addr *ctx)
{
	struct l3_addr a;

	load_user6(ctx, &a);
	return do_bind(ctx, &a, 1);
}

/* --------------------------------------------------------- connect, send */

/* The address a socket is bound to (mapped form), zero if unbound. */
static __always_inline void bound_addr(struct bpf_sock_addr *ctx, int v6, struct l3_addr *a)
{
	struct bpf_sock *sk = ctx->sk;

	__builtin_memset(a, 0, sizeof(*a));
	if (!sk)
		return;
	if (!v6) {
		addr_set4(a, sk->src_ip4);
		if (!sk->src_ip4)
			__builtin_memset(a, 0, sizeof(*a));
		return;
	}
	a->w[0] = sk->src_ip6[0];
	a->w[1] = sk->src_ip6[1];
	a->w[2] = sk->src_ip6[2];
	a->w[3] = sk->src_ip6[3];
	if (addr_is_mapped(a) && !a->w[3])
		__builtin_memset(a, 0, sizeof(*a));
}

/*
 * Shared by connect and sendmsg: rewrite an isolated loopback destination,
 * choose the source for an unbound socket. Returns 1 to allow, 0 denied
 * (errno set), and the source to use in *src (zero: leave it).
 */
static __always_inline int route_out(struct bpf_sock_addr *ctx, int v6, struct l3_cfg *cfg,
				     __u32 gen, struct l3_cont *c, struct l3_addr *src,
				     int *set_src)
{
	struct l3_addr dst, bound, lo;

	*set_src = 0;
	if (v6)
		load_user6(ctx, &dst);
	else
		load_user4(ctx, &dst);
	bound_addr(ctx, v6, &bound);

	if (!c) {
		if (!host_netns(ctx, cfg))
			return 1;
		/*
		 * Host → shared container address: the kernel would use the
		 * container's own IP as source (it is local). The host may not
		 * use it (rule 2), so talk from the host's loopback instead.
		 * A netns container's address is not local: it is routed to
		 * its veth, and the kernel's source is a host address.
		 */
		if (addr_is_any(&bound) && owned_on_host(gen, &dst)) {
			loopback_of(&dst, src);
			*set_src = 1;
			count(0, L3_C_HOST_SRC_REWRITTEN);
		}
		return 1;
	}

	if (addr_is_loopback(&dst) && (c->flags & L3_CF_LOOP_HOST)) {
		/* loopback: host — the host's 127.0.0.1 / ::1, kernel source */
		count(c->id, L3_C_CONNECT_ALLOWED);
		return 1;
	}
	if (addr_is_loopback(&dst)) {
		if (loopback_target(ctx, c, &dst, &lo))
			mark_loop_primary(ctx);
		if (v6)
			store_user6(ctx, &lo);
		else
			ctx->user_ip4 = lo.w[3];
		count(c->id, L3_C_CONNECT_ALLOWED);
		count(c->id, L3_C_LOOP_REMAPPED);
		if (addr_is_any(&bound)) {
			*src = lo;
			*set_src = 1;
		}
		return 1;
	}

	if (!addr_is_any(&bound)) {
		/* bind already checked it */
		count(c->id, L3_C_CONNECT_ALLOWED);
		return 1;
	}
	if (pick_source(gen, c, &dst, src) < 0) {
		/* No address of this family: nothing it could send from. */
		count(c->id, L3_C_NO_ADDR);
		return deny(ENETUNREACH);
	}
	*set_src = 1;
	count(c->id, L3_C_CONNECT_ALLOWED);
	count(c->id, L3_C_SRC_REWRITTEN);
	return 1;
}

static __always_inline int do_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_cfg *cfg = config();
	struct l3_addr src;
	int set_src, ret;
	__u32 gen;

	if (!cfg)
		return 1;
	gen = active_gen();
	ret = route_out(ctx, v6, cfg, gen, task_container(gen, cfg), &src, &set_src);
	if (!ret || !set_src)
		return ret;
	if (v6) {
		struct sockaddr_in6 sa = {.sin6_family = 10 /* AF_INET6 */};

		__builtin_memcpy(&sa.sin6_addr, src.w, 16);
		if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
			return deny(EADDRNOTAVAIL);
	} else {
		struct sockaddr_in sa = {.sin_family = 2 /* AF_INET */};

		sa.sin_addr.s_addr = src.w[3];
		if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
			return deny(EADDRNOTAVAIL);
	}
	return 1;
}

SEC("cgroup/connect4")
int l3_connect4(struct bpf_sock_addr *ctx)
{
	return do_connect(ctx, 0);
}

SEC("cgroup/connect6")
int l3_connect6(struct bpf_sock_addr *ctx)
{
	return do_connect(ctx, 1);
}

static __always_inline int do_sendmsg(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_cfg *cfg = config();
	struct l3_addr msrc, src;
	struct l3_cont *c;
	int set_src;
	__u32 gen;

	if (!cfg)
		return 1;
	gen = active_gen();
	c = task_container(gen, cfg);

	/* An explicit source (IP_PKTINFO / bound address) must be its own. */
	if (v6) {
		msrc.w[0] = ctx->msg_src_ip6[0];
		msrc.w[1] = ctx->msg_src_ip6[1];
		msrc.w[2] = ctx->msg_src_ip6[2];
		msrc.w[3] = ctx->msg_src_ip6[3];
		if (addr_is_mapped(&msrc) && !msrc.w[3])
			__builtin_memset(&msrc, 0, sizeof(msrc));
	} else {
		addr_set4(&msrc, ctx->msg_src_ip4);
		if (!ctx->msg_src_ip4)
			__builtin_memset(&msrc, 0, sizeof(msrc));
	}
	if (c && !addr_is_any(&msrc)) {
		struct bpf_sock *sk = ctx->sk;
		__u16 sport = sk ? sk->src_port : 0;

		if (may_use(gen, c, &msrc, ctx->protocol, sport) != V_OK) {
			/* Rule 4: never a packet from a source it does not own. */
			count(c->id, L3_C_SEND_DENIED_SPOOF);
			return deny(EPERM);
		}
	}

	if (!route_out(ctx, v6, cfg, gen, c, &src, &set_src))
		return 0;
	if (!set_src || !addr_is_any(&msrc))
		return 1;
	/* Make the compiler address the stores from ctx itself: the verifier
	 * rejects a store through a saved ctx+offset pointer. */
	asm volatile("" : "+r"(ctx));
	if (v6) {
		ctx->msg_src_ip6[0] = src.w[0];
		ctx->msg_src_ip6[1] = src.w[1];
		ctx->msg_src_ip6[2] = src.w[2];
		ctx->msg_src_ip6[3] = src.w[3];
	} else {
		ctx->msg_src_ip4 = src.w[3];
	}
	return 1;
}

SEC("cgroup/sendmsg4")
int l3_sendmsg4(struct bpf_sock_addr *ctx)
{
	return do_sendmsg(ctx, 0);
}

SEC("cgroup/sendmsg6")
int l3_sendmsg6(struct bpf_sock_addr *ctx)
{
	return do_sendmsg(ctx, 1);
}

/* ------------------------------------- what applications see (rule 5) */

/*
 * Show the private loopback (and, for sockets whose 127.0.0.1 led to the
 * primary address, the primary) as 127.0.0.1 / ::1.
 *
 * These hooks run on every recvfrom, getsockname and getpeername of every
 * process under l3iso's cgroup, the host's and netns containers' included,
 * so the common cases leave early: a socket in another netns (a netns
 * container's loopback is its own), then an address that is neither a
 * private loopback nor the peer of a socket marked L3_SK_LOOP_PRIMARY.
 * Both come before the socket storage (a separate allocation, cold on a
 * busy receive path) and the container lookup (a cgroup walk and a hash
 * lookup), the costly parts.
 */
static __always_inline int show_loopback(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_addr a, lo;
	struct l3_cfg *cfg;
	struct l3_cont *c;
	struct l3_sk *s;
	int primary = 0;

	cfg = config();
	if (!cfg || !host_netns(ctx, cfg))
		return 1; /* a netns container's loopback is its own */
	if (v6)
		load_user6(ctx, &a);
	else
		load_user4(ctx, &a);
	if (!addr_is_private_loop(&a)) {
		if (!ctx->sk)
			return 1;
		s = bpf_sk_storage_get(&l3_skstore, ctx->sk, 0, 0);
		if (!s || !(s->flags & L3_SK_LOOP_PRIMARY))
			return 1;
		primary = 1;
	}
	c = task_container(active_gen(), cfg);
	if (!c || (c->flags & L3_CF_LOOP_HOST))
		return 1;
	if (primary ? !addr_eq(&a, &c->primary4) && !addr_eq(&a, &c->primary6)
		    : !addr_eq(&a, &c->lo4) && !addr_eq(&a, &c->lo6))
		return 1;
	loopback_of(&a, &lo);
	if (v6)
		store_user6(ctx, &lo);
	else
		ctx->user_ip4 = lo.w[3];
	return 1;
}

SEC("cgroup/recvmsg4")
int l3_recvmsg4(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 0);
}

SEC("cgroup/recvmsg6")
int l3_recvmsg6(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 1);
}

SEC("cgroup/getsockname4")
int l3_getsockname4(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 0);
}

SEC("cgroup/getsockname6")
int l3_getsockname6(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 1);
}

SEC("cgroup/getpeername4")
int l3_getpeername4(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 0);
}

SEC("cgroup/getpeername6")
int l3_getpeername6(struct bpf_sock_addr *ctx)
{
	return show_loopback(ctx, 1);
}

/* ------------------------------------------------ packet backstop (skb) */

struct pkt {
	struct l3_addr src, dst;
	__u8 proto;
	__u16 sport, dport; /* host order; 0 when not TCP/UDP */
};

/* Copy len bytes at off: straight from the linear packet data when it is
 * there (the common case: cgroup_skb sees the network header first),
 * else with the helper. */
#define LOAD(skb, off, dst, len)                                                        \
	({                                                                              \
		void *__d = (void *)(long)(skb)->data, *__e = (void *)(long)(skb)->data_end; \
		int __r = 0;                                                            \
		if (__d + (off) + (len) <= __e)                                         \
			__builtin_memcpy((dst), __d + (off), (len));                   \
		else                                                                    \
			__r = bpf_skb_load_bytes((skb), (off), (dst), (len));           \
		__r;                                                                    \
	})

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u16 ports[2];

	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 off;

		if (LOAD(skb, 0, &ip, sizeof(ip)))
			return -1;
		addr_set4(&p->src, ip.saddr);
		addr_set4(&p->dst, ip.daddr);
		p->proto = ip.protocol;
		off = (ip.ihl & 0xf) * 4;
		if ((ip.frag_off & bpf_htons(0x1fff)) == 0 &&
		    (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
		    !LOAD(skb, off, ports, sizeof(ports))) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
		}
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (LOAD(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(p->src.w, &ip6.saddr, 16);
		__builtin_memcpy(p->dst.w, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
		    !LOAD(skb, sizeof(ip6), ports, sizeof(ports))) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
		}
		return 0;
	}
	return -1;
}

static __always_inline struct l3_cont *skb_container(struct __sk_buff *skb, __u32 gen,
						     struct l3_cfg *cfg)
{
	struct l3_cont_key k = {.gen = gen};

	k.cgid = bpf_skb_ancestor_cgroup_id(skb, cfg->level);
	if (!k.cgid)
		return NULL;
	return bpf_map_lookup_elem(&l3_conts, &k);
}

/* Is a the container's first IPv4 or IPv6 address (always a whole IP)? */
static __always_inline int own_primary(const struct l3_cont *c, const struct l3_addr *a)
{
	if (addr_is_mapped(a))
		return (c->flags & L3_CF_HAS4) && a->w[3] == c->primary4.w[3];
	return (c->flags & L3_CF_HAS6) && addr_eq(a, &c->primary6);
}

/* Did the receiving socket join group g, for datagrams from src? */
static __always_inline int sk_joined(struct __sk_buff *skb, const struct l3_addr *g,
				     const struct l3_addr *src)
{
	struct bpf_sock *sk = skb->sk;
	struct l3_sk *s;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	s = bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
	return s && sk_source_ok(s, g, src);
}

static __always_inline int may_receive(struct __sk_buff *skb, __u32 gen, struct l3_cont *c,
				       struct pkt *p)
{
	struct l3_local *l;

	if (own_primary(c, &p->dst))
		return 1; /* a whole IP of its own: the common case, one lookup less */
	l = local_of(gen, c->id, &p->dst);

	if (l) {
		if (l->kind == L3_LOCAL_LOOP)
			/* its private loopback: only from itself */
			return local_of(gen, c->id, &p->src) != NULL;
		if (l->kind == L3_LOCAL_PART) {
			struct l3_owner *o = owner_of(gen, &p->dst, p->proto, p->dport);

			return o && o->id == c->id;
		}
		return 1;
	}
	if (addr_is_mcast(&p->dst)) {
		/* A copy of a group this host sent, steered to this very socket
		 * by l3_tc_group, which checked the policy, the join and the
		 * source before it readdressed the copy to 224.0.0.1. */
		if (skb->mark == L3_MARK_COPY)
			return 1;
		/* A socket that did not join the group gets nothing of it,
		 * however the kernel matched it (IP_MULTICAST_ALL), nor what its
		 * source filter refuses (copies assigned to it bypass the
		 * kernel's filter). */
		return mcast_allowed(gen, c->id, &p->dst) && sk_joined(skb, &p->dst, &p->src);
	}
	if (addr_is_mapped(&p->dst) && p->dst.w[3] == 0xffffffff)
		return 1; /* limited broadcast: the broadcast issue narrows this */
	if ((c->flags & L3_CF_LOOP_HOST) && addr_is_loopback(&p->dst))
		return 1;
	return 0;
}

/*
 * Is the socket in l3iso's network namespace? The skb backstops police
 * shared-mode containers and the host there. A netns container's socket
 * is in its own namespace, whose stack holds only its addresses (exec
 * takes NET_ADMIN away): the socket hooks check its binds and sources,
 * and every packet it sends or receives crosses its host-side veth, whose
 * TC program (l3_tc_veth, l3_tc_guard) checks the source. Sparing it the
 * backstops saves two programs' work on each of its packets.
 */
static __always_inline int skb_host_netns(struct __sk_buff *skb, struct l3_cfg *cfg)
{
	return !cfg->netns_cookie || bpf_get_netns_cookie(skb) == cfg->netns_cookie;
}

SEC("cgroup_skb/ingress")
int l3_ingress(struct __sk_buff *skb)
{
	struct l3_cfg *cfg = config();
	struct l3_cont *c;
	struct pkt p;
	__u32 gen;

	if (!cfg || !skb_host_netns(skb, cfg) || parse(skb, &p))
		return SK_PASS;
	gen = active_gen();
	c = skb_container(skb, gen, cfg);
	if (!c) {
		/* Host sockets: container addresses are not theirs (rule 2). */
		if (owned_by_anyone(gen, &p.dst) || addr_is_private_loop(&p.dst)) {
			count(0, L3_C_HOST_INGRESS_DROP);
			return SK_DROP;
		}
		return SK_PASS;
	}
	if (may_receive(skb, gen, c, &p))
		return SK_PASS;
	/* Rule 3: traffic for another container's (or the host's) address. */
	count(c->id, L3_C_INGRESS_DROP_FOREIGN);
	return SK_DROP;
}

SEC("cgroup_skb/egress")
int l3_egress(struct __sk_buff *skb)
{
	struct l3_cfg *cfg = config();
	struct l3_local *l;
	struct l3_cont *c;
	struct pkt p;
	__u32 gen;

	if (!cfg || !skb_host_netns(skb, cfg))
		return SK_PASS;
	gen = active_gen();
	c = skb_container(skb, gen, cfg);
	if (!c || parse(skb, &p)) /* host sockets: nothing to check on the way out */
		return SK_PASS;
	/* The common case without a second lookup: its first address of
	 * the family, which is always a whole IP. */
	if (own_primary(c, &p.src))
		return SK_PASS;
	l = local_of(gen, c->id, &p.src);
	if (l && l->kind != L3_LOCAL_BCAST) {
		if (l->kind != L3_LOCAL_PART)
			return SK_PASS;
		struct l3_owner *o = owner_of(gen, &p.src, p.proto, p.sport);

		if (o && o->id == c->id)
			return SK_PASS;
	} else if (!l && (c->flags & L3_CF_LOOP_HOST) && addr_is_loopback(&p.src)) {
		return SK_PASS;
	}
	/* Rule 4: a container never emits a source it does not own. */
	count(c->id, L3_C_EGRESS_DROP_SPOOF);
	return SK_DROP;
}

/* ------------------------------------------ multicast joins (rule 6) */

#define SOL_IP 0
#define SOL_IPV6 41
#define IP_ADD_MEMBERSHIP 35
#define IP_DROP_MEMBERSHIP 36
#define IP_UNBLOCK_SOURCE 37
#define IP_BLOCK_SOURCE 38
#define IP_ADD_SOURCE_MEMBERSHIP 39
#define IP_DROP_SOURCE_MEMBERSHIP 40
#define MCAST_JOIN_GROUP 42
#define MCAST_BLOCK_SOURCE 43
#define MCAST_UNBLOCK_SOURCE 44
#define MCAST_LEAVE_GROUP 45
#define MCAST_JOIN_SOURCE_GROUP 46
#define MCAST_LEAVE_SOURCE_GROUP 47
#define IPV6_ADD_MEMBERSHIP 20
#define IPV6_DROP_MEMBERSHIP 21
#define ENOBUFS 105

enum {
	J_NONE = 0,
	J_JOIN,	   /* any-source join: IP_ADD_MEMBERSHIP, MCAST_JOIN_GROUP, IPV6_ADD_MEMBERSHIP */
	J_LEAVE,   /* the whole group: IP_DROP_MEMBERSHIP, MCAST_LEAVE_GROUP, IPV6_DROP_MEMBERSHIP */
	J_SJOIN,   /* one source: IP_ADD_SOURCE_MEMBERSHIP, MCAST_JOIN_SOURCE_GROUP */
	J_SLEAVE,  /* one source: IP_DROP_SOURCE_MEMBERSHIP, MCAST_LEAVE_SOURCE_GROUP */
	J_BLOCK,   /* IP_BLOCK_SOURCE, MCAST_BLOCK_SOURCE */
	J_UNBLOCK, /* IP_UNBLOCK_SOURCE, MCAST_UNBLOCK_SOURCE */
};

/* Option layouts (x86-64), by where the group and the source are. */
enum {
	F_IN4 = 1, /* ip_mreq, ip_mreqn: the IPv4 group at 0 */
	F_SRC4,	   /* ip_mreq_source: group at 0, source at 8 */
	F_IN6,	   /* ipv6_mreq: the IPv6 group at 0 */
	F_GR,	   /* group_req: a sockaddr_storage at 8 */
	F_GSR,	   /* group_source_req: sockaddr_storages at 8 (group) and 136 (source) */
};

/* The address of a sockaddr_in or sockaddr_in6 (mapped form); -1 if neither. */
static __always_inline int sockaddr_ip(const void *sa, struct l3_addr *a)
{
	if (*(__u16 *)sa == 2 /* AF_INET */)
		addr_set4(a, *(__u32 *)(sa + 4));
	else if (*(__u16 *)sa == 10 /* AF_INET6 */)
		__builtin_memcpy(a->w, sa + 8, 16);
	else
		return -1;
	return 0;
}

/*
 * The group (and, for the per-source options, the source) of a join,
 * leave or source change, from the option's value. *has_src says whether
 * a source of the group's family was found; without one the kernel refuses
 * a per-source option itself. 32-bit (compat) layouts are not parsed.
 */
static __always_inline int sockopt_group(struct bpf_sockopt *ctx, struct l3_addr *g,
					 struct l3_addr *src, int *has_src)
{
	void *p = ctx->optval, *end = ctx->optval_end;
	int op = J_NONE, form = 0;

	if (ctx->level == SOL_IP) {
		switch (ctx->optname) {
		case IP_ADD_MEMBERSHIP:
			op = J_JOIN, form = F_IN4;
			break;
		case IP_DROP_MEMBERSHIP:
			op = J_LEAVE, form = F_IN4;
			break;
		case IP_ADD_SOURCE_MEMBERSHIP:
			op = J_SJOIN, form = F_SRC4;
			break;
		case IP_DROP_SOURCE_MEMBERSHIP:
			op = J_SLEAVE, form = F_SRC4;
			break;
		case IP_BLOCK_SOURCE:
			op = J_BLOCK, form = F_SRC4;
			break;
		case IP_UNBLOCK_SOURCE:
			op = J_UNBLOCK, form = F_SRC4;
			break;
		}
	} else if (ctx->level == SOL_IPV6) {
		switch (ctx->optname) {
		case IPV6_ADD_MEMBERSHIP:
			op = J_JOIN, form = F_IN6;
			break;
		case IPV6_DROP_MEMBERSHIP:
			op = J_LEAVE, form = F_IN6;
			break;
		}
	}
	if (ctx->level == SOL_IP || ctx->level == SOL_IPV6) {
		switch (ctx->optname) {
		case MCAST_JOIN_GROUP:
			op = J_JOIN, form = F_GR;
			break;
		case MCAST_LEAVE_GROUP:
			op = J_LEAVE, form = F_GR;
			break;
		case MCAST_JOIN_SOURCE_GROUP:
			op = J_SJOIN, form = F_GSR;
			break;
		case MCAST_LEAVE_SOURCE_GROUP:
			op = J_SLEAVE, form = F_GSR;
			break;
		case MCAST_BLOCK_SOURCE:
			op = J_BLOCK, form = F_GSR;
			break;
		case MCAST_UNBLOCK_SOURCE:
			op = J_UNBLOCK, form = F_GSR;
			break;
		}
	}
	if (op == J_NONE)
		return J_NONE;
	*has_src = 0;
	if (form == F_IN4 || form == F_SRC4) {
		if (p + 4 > end)
			return J_NONE;
		addr_set4(g, *(__u32 *)p);
		if (form == F_SRC4 && p + 12 <= end) {
			addr_set4(src, *(__u32 *)(p + 8));
			*has_src = 1;
		}
	} else if (form == F_IN6) {
		if (p + 16 > end)
			return J_NONE;
		__builtin_memcpy(g->w, p, 16);
	} else {
		if (p + 32 > end || sockaddr_ip(p + 8, g))
			return J_NONE;
		/* the source's sockaddr_in6 ends at 136 + 24 */
		if (form == F_GSR && p + 160 <= end && !sockaddr_ip(p + 136, src) &&
		    addr_is_mapped(src) == addr_is_mapped(g))
			*has_src = 1;
	}
	if (!addr_is_mcast(g))
		return J_NONE; /* the kernel refuses it itself */
	return op;
}

_Static_assert(L3_SRC_ANY == 0, "a zeroed slot is free and any-source");

/*
 * Multicast joins (rule 6). The program runs before the kernel applies the
 * option: a join of a group outside the container's policy fails with
 * EPERM; every other change is mirrored in the socket's slots (struct l3_sk)
 * the way the kernel changes its per-socket filter (ip_mc_source,
 * ip6_mc_source) — assuming the kernel accepts it — so that l3iso can
 * apply the filter to the copies it assigns to the socket:
 *
 *   join (any source)   G has no slot: one ANY slot. Joined already: no change.
 *   join source S       G in exclude mode with blocked sources: no change (EINVAL).
 *                       An ANY slot of G becomes INCLUDE S (the kernel switches an
 *                       empty exclude filter to include); else one more INCLUDE slot.
 *   leave source S      its INCLUDE slot goes; the last one leaves G, as in the kernel.
 *   block / unblock S   an EXCLUDE slot beside G's ANY slot, or its removal.
 *   leave G             every slot of G.
 *
 * A slot that does not fit (L3_SK_GROUPS per socket) fails the option with
 * ENOBUFS, before the kernel runs it. A socket that is a registered
 * listener has each group in l3_listen once, from its first slot to its
 * last. Slots are changed in place in a loop (no index carried out of one:
 * the verifier would track each value it may hold, as for flags and
 * counts, which stay 0/1), the group written last and cleared first, so
 * readers never see half a slot.
 */
SEC("cgroup/setsockopt")
int l3_setsockopt(struct bpf_sockopt *ctx)
{
	struct l3_cfg *cfg = config();
	struct l3_addr g, src = {};
	struct l3_cont *c;
	struct l3_sk *s;
	__u32 gen;
	int op, i, has_src = 0, ng = 0, multi = 0, any = 0, match = 0, excl = 0, free = 0, done = 0;
	__u8 mode;

	if (!cfg)
		return 1;
	op = sockopt_group(ctx, &g, &src, &has_src);
	if (op == J_NONE)
		return 1;
	gen = active_gen();
	c = task_container(gen, cfg);
	if (!c)
		return 1; /* host processes join what they like */
	if ((op == J_JOIN || op == J_SJOIN) && !mcast_allowed(gen, c->id, &g)) {
		count(c->id, L3_C_JOIN_DENIED);
		return deny(EPERM);
	}
	if (!ctx->sk)
		return 1;
	if (op != J_JOIN && op != J_LEAVE && !has_src)
		return 1; /* no source the kernel would take: it refuses the option */
	s = bpf_sk_storage_get(&l3_skstore, ctx->sk, 0,
			       op == J_JOIN || op == J_SJOIN ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!s)
		return 1;
	if (op == J_JOIN || op == J_SJOIN)
		count(c->id, L3_C_JOIN_ALLOWED);

	/* What the socket holds of g: slots (ng; multi: more than one), an
	 * any-source join, the mode of a slot naming src, blocked sources. */
	for (i = 0; i < L3_SK_GROUPS; i++) {
		struct l3_addr *e = &s->groups[i];

		if (addr_eq(e, &g)) {
			multi = ng;
			ng = 1;
			if (s->modes[i] == L3_SRC_ANY)
				any = 1;
			else if (addr_eq(&s->sources[i], &src))
				match = s->modes[i];
			if (s->modes[i] == L3_SRC_EXCLUDE)
				excl = 1;
		} else if (!(e->w[0] | e->w[1] | e->w[2] | e->w[3])) {
			free = 1;
		}
	}

	/* What changes: a new slot of mode `mode`, or the ones found below. */
	switch (op) {
	case J_JOIN:
		if (ng)
			return 1; /* joined already (the kernel: EADDRINUSE) */
		mode = L3_SRC_ANY;
		break;
	case J_SJOIN:
		if (excl || match)
			return 1; /* exclude mode (the kernel: EINVAL), or there already */
		if (any) {
			/* Any source → this source only: the kernel's mode switch. */
			for (i = 0; i < L3_SK_GROUPS; i++) {
				if (addr_eq(&s->groups[i], &g) && s->modes[i] == L3_SRC_ANY) {
					s->sources[i] = src;
					/* readers: any source until the mode changes */
					asm volatile("" ::: "memory");
					s->modes[i] = L3_SRC_INCLUDE;
					break;
				}
			}
			return 1;
		}
		mode = L3_SRC_INCLUDE;
		break;
	case J_BLOCK:
		if (!any || match)
			return 1; /* not an any-source join (EINVAL), or blocked already */
		mode = L3_SRC_EXCLUDE;
		break;
	case J_UNBLOCK:
	case J_SLEAVE:
		mode = op == J_UNBLOCK ? L3_SRC_EXCLUDE : L3_SRC_INCLUDE;
		if (match != mode)
			return 1;
		for (i = 0; i < L3_SK_GROUPS; i++) {
			if (addr_eq(&s->groups[i], &g) && s->modes[i] == mode &&
			    addr_eq(&s->sources[i], &src)) {
				__builtin_memset(&s->groups[i], 0, sizeof(s->groups[i]));
				asm volatile("" ::: "memory");
				__builtin_memset(&s->sources[i], 0, sizeof(s->sources[i]));
				s->modes[i] = L3_SRC_ANY;
				break;
			}
		}
		/* The last source of an include filter leaves the group. */
		if (op == J_UNBLOCK || multi)
			return 1;
		goto unregister;
	default: /* J_LEAVE */
		if (!ng)
			return 1;
		for (i = 0; i < L3_SK_GROUPS; i++) {
			if (addr_eq(&s->groups[i], &g)) {
				__builtin_memset(&s->groups[i], 0, sizeof(s->groups[i]));
				asm volatile("" ::: "memory");
				__builtin_memset(&s->sources[i], 0, sizeof(s->sources[i]));
				s->modes[i] = L3_SRC_ANY;
			}
		}
		goto unregister;
	}

	/* A new slot (J_JOIN, J_SJOIN, J_BLOCK). */
	if (!free)
		return deny(ENOBUFS); /* more than l3iso tracks per socket */
	for (i = 0; i < L3_SK_GROUPS && !done; i++) {
		struct l3_addr *e = &s->groups[i];

		if (!(e->w[0] | e->w[1] | e->w[2] | e->w[3])) {
			s->sources[i] = src;
			s->modes[i] = mode;
			asm volatile("" ::: "memory");
			*e = g;
			done = 1;
		}
	}
	if (op == J_BLOCK || ng)
		return 1; /* the group was there already */
	if (s->flags & L3_SK_LISTENER)
		reg_add(&g, s->port, s->id, &s->addr);
	return 1;
unregister:
	if (s->flags & L3_SK_LISTENER)
		reg_del(&g, s->port, s->id, &s->addr);
	return 1;
}

/* A socket's l3iso state, if l3iso is up and the socket has any. */
static __always_inline struct l3_sk *sock_state(struct bpf_sock *sk)
{
	if (!config())
		return NULL; /* not up yet */
	return bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
}

/*
 * After a bind the kernel made: a UDP wildcard bind that mark_listener
 * remembered becomes a listener on the bound port (chosen by the kernel
 * for port 0), with the groups the socket joined before it.
 */
static __always_inline int post_bind(struct bpf_sock *sk)
{
	struct l3_addr bk;
	struct l3_sk *s;
	__u16 port;
	int i;

	s = sock_state(sk);
	if (!s || !(s->flags & L3_SK_BIND_PENDING))
		return 1;
	s->flags &= ~L3_SK_BIND_PENDING;
	port = sk->src_port; /* host order */
	if ((s->flags & L3_SK_LISTENER) || !port)
		return 1;
	bcast_key(&bk);
	if (reg_add(&bk, port, s->id, &s->addr))
		return 1;
	s->flags |= L3_SK_LISTENER;
	s->port = port;
	for (i = 0; i < L3_SK_GROUPS; i++) {
		struct l3_addr g = s->groups[i];

		if ((g.w[0] | g.w[1] | g.w[2] | g.w[3]) && first_slot(s, i))
			reg_add(&g, port, s->id, &s->addr);
	}
	return 1;
}

SEC("cgroup/post_bind4")
int l3_post_bind4(struct bpf_sock *sk)
{
	return post_bind(sk);
}

SEC("cgroup/post_bind6")
int l3_post_bind6(struct bpf_sock *sk)
{
	return post_bind(sk);
}

/* A closing socket takes its registrations with it. */
SEC("cgroup/sock_release")
int l3_sock_release(struct bpf_sock *sk)
{
	struct l3_addr bk;
	struct l3_sk *s;
	int i;

	s = sock_state(sk);
	if (!s || !(s->flags & L3_SK_LISTENER))
		return 1;
	bcast_key(&bk);
	reg_del(&bk, s->port, s->id, &s->addr);
	for (i = 0; i < L3_SK_GROUPS; i++) {
		struct l3_addr g = s->groups[i];

		if ((g.w[0] | g.w[1] | g.w[2] | g.w[3]) && first_slot(s, i))
			reg_del(&g, s->port, s->id, &s->addr);
	}
	s->flags &= ~L3_SK_LISTENER;
	return 1;
}
