//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sock.c — the socket layer of l3iso (docs/DESIGN.md rules 1–7).
 *
 * Attached once, as bpf_links, at l3iso's cgroup v2 root (and, for
 * l3_sk_lookup, to the network namespace `l3iso up` ran in). A container is
 * the ancestor cgroup at cfg.level of the calling task (sock_addr hooks) or
 * of the socket (cgroup_skb hooks), so sub-cgroups inherit their container.
 *
 *   bind4/6      ownership and derivative addresses; in a shared container
 *                a TCP bind to a port, and a UDP wildcard bind to one, go to
 *                the wildcard on a shadow port and are entered in l3_binds
 *                (binds.h): the TC programs steer its traffic to them
 *   post_bind4/6 enters what the kernel bound: l3_binds, the broadcast
 *                registry (l3_listen), a host UDP wildcard in l3_hostudp
 *   sockops      listen() on a socket bound to port 0 (or never bound)
 *                enters it in l3_binds
 *   connect4/6   unbound sockets get the container's source (bpf_bind);
 *                127.0.0.1, ::1, 0.0.0.0 and :: are its private loopback
 *   sendmsg4/6   same for unconnected UDP; explicit foreign sources denied
 *   recvmsg4/6, getsockname4/6, getpeername4/6
 *                the private loopback shows as 127.0.0.1 / ::1; a shadow
 *                socket shows what the application bound
 *   setsockopt   multicast joins: the policy, the socket's source filter
 *   sock_release a closing socket's registrations go
 *   ingress/egress (cgroup_skb)
 *                backstop: no container socket receives traffic for an
 *                address it does not own or emits a source it does not own;
 *                a private loopback never leaves its container
 *   l3_sk_lookup refuses (RST, ICMP port unreachable) a connection or
 *                datagram for a container's address that no socket of it
 *                listens for, instead of letting a host wildcard take it;
 *                hands a SYN that ends a TIME_WAIT to its listener
 *                (l3_socks, entered by steer() in steer.h)
 *
 * Units: l3iso.h (the map layouts, shared with Go), maps.h (the maps, address
 * helpers), registry.h (quotas, the listener registry), binds.h (l3_binds),
 * events.h (denial records), mcast.h (joins, source filters, listeners).
 * Every lookup is a hash, array or LPM lookup: O(1) in containers and
 * addresses.
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
#include "registry.h"
#include "binds.h"
#include "events.h"
#include "mcast.h"

#define EPERM 1
#define EINVAL 22
#define EACCES 13
#define ENETUNREACH 101
#define EADDRNOTAVAIL 99

#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define SO_REUSEPORT 15
#define IPPROTO_MPTCP_ 262

#define SK_PASS 1
#define SK_DROP 0

/* bind4/6 may also waive the CAP_NET_BIND_SERVICE check (bit 1). */
#define BIND_OK 1
#define BIND_OK_ANY_PORT 3

#define TCP_STATE_LISTEN 10

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
const enum l3_ofilter_bits *unused_ofilter_bits __attribute__((unused));
const enum l3_lpage_limits *unused_lpage_limits __attribute__((unused));
const enum l3_bind_kind *unused_bind_kind __attribute__((unused));
const enum l3_bval_flags *unused_bval_flags __attribute__((unused));
const enum l3_event_type *unused_event_type __attribute__((unused));
const enum l3_event_limits *unused_event_limits __attribute__((unused));
const struct l3_event *unused_event __attribute__((unused)); /* l3_events records */
const struct l3_purge_req *unused_purge_req __attribute__((unused)); /* tc.c's l3_purge */

/* Maps and the helpers every program shares: maps.h, registry.h, binds.h. */

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

/* Is a container c's own private loopback (either family)? */
static __always_inline int own_loop(const struct l3_cont *c, const struct l3_addr *a)
{
	return addr_eq(a, &c->lo4) || addr_eq(a, &c->lo6);
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

/* TCP, UDP, or MPTCP (a TCP listener underneath: the same ports). */
static __always_inline __u8 sock_proto(__u32 protocol)
{
	return protocol == IPPROTO_MPTCP_ ? IPPROTO_TCP : protocol;
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
		if ((c->flags & L3_CF_LOOP_HOST) && addr_is_loopback(a) &&
		    (!addr_is_host(a) || (c->flags & L3_CF_NETNS)))
			return V_OK; /* the host's loopback (not the host's own address) or its own */
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
	/* stores addressed from ctx itself: the verifier rejects them through
	 * a saved ctx+offset pointer */
	asm volatile("" : "+r"(ctx));
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

/* Write address a to the context, in the socket's family. */
static __always_inline void store_user(struct bpf_sock_addr *ctx, int v6, const struct l3_addr *a)
{
	if (v6)
		store_user6(ctx, a);
	else
		ctx->user_ip4 = a->w[3];
}

/* Deny with an errno of our choosing (as a real namespace would answer). */
static __always_inline int deny(int err)
{
	bpf_set_retval(-err);
	return 0;
}

/*
 * The event of a denied system call of container id (0: the host): what it
 * asked for (a, port; a2, port2 where there is a destination), the errno it
 * got, and for a bind the container that owns the address.
 */
static __always_inline void ev_call(__u32 id, __u16 type, __u16 reason, int err, __u8 proto,
				    const struct l3_addr *a, __u16 port, const struct l3_addr *a2,
				    __u16 port2, __u32 owner)
{
	struct l3_event *e = ev_begin(id, type, reason);

	if (!e)
		return;
	ev_task(e);
	ev_addrs(e, proto, a, port, a2, port2);
	e->err = err;
	e->owner = owner;
	ev_submit(e);
}

/* The container that owns a (any port of it; 0: nobody). */
static __always_inline __u32 owner_id(__u32 gen, const struct l3_addr *a, __u8 proto, __u16 port)
{
	struct l3_owner *o = owner_of(gen, a, proto, port);

	return o ? o->id : 0;
}

static __always_inline int host_netns(struct bpf_sock_addr *ctx, struct l3_cfg *cfg)
{
	return !cfg->netns_cookie || bpf_get_netns_cookie(ctx) == cfg->netns_cookie;
}

/* The socket's l3iso state, made if it has none. */
static __always_inline struct l3_sk *sk_state_make(struct bpf_sock *sk)
{
	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&l3_skstore, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
}

/* A socket's l3iso state, if l3iso is up and the socket has any. */
static __always_inline struct l3_sk *sock_state(struct bpf_sock *sk)
{
	if (!sk || !config())
		return NULL; /* not up yet */
	return bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
}

/* ------------------------------------------------------------------- bind */

/*
 * A UDP wildcard bind of container c: remember it on the socket;
 * l3_post_bind registers it as a broadcast/multicast listener once the
 * kernel has bound the socket — so a bind that fails registers nothing,
 * and a bind to port 0 is registered on the port the kernel chose. Its
 * copies are looked up at its container's address of their family.
 */
static __always_inline void mark_listener(struct l3_sk *s, struct l3_cont *c, __u16 port)
{
	if (!s || (s->flags & L3_SK_LISTENER))
		return;
	s->id = c->id;
	__builtin_memset(&s->addr, 0, sizeof(s->addr));
	__builtin_memset(&s->addr6, 0, sizeof(s->addr6));
	if (c->flags & L3_CF_HAS4)
		s->addr = c->primary4;
	if (c->flags & L3_CF_HAS6)
		s->addr6 = c->primary6;
	s->port = port;
	s->flags |= L3_SK_BIND_PENDING;
}

/* The application's own SO_REUSEPORT and SO_REUSEADDR, as l3_bval flags. */
static __always_inline __u8 app_reuse(struct bpf_sock_addr *ctx)
{
	int v = 0;
	__u8 f = 0;

	if (!bpf_getsockopt(ctx, SOL_SOCKET, SO_REUSEPORT, &v, sizeof(v)) && v)
		f |= L3_BV_REUSEPORT;
	v = 0;
	if (!bpf_getsockopt(ctx, SOL_SOCKET, SO_REUSEADDR, &v, sizeof(v)) && v)
		f |= L3_BV_REUSEADDR;
	return f;
}

static __always_inline void set_reuseaddr(struct bpf_sock_addr *ctx)
{
	int one = 1;

	bpf_setsockopt(ctx, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
}

/*
 * Rule 3, a bind of shared container c to port (host order) at a — its
 * own address, its private loopback (for 127.0.0.1 / ::1), or zero for the
 * wildcard. A TCP bind, and a UDP wildcard bind, go to the wildcard on a
 * shadow port: the kernel's bind table never holds the port the
 * application named, so the host and every container can each listen on
 * *:port (and a container's listener on an address of its own never
 * collides with a host wildcard listener either). l3_post_bind enters the
 * socket in l3_binds, through which the TC programs steer (address, port)
 * to it. A UDP bind to an address keeps it, with SO_REUSEADDR (a host
 * wildcard on the port has it too, see host_bind), and is entered as well.
 * What the kernel would refuse between two of the container's own sockets
 * — the same address and port twice, without SO_REUSEPORT on both (or
 * SO_REUSEADDR on both, for UDP) — is refused here: EADDRINUSE. Port 0:
 * TCP sockets are entered when they listen (l3_sockops); UDP ones are
 * clients, and stay as they are. Returns 0 or the errno to deny with.
 */
static __always_inline int bind_shared(struct bpf_sock_addr *ctx, struct l3_cont *c,
				       const struct l3_addr *a, int wild, __u16 port, int v6,
				       struct l3_sk **sp)
{
	__u8 proto = sock_proto(ctx->protocol);
	struct l3_bkey k = {.id = c->id, .proto = proto, .port = port};
	struct l3_bval *v;
	struct l3_sk *s;
	int shadow, join = 0;
	__u8 f;

	*sp = NULL;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (wild) {
		k.kind = v6 && !addr_is_mapped(a) ? L3_BK_ANY6 : L3_BK_ANY4;
	} else {
		k.kind = L3_BK_EXACT;
		k.addr = *a;
	}
	if (port == 0) {
		if (proto == IPPROTO_TCP && (s = sk_state_make(ctx->sk))) {
			s->bkey = k; /* its port once it listens */
			s->bflags = 0;
			s->flags |= L3_SK_REG_LISTEN;
			*sp = s;
		}
		return 0;
	}
	shadow = proto == IPPROTO_TCP || wild;
	f = app_reuse(ctx);
	v = bpf_map_lookup_elem(&l3_binds, &k);
	if (v && !(v->flags & L3_BV_DEAD)) {
		__u8 both = f & v->flags;

		if (!((both & L3_BV_REUSEPORT) || (proto == IPPROTO_UDP && (both & L3_BV_REUSEADDR)))) {
			count(c->id, L3_C_BIND_INUSE);
			ev_call(c->id, L3_EV_BIND, L3_C_BIND_INUSE, EADDRINUSE, proto, &k.addr, port, NULL, 0, c->id);
			return EADDRINUSE;
		}
		join = 1;
	}
	s = sk_state_make(ctx->sk);
	if (!s) {
		count(c->id, L3_C_SOCK_QUOTA);
		ev_call(c->id, L3_EV_BIND, L3_C_SOCK_QUOTA, ENOBUFS, proto, &k.addr, port, NULL, 0, 0);
		return ENOBUFS;
	}
	s->bkey = k;
	s->bflags = f;
	s->flags |= L3_SK_REG_BIND | (shadow ? L3_SK_SHADOW : 0) | (join ? L3_SK_JOIN : 0);
	*sp = s;
	if (shadow) {
		/* The wildcard of its family, on a port the kernel chooses, or
		 * on the one it joins. */
		if (v6) {
			struct l3_addr any = {};

			store_user6(ctx, &any);
		} else {
			ctx->user_ip4 = 0;
		}
		asm volatile("" : "+r"(ctx));
		ctx->user_port = join && v ? bpf_htons(v->sport) : 0;
	} else {
		set_reuseaddr(ctx);
	}
	return 0;
}

/*
 * A host UDP wildcard bind to port (host order): if the host has no
 * wildcard socket on the port yet, it gets SO_REUSEADDR, so that the
 * containers' UDP sockets at their own addresses (which have it too) can
 * share the port with it; the kernel still refuses a second host wildcard
 * on the port, or one beside a host socket at an address, as it would
 * without l3iso (they lack SO_REUSEADDR). Counted in l3_hostudp: datagrams
 * for a container's address on such a port that no container socket takes
 * are refused (l3_sk_lookup), not handed to the host.
 */
static __always_inline void host_bind(struct bpf_sock_addr *ctx, __u16 port, int v6)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	struct l3_sk *s;

	if (ctx->protocol != IPPROTO_UDP || !port)
		return;
	t.ipv4.dport = bpf_htons(port);
	own_lookup(1);
	sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk && v6) {
		__builtin_memset(&t, 0, sizeof(t));
		t.ipv6.dport = bpf_htons(port);
		sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	own_lookup(-1);
	if (sk) {
		bpf_sk_release(sk);
		return;
	}
	s = sk_state_make(ctx->sk);
	if (!s)
		return;
	set_reuseaddr(ctx);
	s->port = port;
	s->flags |= L3_SK_REG_BIND | L3_SK_HOST_WILD;
	s->flags &= ~L3_SK_BOUND;
}

/* Rule 2 for a host socket: the host loses visibility of pushed addresses. */
static __always_inline int bind_host(struct bpf_sock_addr *ctx, struct l3_cfg *cfg, __u32 gen,
				     const struct l3_addr *a, __u16 port, int v6)
{
	if (!host_netns(ctx, cfg))
		return BIND_OK;
	if (owned_by_anyone(gen, a) || (addr_is_private_loop(a) && !addr_is_host(a))) {
		__u32 owner = addr_is_private_loop(a) ? private_id(a) : owner_id(gen, a, 0, 0);

		count(0, L3_C_HOST_BIND_DENIED);
		ev_call(0, L3_EV_BIND, L3_C_HOST_BIND_DENIED, EADDRNOTAVAIL, sock_proto(ctx->protocol), a,
			port, NULL, 0, owner);
		return deny(EADDRNOTAVAIL);
	}
	if (addr_is_any(a))
		host_bind(ctx, port, v6);
	return BIND_OK;
}

/* Not an address of container c: as in a namespace without it. */
static __always_inline int bind_foreign(struct bpf_sock_addr *ctx, struct l3_cont *c, __u32 gen,
					const struct l3_addr *a, __u16 port)
{
	count(c->id, L3_C_BIND_DENIED_FOREIGN);
	ev_call(c->id, L3_EV_BIND, L3_C_BIND_DENIED_FOREIGN, EADDRNOTAVAIL, sock_proto(ctx->protocol),
		a, port, NULL, 0, addr_is_private_loop(a) ? private_id(a) : owner_id(gen, a, 0, 0));
	return deny(EADDRNOTAVAIL);
}

/*
 * Rule 3, a wildcard bind of shared container c: a shadow socket of its
 * own that hears its addresses (bind_shared); port 0, a client most
 * likely: its address of the family, its source (a listener bound so is
 * entered when it listens).
 */
static __always_inline int bind_wild(struct bpf_sock_addr *ctx, struct l3_cont *c, __u32 gen,
				     const struct l3_addr *a, __u16 port, int v6)
{
	__u8 proto = sock_proto(ctx->protocol);
	struct l3_sk *s = NULL;
	struct l3_addr own;
	int err;

	if (v6 ? !(c->flags & (L3_CF_HAS4 | L3_CF_HAS6)) : !(c->flags & L3_CF_HAS4))
		return bind_foreign(ctx, c, gen, a, port);
	if (port) {
		err = bind_shared(ctx, c, a, 1, port, v6, &s);
		if (err)
			return deny(err);
		if (proto == IPPROTO_UDP)
			mark_listener(s, c, port);
		count(c->id, L3_C_BIND_REWRITTEN);
		return BIND_OK_ANY_PORT;
	}
	if (!v6 || addr_is_mapped(a) || !(c->flags & L3_CF_HAS6))
		own = c->primary4; /* IPv4, or a dual-stack socket of an IPv4-only container */
	else
		own = c->primary6;
	if (!(c->flags & L3_CF_HAS4) && addr_is_mapped(&own))
		return bind_foreign(ctx, c, gen, a, port);
	store_user(ctx, v6, &own);
	count(c->id, L3_C_BIND_REWRITTEN);
	bind_shared(ctx, c, a, 1, 0, v6, &s);
	if (proto == IPPROTO_UDP)
		mark_listener(s ? s : sk_state_make(ctx->sk), c, 0);
	return BIND_OK_ANY_PORT;
}

/* Rule 5: a shared container's 127.0.0.1 / ::1 is its private loopback. */
static __always_inline int bind_loopback(struct bpf_sock_addr *ctx, struct l3_cont *c,
					 const struct l3_addr *a, __u16 port, int v6)
{
	const struct l3_addr *lo = addr_is_mapped(a) ? &c->lo4 : &c->lo6;
	struct l3_sk *s;
	int err;

	store_user(ctx, v6, lo);
	count(c->id, L3_C_LOOP_REMAPPED);
	err = bind_shared(ctx, c, lo, 0, port, v6, &s);
	if (err)
		return deny(err);
	return BIND_OK_ANY_PORT;
}

/* A bind of container c to address a (no wildcard): its own (rule 2). */
static __always_inline int bind_addr(struct bpf_sock_addr *ctx, struct l3_cont *c, __u32 gen,
				     const struct l3_addr *a, __u16 port, int v6)
{
	__u8 proto = sock_proto(ctx->protocol);
	enum verdict v = may_use(gen, c, a, proto, port);
	struct l3_sk *s;
	int err;

	if (v == V_PORT) {
		/* Another container owns this port of a shared IP (or nobody does). */
		count(c->id, L3_C_BIND_DENIED_PORT);
		ev_call(c->id, L3_EV_BIND, L3_C_BIND_DENIED_PORT, EACCES, proto, a, port, NULL, 0,
			owner_id(gen, a, proto, port));
		return deny(EACCES);
	}
	if (v != V_OK)
		return bind_foreign(ctx, c, gen, a, port);
	if (!(c->flags & L3_CF_NETNS)) {
		struct l3_local *l = local_of(gen, c->id, a);

		if (l && l->kind != L3_LOCAL_BCAST) {
			err = bind_shared(ctx, c, a, 0, port, v6, &s);
			if (err)
				return deny(err);
		} else if (ctx->protocol == IPPROTO_UDP && (l || addr_is_mcast(a))) {
			/* its subnet's broadcast address, or a group: beside a
			 * host wildcard on the port (host_bind) */
			set_reuseaddr(ctx);
		}
	}
	count(c->id, L3_C_BIND_ALLOWED);
	return BIND_OK_ANY_PORT;
}

/*
 * bind4/6. A netns container's wildcard stays one (its own stack: no
 * other container can collide with it, and its kernel delivers broadcasts
 * and multicast to it), registered under its addresses (which l3_delivs
 * maps to its veth) for the TC fan-out.
 */
static __always_inline int do_bind(struct bpf_sock_addr *ctx, struct l3_addr *a, int v6)
{
	struct l3_cfg *cfg = config();
	__u16 port = bpf_ntohs(ctx->user_port);
	struct l3_cont *c;
	__u32 gen;

	if (!cfg)
		return BIND_OK;
	gen = active_gen();
	c = task_container(gen, cfg);
	if (!c)
		return bind_host(ctx, cfg, gen, a, port, v6);
	if (c->flags & L3_CF_NETNS) {
		if (!addr_is_any(a))
			return bind_addr(ctx, c, gen, a, port, v6);
		if (!(c->flags & (L3_CF_HAS4 | L3_CF_HAS6)))
			return bind_foreign(ctx, c, gen, a, port);
		if (sock_proto(ctx->protocol) == IPPROTO_UDP)
			mark_listener(sk_state_make(ctx->sk), c, port);
		count(c->id, L3_C_BIND_ALLOWED);
		return BIND_OK_ANY_PORT;
	}
	if (addr_is_any(a))
		return bind_wild(ctx, c, gen, a, port, v6);
	if (addr_is_host(a))
		return bind_foreign(ctx, c, gen, a, port); /* no container poses as the host */
	if (addr_is_loopback(a) && !(c->flags & L3_CF_LOOP_HOST))
		return bind_loopback(ctx, c, a, port, v6);
	return bind_addr(ctx, c, gen, a, port, v6);
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

/* The address a socket of family v6 holds (mapped form), zero for the
 * wildcard. (post_bind6 may not read src_ip4: v6 is a constant there.) */
static __always_inline void sk_bound(struct bpf_sock *sk, int v6, struct l3_addr *a)
{
	__builtin_memset(a, 0, sizeof(*a));
	if (!v6) {
		if (sk->src_ip4)
			addr_set4(a, sk->src_ip4);
		return;
	}
	a->w[0] = sk->src_ip6[0];
	a->w[1] = sk->src_ip6[1];
	a->w[2] = sk->src_ip6[2];
	a->w[3] = sk->src_ip6[3];
	if (addr_is_any(a))
		__builtin_memset(a, 0, sizeof(*a));
}

/* The address a socket is bound to (mapped form), zero if unbound. */
static __always_inline void bound_addr(struct bpf_sock_addr *ctx, int v6, struct l3_addr *a)
{
	struct bpf_sock *sk = ctx->sk;

	if (sk)
		sk_bound(sk, v6, a);
	else
		__builtin_memset(a, 0, sizeof(*a));
}

enum route_count {
	RC_ALLOWED = 1 << 0,	   /* connect_allowed */
	RC_REMAPPED = 1 << 1,	   /* loopback_remapped: the destination */
	RC_REWRITTEN = 1 << 2,	   /* source_rewritten: the source route_out chose */
	RC_HOST_REWRITTEN = 1 << 3, /* host_source_rewritten */
};

/* The counters of an allowed call; rewritten = 0: the source route_out
 * chose was not used (sendmsg with an explicit one, IP_PKTINFO). */
static __always_inline void count_route(__u32 id, __u32 cnt, int rewritten)
{
	if (cnt & RC_ALLOWED)
		count(id, L3_C_CONNECT_ALLOWED);
	if (cnt & RC_REMAPPED)
		count(id, L3_C_LOOP_REMAPPED);
	if (!rewritten)
		return;
	if (cnt & RC_REWRITTEN)
		count(id, L3_C_SRC_REWRITTEN);
	if (cnt & RC_HOST_REWRITTEN)
		count(0, L3_C_HOST_SRC_REWRITTEN);
}

/*
 * Shared by connect and sendmsg: where a destination leads and which
 * source a socket uses. Returns 1 to allow, 0 denied (errno set), the
 * source to use in *src when *set_src, and the destination the kernel
 * will use in *dst. What an allowed call counts (enum route_count) is
 * left in *cnt: the caller adds it (count_route) once the call is
 * allowed for good — connect's bpf_bind can still fail, sendmsg can
 * still refuse a loopback source.
 *
 *   host        → a private loopback: ENETUNREACH (no container's loopback
 *                 is anyone else's); → a shared container's address, unbound:
 *                 from the host's own address (L3_HOST4 / L3_HOST6), which
 *                 no container can use as a source
 *   container   → 127.0.0.0/8, ::1, 0.0.0.0, :: (the kernel's loopback for an
 *                 unspecified destination): its private loopback (unless
 *                 loopback: host); → another's private loopback: ENETUNREACH;
 *                 from its private loopback to anywhere else: EINVAL (as a
 *                 namespace refuses a loopback source off lo); unbound: its
 *                 own address toward dst (rule 4)
 */
static __always_inline int route_out(struct bpf_sock_addr *ctx, int v6, struct l3_cfg *cfg,
				     __u32 gen, struct l3_cont *c, struct l3_addr *dst,
				     struct l3_addr *src, int *set_src, __u32 *cnt, __u16 ev)
{
	__u16 dport = bpf_ntohs(ctx->user_port);
	__u8 proto = sock_proto(ctx->protocol);
	struct l3_addr bound;

	*set_src = 0;
	*cnt = 0;
	if (v6)
		load_user6(ctx, dst);
	else
		load_user4(ctx, dst);
	bound_addr(ctx, v6, &bound);

	if (!c) {
		if (!host_netns(ctx, cfg))
			return 1;
		if (addr_is_private_loop(dst) && !addr_is_host(dst)) {
			count(0, L3_C_LOOP_DENIED);
			ev_call(0, ev, L3_C_LOOP_DENIED, ENETUNREACH, proto, &bound, 0, dst, dport, 0);
			return deny(ENETUNREACH);
		}
		/*
		 * Host → shared container address: the kernel would use the
		 * container's own IP as source (it is local). The host may not
		 * use it (rule 2): it talks from its own address instead. A
		 * netns container's address is not local: it is routed to its
		 * veth, and the kernel's source is a host address.
		 */
		if (addr_is_any(&bound) && owned_on_host(gen, dst)) {
			host_addr_like(dst, src);
			*set_src = 1;
			*cnt = RC_HOST_REWRITTEN;
		}
		return 1;
	}

	if ((addr_is_loopback(dst) || addr_is_any(dst)) && !addr_is_host(dst)) {
		if (c->flags & L3_CF_LOOP_HOST) {
			/* loopback: host — the host's 127.0.0.1 / ::1, kernel source */
			*cnt = RC_ALLOWED;
			return 1;
		}
		/* Rule 5: its private loopback (where the kernel would take
		 * 0.0.0.0 / :: too; :: on a socket bound to an IPv4-mapped
		 * address is ::ffff:127.0.0.1 there). */
		if (addr_is_mapped(dst) || (addr_is_any(dst) && addr_is_mapped(&bound)))
			*dst = c->lo4;
		else
			*dst = c->lo6;
		if (v6) {
			store_user6(ctx, dst);
		} else {
			ctx->user_ip4 = dst->w[3];
		}
		*cnt = RC_ALLOWED | RC_REMAPPED;
		if (addr_is_any(&bound)) {
			*src = *dst;
			*set_src = 1;
		}
		return 1;
	}
	if (addr_is_private_loop(dst) && !addr_is_host(dst)) {
		/* Another container's loopback (IPv6: 127/8 is all its own). */
		count(c->id, L3_C_LOOP_DENIED);
		ev_call(c->id, ev, L3_C_LOOP_DENIED, ENETUNREACH, proto, &bound, 0, dst, dport, 0);
		return deny(ENETUNREACH);
	}
	if (!addr_is_any(&bound)) {
		if (own_loop(c, &bound)) {
			/* A loopback source never leaves its container. */
			count(c->id, L3_C_LOOP_DENIED);
			ev_call(c->id, ev, L3_C_LOOP_DENIED, EINVAL, proto, &bound, 0, dst, dport, 0);
			return deny(EINVAL);
		}
		/* bind already checked it */
		*cnt = RC_ALLOWED;
		return 1;
	}
	if (pick_source(gen, c, dst, src) < 0) {
		/* No address of this family: nothing it could send from. */
		count(c->id, L3_C_NO_ADDR);
		ev_call(c->id, ev, L3_C_NO_ADDR, ENETUNREACH, proto, NULL, 0, dst, dport, 0);
		return deny(ENETUNREACH);
	}
	*set_src = 1;
	*cnt = RC_ALLOWED | RC_REWRITTEN;
	return 1;
}

static __always_inline int do_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_cfg *cfg = config();
	struct l3_addr src, dst;
	struct l3_cont *c;
	__u32 gen, id, cnt;
	int set_src;
	long err;

	if (!cfg)
		return 1;
	gen = active_gen();
	c = task_container(gen, cfg);
	if (!route_out(ctx, v6, cfg, gen, c, &dst, &src, &set_src, &cnt, L3_EV_CONNECT))
		return 0;
	id = c ? c->id : 0;
	if (!set_src) {
		count_route(id, cnt, 0);
		return 1;
	}
	if (v6) {
		struct sockaddr_in6 sa = {.sin6_family = 10 /* AF_INET6 */};

		__builtin_memcpy(&sa.sin6_addr, src.w, 16);
		err = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	} else {
		struct sockaddr_in sa = {.sin_family = 2 /* AF_INET */};

		sa.sin_addr.s_addr = src.w[3];
		err = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	}
	if (!err) {
		count_route(id, cnt, 1);
		return 1;
	}
	/* The socket is bound to a port already (a container's fixed-port
	 * bind is a shadow: the wildcard, on l3iso's port) and the kernel
	 * binds no address to it now: nothing it could send from. Nothing
	 * was allowed or rewritten. */
	count(id, L3_C_CONNECT_BOUND);
	ev_call(id, L3_EV_CONNECT, L3_C_CONNECT_BOUND, EADDRNOTAVAIL, sock_proto(ctx->protocol), &src, 0,
		&dst, bpf_ntohs(ctx->user_port), 0);
	return deny(EADDRNOTAVAIL);
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
	struct l3_addr msrc, src, dst;
	struct l3_cont *c;
	__u32 gen, cnt;
	int set_src;

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

		if (may_use(gen, c, &msrc, sock_proto(ctx->protocol), sport) != V_OK) {
			/* Rule 4: never a packet from a source it does not own. */
			count(c->id, L3_C_SEND_DENIED_SPOOF);
			if (v6)
				load_user6(ctx, &dst);
			else
				load_user4(ctx, &dst);
			ev_call(c->id, L3_EV_SENDMSG, L3_C_SEND_DENIED_SPOOF, EPERM, sock_proto(ctx->protocol),
				&msrc, sport, &dst, bpf_ntohs(ctx->user_port), 0);
			return deny(EPERM);
		}
	}

	if (!route_out(ctx, v6, cfg, gen, c, &dst, &src, &set_src, &cnt, L3_EV_SENDMSG))
		return 0;
	if (c && !addr_is_any(&msrc) && own_loop(c, &msrc) && !own_loop(c, &dst)) {
		/* A loopback source never leaves its container. */
		count(c->id, L3_C_LOOP_DENIED);
		ev_call(c->id, L3_EV_SENDMSG, L3_C_LOOP_DENIED, EINVAL, sock_proto(ctx->protocol), &msrc, 0,
			&dst, bpf_ntohs(ctx->user_port), 0);
		return deny(EINVAL);
	}
	count_route(c ? c->id : 0, cnt, set_src && addr_is_any(&msrc));
	if (!set_src || !addr_is_any(&msrc))
		return 1; /* the kernel's source, or its explicit one (IP_PKTINFO, checked above) */
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
 * Show a container's private loopback as 127.0.0.1 / ::1.
 *
 * These hooks run on every recvfrom, getsockname and getpeername of every
 * process under l3iso's cgroup, the host's and netns containers' included,
 * so the common cases leave early: an address that is no private
 * loopback, then a socket in another netns (a netns container's loopback
 * is its own) — before the container lookup (a cgroup walk and a hash
 * lookup), the costly part.
 */
static __always_inline int show_loopback(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_addr a, lo;
	struct l3_cfg *cfg;
	struct l3_cont *c;

	/* The address first: it costs two loads and no call, and nearly
	 * every datagram leaves here. */
	if (v6)
		load_user6(ctx, &a);
	else
		load_user4(ctx, &a);
	if (!addr_is_private_loop(&a) || addr_is_host(&a))
		return 1;
	cfg = config();
	if (!cfg || !host_netns(ctx, cfg))
		return 1; /* a netns container's loopback is its own */
	c = task_container(active_gen(), cfg);
	if (!c || (c->flags & L3_CF_LOOP_HOST) || !own_loop(c, &a))
		return 1;
	loopback_of(&a, &lo);
	store_user(ctx, v6, &lo);
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

/*
 * getsockname: a shadow socket (bind_shared) shows what the application
 * bound — the wildcard, its address, or 127.0.0.1 / ::1 — and the port it
 * asked for (l3_sports: an MPTCP listener's socket is not the one its bind
 * ran on); any other socket as recvmsg does. A shadow is known by where it
 * is — the wildcard, in l3iso's namespace — and by whose it is: l3_sports
 * is keyed by the port alone, and an IPv6-only host socket, or a netns
 * container's in its own namespace, may hold the same number.
 */
static __always_inline int show_own(struct bpf_sock_addr *ctx, int v6)
{
	struct l3_sport *sp;
	struct l3_cfg *cfg;
	struct l3_cont *c;
	struct l3_addr a;

	if (v6)
		load_user6(ctx, &a);
	else
		load_user4(ctx, &a);
	if (!addr_is_any(&a))
		return show_loopback(ctx, v6);
	cfg = config();
	if (!cfg || !host_netns(ctx, cfg))
		return 1;
	sp = sport_of(sock_proto(ctx->protocol), bpf_ntohs(ctx->user_port));
	if (!sp || !sp->id)
		return 1;
	c = task_container(active_gen(), cfg);
	if (c && c->id == sp->id) {
		a = sp->view;
		if (addr_is_private_loop(&a))
			loopback_of(&a, &a);
		store_user(ctx, v6, &a);
		asm volatile("" : "+r"(ctx));
		ctx->user_port = bpf_htons(sp->aport);
	}
	return 1;
}

SEC("cgroup/getsockname4")
int l3_getsockname4(struct bpf_sock_addr *ctx)
{
	return show_own(ctx, 0);
}

SEC("cgroup/getsockname6")
int l3_getsockname6(struct bpf_sock_addr *ctx)
{
	return show_own(ctx, 1);
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
		__u32 off = sizeof(ip6);
		__u8 h[2];

		__builtin_memcpy(p->src.w, &ip6.saddr, 16);
		__builtin_memcpy(p->dst.w, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		/* Extension headers (an IPV6_DSTOPTS socket's, a routing
		 * header's), as l4_of walks them: a port-range owner's check
		 * needs the ports behind them. Never a fragment header here:
		 * ingress sees the reassembled datagram, egress the whole. */
#pragma unroll
		for (int i = 0; i < L3_EXTHDRS; i++) {
			if (!ext_hdr(p->proto) || off > 255 || LOAD(skb, off & 0x1ff, h, sizeof(h)))
				break;
			p->proto = h[0];
			off += ((__u32)h[1] + 1) * 8;
		}
		if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && off <= 255 &&
		    !LOAD(skb, off & 0x1ff, ports, sizeof(ports))) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
		}
		return 0;
	}
	return -1;
}

/* The event of a packet dropped at container id's socket (0: a host socket). */
static __always_inline void ev_pkt(__u32 id, __u16 type, __u16 reason, const struct pkt *p)
{
	struct l3_event *e = ev_begin(id, type, reason);

	if (!e)
		return;
	ev_addrs(e, p->proto, &p->src, p->sport, &p->dst, p->dport);
	ev_submit(e);
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

	if (addr_is_private_loop(&p->src) && !addr_is_host(&p->src) && !own_loop(c, &p->src))
		return 0; /* another container's loopback never reaches it */
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
		/* Host sockets: container addresses are not theirs (rule 2),
		 * nor is anything a container's loopback sent. */
		if (owned_by_anyone(gen, &p.dst) ||
		    ((addr_is_private_loop(&p.dst) || addr_is_private_loop(&p.src)) &&
		     !addr_is_host(&p.dst) && !addr_is_host(&p.src))) {
			count(0, L3_C_HOST_INGRESS_DROP);
			ev_pkt(0, L3_EV_INGRESS, L3_C_HOST_INGRESS_DROP, &p);
			return SK_DROP;
		}
		return SK_PASS;
	}
	if (may_receive(skb, gen, c, &p))
		return SK_PASS;
	/* Rule 3: traffic for another container's (or the host's) address. */
	count(c->id, L3_C_INGRESS_DROP_FOREIGN);
	ev_pkt(c->id, L3_EV_INGRESS, L3_C_INGRESS_DROP_FOREIGN, &p);
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
		if (l->kind == L3_LOCAL_LOOP && !addr_eq(&p.dst, &p.src)) {
			/* Rule 5: its loopback reaches only itself. */
			count(c->id, L3_C_LOOP_DENIED);
			ev_pkt(c->id, L3_EV_EGRESS, L3_C_LOOP_DENIED, &p);
			return SK_DROP;
		}
		if (l->kind != L3_LOCAL_PART)
			return SK_PASS;
		struct l3_owner *o = owner_of(gen, &p.src, p.proto, p.sport);

		if (o && o->id == c->id)
			return SK_PASS;
	} else if (!l && (c->flags & L3_CF_LOOP_HOST) && addr_is_loopback(&p.src) && !addr_is_host(&p.src)) {
		return SK_PASS;
	}
	/* Rule 4: a container never emits a source it does not own. */
	count(c->id, L3_C_EGRESS_DROP_SPOOF);
	ev_pkt(c->id, L3_EV_EGRESS, L3_C_EGRESS_DROP_SPOOF, &p);
	return SK_DROP;
}

/* ------------------------------------------ multicast joins (rule 6) */

/*
 * Multicast joins (rule 6). The program runs before the kernel applies the
 * option: a join of a group outside the container's policy fails with
 * EPERM; a join naming no interface is pointed at the uplink; every other
 * change is mirrored in the socket's slots (struct l3_sk; mcast.h,
 * slots_change) so that l3iso can apply the socket's source filter to the
 * copies it assigns to it. A slot that does not fit (L3_SK_GROUPS per
 * socket) fails the option with ENOBUFS, before the kernel runs it; so
 * does a group a listening socket cannot register (its quota). A
 * listening socket has each group in l3_listen once, from its first slot
 * to its last.
 */
SEC("cgroup/setsockopt")
int l3_setsockopt(struct bpf_sockopt *ctx)
{
	struct l3_cfg *cfg = config();
	struct l3_addr g, src = {};
	struct l3_cont *c;
	struct jstate j;
	struct l3_sk *s;
	int op, has_src = 0;
	__u8 mode = 0;
	__u32 gen;

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
		ev_call(c->id, L3_EV_JOIN, L3_C_JOIN_DENIED, EPERM, IPPROTO_UDP, &g, 0, NULL, 0, 0);
		return deny(EPERM);
	}
	if (!(c->flags & L3_CF_NETNS))
		join_on_uplink(ctx, cfg);
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

	slots_scan(s, &g, &src, &j);
	switch (slots_change(s, op, &g, &src, &j, &mode)) {
	case JC_LEFT:
		if (s->flags & L3_SK_LISTENER)
			listener_del(s, &g);
		return 1;
	case JC_NONE:
		return 1;
	}
	/* A new slot (join, join a source, block a source). */
	if (!j.free) {
		/* more than l3iso tracks per socket */
		count(c->id, L3_C_SOCK_QUOTA);
		ev_call(c->id, L3_EV_JOIN, L3_C_SOCK_QUOTA, ENOBUFS, IPPROTO_UDP, &g, 0, NULL, 0, 0);
		return deny(ENOBUFS);
	}
	slot_add(s, &g, &src, mode);
	if (op == J_BLOCK || j.ng)
		return 1; /* the group was there already */
	if ((s->flags & L3_SK_LISTENER) && listener_add(s, &g)) {
		/* Over its quota (or the registry is full): the join fails. */
		slots_drop(s, &g, 0, &src, 1);
		ev_call(c->id, L3_EV_JOIN, L3_C_SOCK_QUOTA, ENOBUFS, IPPROTO_UDP, &g, 0, NULL, 0, 0);
		return deny(ENOBUFS);
	}
	return 1;
}

/* ------------------------------------------------ registration (rule 3, 6) */

/*
 * After a bind the kernel made: enter what bind remembered — the socket in
 * l3_binds (bind_shared), a host wildcard in l3_hostudp (host_bind), a UDP
 * wildcard socket as a broadcast/multicast listener on the port it holds
 * (chosen by the kernel for port 0), with the groups it joined before. A
 * registration beyond the container's quota fails the bind (ENOBUFS), and
 * nothing of it stays registered.
 */
static __always_inline int post_bind(struct bpf_sock *sk, int v6)
{
	struct l3_addr sa, bk;
	struct l3_sk *s;
	__u16 port;
	int err = 0, i, n = 0;

	s = sock_state(sk);
	if (!s)
		return 1;
	port = sk->src_port; /* host order */
	if (s->flags & L3_SK_REG_BIND) {
		s->flags &= ~L3_SK_REG_BIND;
		if (s->flags & L3_SK_HOST_WILD) {
			__u32 k = port, *hn = bpf_map_lookup_elem(&l3_hostudp, &k);

			if (hn)
				__sync_fetch_and_add(hn, 1);
			s->port = port;
			return 1;
		}
		sk_bound(sk, v6, &sa);
		err = binds_add(s, port, &sa);
		if (err) {
			s->flags &= ~(L3_SK_SHADOW | L3_SK_BIND_PENDING);
			ev_call(s->bkey.id, L3_EV_BIND, err == -EADDRINUSE ? L3_C_BIND_INUSE : L3_C_SOCK_QUOTA, -err,
				s->bkey.proto, &s->bkey.addr, s->bkey.port, NULL, 0, 0);
			return deny(-err);
		}
	}
	if (!(s->flags & L3_SK_BIND_PENDING))
		return 1;
	s->flags &= ~L3_SK_BIND_PENDING;
	if ((s->flags & L3_SK_LISTENER) || !port)
		return 1;
	s->kport = port;
	if (!s->port)
		s->port = port;
	bcast_key(&bk);
	if (listener_add(s, &bk)) {
		err = ENOBUFS;
		n = -1;
	}
	for (i = 0; i < L3_SK_GROUPS && !err; i++) {
		struct l3_addr g = s->groups[i];

		if (!(g.w[0] | g.w[1] | g.w[2] | g.w[3]) || !first_slot(s, i))
			continue;
		if (listener_add(s, &g))
			err = ENOBUFS;
		else
			n++;
	}
	if (!err) {
		s->flags |= L3_SK_LISTENER;
		return 1;
	}
	if (n >= 0)
		listener_del_all(s, n);
	binds_del(s);
	s->flags &= ~L3_SK_SHADOW;
	ev_call(s->id, L3_EV_BIND, L3_C_SOCK_QUOTA, ENOBUFS, IPPROTO_UDP, NULL, s->port, NULL, 0, 0);
	return deny(ENOBUFS);
}

SEC("cgroup/post_bind4")
int l3_post_bind4(struct bpf_sock *sk)
{
	return post_bind(sk, 0);
}

SEC("cgroup/post_bind6")
int l3_post_bind6(struct bpf_sock *sk)
{
	return post_bind(sk, 1);
}

/*
 * listen() on a socket that bind_shared left on the port it was given —
 * port 0, the kernel's choice — or that never was bound (the kernel bound
 * the wildcard): enter it in l3_binds now, at the port it holds, so its
 * connections are steered to it. A wildcard one hears every address of its
 * container. Clients that bind port 0 before they connect never listen:
 * they take no entry.
 */
SEC("sockops")
int l3_sockops(struct bpf_sock_ops *ctx)
{
	struct l3_cfg *cfg;
	struct bpf_sock *sk;
	struct l3_addr sa;
	struct l3_sk *s;

	if (ctx->op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	cfg = config();
	sk = ctx->sk;
	if (!cfg || !sk)
		return 1;
	if (cfg->netns_cookie && bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return 1; /* a netns container's wildcard is its own */
	s = bpf_sk_storage_get(&l3_skstore, sk, 0, 0);
	if (s && (s->flags & L3_SK_BOUND))
		return 1; /* entered when it was bound */
	if (!s || !(s->flags & L3_SK_REG_LISTEN)) {
		struct l3_cont *c = task_container(active_gen(), cfg);

		if (!c || (c->flags & L3_CF_NETNS))
			return 1;
		s = sk_state_make(sk);
		if (!s)
			return 1;
		__builtin_memset(&s->bkey, 0, sizeof(s->bkey));
		s->bkey.id = c->id;
		s->bkey.proto = IPPROTO_TCP;
		s->bkey.kind = ctx->family == 10 /* AF_INET6 */ ? L3_BK_ANY6 : L3_BK_ANY4;
	}
	s->flags &= ~L3_SK_REG_LISTEN;
	s->bkey.port = ctx->local_port;
	sk_bound(sk, ctx->family == 10 /* AF_INET6 */, &sa);
	binds_add(s, ctx->local_port, &sa); /* counted if it fails */
	return 1;
}

/* A closing socket takes its registrations with it. */
SEC("cgroup/sock_release")
int l3_sock_release(struct bpf_sock *sk)
{
	struct l3_sk *s;

	s = sock_state(sk);
	if (!s)
		return 1;
	binds_del(s);
	if ((s->flags & L3_SK_HOST_WILD) && !(s->flags & L3_SK_REG_BIND)) {
		__u32 k = s->port, *hn = bpf_map_lookup_elem(&l3_hostudp, &k);

		if (hn && *hn)
			__sync_fetch_and_sub(hn, 1);
		s->flags &= ~L3_SK_HOST_WILD;
	}
	if (s->flags & L3_SK_LISTENER)
		listener_del_all(s, L3_SK_GROUPS);
	return 1;
}

/* ------------------------------------------- refused, not taken (rule 3) */

/* The event of a connection or datagram for d refused for container id. */
static __always_inline void ev_lookup(struct bpf_sk_lookup *ctx, __u32 id, const struct l3_addr *d)
{
	struct l3_event *e = ev_begin(id, L3_EV_LOOKUP, L3_C_REFUSED);
	struct l3_addr src;
	__u16 sport, dport;
	__u32 r4;
	__u8 proto;

	if (!e)
		return;
	/* every field read, whatever the family: the compiler would
	 * otherwise load through a pointer it selects, which the verifier
	 * refuses for the context */
	r4 = ctx->remote_ip4;
	src.w[0] = ctx->remote_ip6[0];
	src.w[1] = ctx->remote_ip6[1];
	src.w[2] = ctx->remote_ip6[2];
	src.w[3] = ctx->remote_ip6[3];
	asm volatile("" ::"r"(r4), "r"(src.w[0]), "r"(src.w[1]), "r"(src.w[2]), "r"(src.w[3]));
	if (ctx->family == 2 /* AF_INET */)
		addr_set4(&src, r4);
	sport = bpf_ntohs(ctx->remote_port);
	dport = ctx->local_port;
	proto = ctx->protocol;
	ev_addrs(e, proto, &src, sport, d, dport);
	e->err = 111; /* ECONNREFUSED */
	ev_submit(e);
}

/*
 * l3_sk_lookup, attached to the network namespace `l3iso up` ran in, runs
 * where the kernel looks for the socket of a new connection or of a
 * datagram to an unconnected socket — after the TC programs (tc.c,
 * steer()) had their chance: whatever they assigned never gets here. It
 * refuses (the kernel answers with a RST, or ICMP port unreachable):
 *
 *   a shadow port itself: it is no port any application asked for;
 *   TCP to a shared container's address or private loopback: none of its
 *     sockets listens on that port (they all are in l3_binds), and a host
 *     wildcard listener must not take it;
 *   UDP to one, on a port where the host has a wildcard socket: the same
 *     (elsewhere the kernel finds the container's socket, or answers ICMP
 *     port unreachable itself).
 *
 * and assigns the socket TC entered in l3_socks (steer.h) to a SYN that
 * ends a TIME_WAIT and to a datagram that came in fragments, now whole.
 *
 * l3iso's own lookups (own_lookup) pass.
 */
SEC("sk_lookup")
int l3_sk_lookup(struct bpf_sk_lookup *ctx)
{
	__u8 proto = ctx->protocol;
	__u16 port = ctx->local_port;
	struct l3_sport *sp;
	struct l3_owner *o;
	struct l3_bval *v;
	struct l3_cfg *cfg;
	struct l3_bkey k;
	struct l3_addr d;
	int refuse = 1;
	__u32 id;

	/*
	 * A lookup l3iso's TC programs make themselves (own_lookup) is the
	 * kernel's to answer. Asked only where this program would not pass
	 * anyway: the common case, a port with no shadow socket and, for
	 * UDP, no container's wildcard socket, touches two cache lines.
	 */
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SK_PASS;
	sp = sport_of(proto, port);
	if (sp && sp->id) {
		if (own_lookup_busy())
			return SK_PASS;
		count(sp->id, L3_C_REFUSED);
		ev_lookup(ctx, sp->id, NULL);
		return SK_DROP;
	}
	if (proto == IPPROTO_UDP) {
		__u32 k = port, *hn = bpf_map_lookup_elem(&l3_hostudp, &k);

		if (!hn || !*hn) {
			/* Nothing to refuse: only a container's wildcard
			 * socket to find, for a datagram that came in
			 * fragments (steer.h). */
			if (!uwild_on(port))
				return SK_PASS;
			refuse = 0;
		}
	}
	if (own_lookup_busy())
		return SK_PASS;
	if (ctx->family == 2 /* AF_INET */) {
		addr_set4(&d, ctx->local_ip4);
	} else {
		d.w[0] = ctx->local_ip6[0];
		d.w[1] = ctx->local_ip6[1];
		d.w[2] = ctx->local_ip6[2];
		d.w[3] = ctx->local_ip6[3];
	}
	if (addr_is_private_loop(&d)) {
		if (addr_is_host(&d))
			return SK_PASS;
		id = private_id(&d);
	} else {
		cfg = config();
		if (!cfg)
			return SK_PASS;
		o = owner_of(active_gen(), &d, proto, port);
		if (!o || !o->id || (o->flags & L3_OF_NETNS))
			return SK_PASS;
		id = o->id;
	}
	v = binds_find(id, proto, port, &d, &k);
	if (v && proto == IPPROTO_UDP && k.kind == L3_BK_EXACT)
		return SK_PASS; /* its socket is at the address: the kernel finds it */
	if (v) {
		/*
		 * TCP: a SYN that ends a TIME_WAIT — its listener. UDP: a
		 * datagram that came in fragments — the wildcard socket
		 * (only the one at v's shadow port). TC entered it (steer.h).
		 */
		struct bpf_sock *sk = bpf_map_lookup_elem(&l3_socks, &k);

		if (sk) {
			long err = -1;

			if (proto == IPPROTO_TCP || sk->src_port == v->sport)
				err = bpf_sk_assign(ctx, sk, 0);
			bpf_sk_release(sk);
			if (!err) {
				count(id, L3_C_STEERED);
				return SK_PASS;
			}
		}
	}
	if (!refuse)
		return SK_PASS; /* the kernel finds what it finds, or answers itself */
	count(id, L3_C_REFUSED);
	ev_lookup(ctx, id, &d);
	return SK_DROP;
}
