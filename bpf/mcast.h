/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * mcast.h — rule 6 on the socket side: which options join or leave a
 * group, the per-socket source filter l3iso mirrors (struct l3_sk slots),
 * and a listening socket's entries in the registry (registry.h). sock.c's
 * l3_setsockopt, post_bind and sock_release use them; docs/multicast.md
 * has the whole design.
 *
 * Include after registry.h and events.h.
 */
#ifndef L3ISO_MCAST_H
#define L3ISO_MCAST_H


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

/* ----------------------------------- broadcast/multicast listeners (rule 6) */

/* Register listener s under group g (or the broadcast key), at its
 * container's address of g's family: 0, or -1 (quota, registry full). */
static __always_inline int listener_add(struct l3_sk *s, const struct l3_addr *g)
{
	const struct l3_addr *own = addr_is_mapped(g) ? &s->addr : &s->addr6;

	if (addr_is_any(own))
		return 0; /* no address of that family: nothing to receive */
	return reg_add(g, s->port | (__u32)s->kport << 16, s->id, own, &s->epoch);
}

static __always_inline void listener_del(struct l3_sk *s, const struct l3_addr *g)
{
	const struct l3_addr *own = addr_is_mapped(g) ? &s->addr : &s->addr6;

	if (addr_is_any(own) || !epoch_current(s->id, s->epoch))
		return;
	reg_del(g, s->port, s->id, !addr_is_mapped(g), 0);
}

/* Every registration of listener s: the broadcast key, and the groups it
 * joined (each once: its first slot), the first n of them. */
static __always_inline void listener_del_all(struct l3_sk *s, int n)
{
	struct l3_addr bk;
	int i, k = 0;

	bcast_key(&bk);
	listener_del(s, &bk);
	for (i = 0; i < L3_SK_GROUPS; i++) {
		struct l3_addr g = s->groups[i];

		if ((g.w[0] | g.w[1] | g.w[2] | g.w[3]) && first_slot(s, i) && k++ < n)
			listener_del(s, &g);
	}
	s->flags &= ~L3_SK_LISTENER;
}

/*
 * A join with no interface goes where the host routes the group, which
 * need not be l3iso's uplink: a shared container's join names the uplink
 * (ip_mreq grows into an ip_mreqn; a join by address takes the uplink's
 * IPv4 address, l3_cfg.uplink_ip4), so it receives the group from there.
 * Leaves and source changes name it likewise, or the kernel would not
 * find the membership.
 */
static __always_inline void join_on_uplink(struct bpf_sockopt *ctx, struct l3_cfg *cfg)
{
	void *p = ctx->optval, *end = ctx->optval_end;
	__u32 ifx = cfg->uplink_ifindex;

	if (!ifx || ifx == 1 /* lo */)
		return;
	if (ctx->level == SOL_IP) {
		switch (ctx->optname) {
		case IP_ADD_MEMBERSHIP:
		case IP_DROP_MEMBERSHIP:
			/* struct ip_mreq (8 bytes): the interface's address at 4;
			 * struct ip_mreqn (12): and its index at 8 */
			if (p + 12 > end || *(__u32 *)(p + 4))
				return;
			if (ctx->optlen == 8) {
				*(__u32 *)(p + 8) = ifx;
				ctx->optlen = 12;
			} else if (ctx->optlen >= 12 && !*(__u32 *)(p + 8)) {
				*(__u32 *)(p + 8) = ifx;
			}
			return;
		case IP_ADD_SOURCE_MEMBERSHIP:
		case IP_DROP_SOURCE_MEMBERSHIP:
		case IP_BLOCK_SOURCE:
		case IP_UNBLOCK_SOURCE:
			/* struct ip_mreq_source: the interface's address at 4 */
			if (p + 12 > end || *(__u32 *)(p + 4) || !cfg->uplink_ip4)
				return;
			*(__u32 *)(p + 4) = cfg->uplink_ip4;
			return;
		}
	}
	if (ctx->level == SOL_IPV6 &&
	    (ctx->optname == IPV6_ADD_MEMBERSHIP || ctx->optname == IPV6_DROP_MEMBERSHIP)) {
		/* struct ipv6_mreq: the interface index at 16 */
		if (p + 20 > end || *(__u32 *)(p + 16))
			return;
		*(__u32 *)(p + 16) = ifx;
		return;
	}
	switch (ctx->optname) {
	case MCAST_JOIN_GROUP:
	case MCAST_LEAVE_GROUP:
	case MCAST_JOIN_SOURCE_GROUP:
	case MCAST_LEAVE_SOURCE_GROUP:
	case MCAST_BLOCK_SOURCE:
	case MCAST_UNBLOCK_SOURCE:
		/* struct group_req, group_source_req: the interface index at 0 */
		if (p + 4 > end || *(__u32 *)p)
			return;
		*(__u32 *)p = ifx;
		return;
	}
}
_Static_assert(L3_SRC_ANY == 0, "a zeroed slot is free and any-source");


/* What a socket's slots hold of group g, for a change naming source src. */
struct jstate {
	int ng;	   /* slots of g */
	int multi; /* more than one */
	int any;   /* an any-source join of g */
	int excl;  /* sources of g blocked */
	int free;  /* a free slot */
	__u8 match; /* the mode of the slot of g naming src; 0: none */
};

static __always_inline void slots_scan(const struct l3_sk *s, const struct l3_addr *g,
				       const struct l3_addr *src, struct jstate *j)
{
	int i;

	__builtin_memset(j, 0, sizeof(*j));
	for (i = 0; i < L3_SK_GROUPS; i++) {
		const struct l3_addr *e = &s->groups[i];

		if (addr_eq(e, g)) {
			j->multi = j->ng;
			j->ng = 1;
			if (s->modes[i] == L3_SRC_ANY)
				j->any = 1;
			else if (addr_eq(&s->sources[i], src))
				j->match = s->modes[i];
			if (s->modes[i] == L3_SRC_EXCLUDE)
				j->excl = 1;
		} else if (!(e->w[0] | e->w[1] | e->w[2] | e->w[3])) {
			j->free = 1;
		}
	}
}

/*
 * Free the slots of g: every one (all), or the one of mode naming src.
 * The group is cleared first: readers never see half a slot. Slots are
 * changed in place in a loop (no index carried out of one: the verifier
 * would track each value it may hold).
 */
static __always_inline void slots_drop(struct l3_sk *s, const struct l3_addr *g, __u8 mode,
				       const struct l3_addr *src, int all)
{
	int i, done = 0;

	for (i = 0; i < L3_SK_GROUPS && !done; i++) {
		if (!addr_eq(&s->groups[i], g))
			continue;
		if (!all && (s->modes[i] != mode || !addr_eq(&s->sources[i], src)))
			continue;
		__builtin_memset(&s->groups[i], 0, sizeof(s->groups[i]));
		asm volatile("" ::: "memory");
		__builtin_memset(&s->sources[i], 0, sizeof(s->sources[i]));
		s->modes[i] = L3_SRC_ANY;
		done = !all;
	}
}

/* A new slot (the caller checked there is a free one); the group last. */
static __always_inline void slot_add(struct l3_sk *s, const struct l3_addr *g,
				     const struct l3_addr *src, __u8 mode)
{
	int i, done = 0;

	for (i = 0; i < L3_SK_GROUPS && !done; i++) {
		struct l3_addr *e = &s->groups[i];

		if (!(e->w[0] | e->w[1] | e->w[2] | e->w[3])) {
			s->sources[i] = *src;
			s->modes[i] = mode;
			asm volatile("" ::: "memory");
			*e = *g;
			done = 1;
		}
	}
}

/* An any-source join of g becomes one of src only (the kernel's switch of
 * an empty exclude filter to include). */
static __always_inline void slot_include(struct l3_sk *s, const struct l3_addr *g,
					 const struct l3_addr *src)
{
	int i, done = 0;

	for (i = 0; i < L3_SK_GROUPS && !done; i++) {
		if (addr_eq(&s->groups[i], g) && s->modes[i] == L3_SRC_ANY) {
			s->sources[i] = *src;
			/* readers: any source until the mode changes */
			asm volatile("" ::: "memory");
			s->modes[i] = L3_SRC_INCLUDE;
			done = 1;
		}
	}
}

enum {
	JC_NONE = 0, /* nothing (more) to do */
	JC_ADD,	     /* a new slot of the mode given */
	JC_LEFT,     /* the socket left the group */
};

/*
 * What option op does to the slots of g (j: what they hold), as the kernel
 * changes its per-socket filter (ip_mc_source, ip6_mc_source) — assuming
 * the kernel accepts it:
 *
 *   join (any source)   G has no slot: one ANY slot. Joined already: no change.
 *   join source S       G in exclude mode with blocked sources: no change (EINVAL).
 *                       An ANY slot of G becomes INCLUDE S; else one more INCLUDE slot.
 *   leave source S      its INCLUDE slot goes; the last one leaves G, as in the kernel.
 *   block / unblock S   an EXCLUDE slot beside G's ANY slot, or its removal.
 *   leave G             every slot of G.
 */
static __always_inline int slots_change(struct l3_sk *s, int op, const struct l3_addr *g,
					const struct l3_addr *src, const struct jstate *j,
					__u8 *mode)
{
	switch (op) {
	case J_JOIN:
		*mode = L3_SRC_ANY;
		return j->ng ? JC_NONE : JC_ADD; /* joined already: the kernel's EADDRINUSE */
	case J_SJOIN:
		if (j->excl || j->match)
			return JC_NONE; /* exclude mode (the kernel: EINVAL), or there already */
		if (j->any) {
			slot_include(s, g, src);
			return JC_NONE;
		}
		*mode = L3_SRC_INCLUDE;
		return JC_ADD;
	case J_BLOCK:
		*mode = L3_SRC_EXCLUDE;
		/* not an any-source join (EINVAL), or blocked already */
		return !j->any || j->match ? JC_NONE : JC_ADD;
	case J_UNBLOCK:
	case J_SLEAVE:
		*mode = op == J_UNBLOCK ? L3_SRC_EXCLUDE : L3_SRC_INCLUDE;
		if (j->match != *mode)
			return JC_NONE;
		slots_drop(s, g, *mode, src, 0);
		/* The last source of an include filter leaves the group. */
		return op == J_UNBLOCK || j->multi ? JC_NONE : JC_LEFT;
	default: /* J_LEAVE */
		if (!j->ng)
			return JC_NONE;
		slots_drop(s, g, 0, src, 1);
		return JC_LEFT;
	}
}

#endif /* L3ISO_MCAST_H */
