/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * binds.h — shared containers' listening sockets, by what the application
 * asked for (docs/DESIGN.md rule 3; l3iso.h, struct l3_bkey). The socket hooks
 * (sock.c) enter and remove them; the TC programs on lo and the uplink
 * (tc.c) find the socket a connection or datagram goes to and assign it;
 * l3_sk_lookup refuses what finds none. l3_uwild counts the UDP wildcard
 * entries by port (uwild_add, uwild_on): the TC programs leave a datagram
 * alone where it is 0.
 *
 * Include after maps.h and registry.h.
 */
#ifndef L3ISO_BINDS_H
#define L3ISO_BINDS_H

#ifndef EADDRINUSE
#define EADDRINUSE 98
#endif
#ifndef ENOBUFS
#define ENOBUFS 105
#endif

/* l3_sports' index of a port of protocol proto. */
static __always_inline __u32 sport_idx(__u8 proto, __u16 port)
{
	return (proto == IPPROTO_UDP ? 65536 : 0) + port;
}

static __always_inline struct l3_sport *sport_of(__u8 proto, __u16 port)
{
	__u32 i = sport_idx(proto, port);

	return bpf_map_lookup_elem(&l3_sports, &i);
}

/* A UDP wildcard entry comes (1) or goes (-1): l3_uwild counts them by port. */
static __always_inline void uwild_add(const struct l3_bkey *k, int delta)
{
	__u32 port = k->port;
	__u32 *n;

	if (k->proto != IPPROTO_UDP || k->kind == L3_BK_EXACT)
		return;
	n = bpf_map_lookup_elem(&l3_uwild, &port);
	if (n && (delta > 0 || *n))
		__sync_fetch_and_add(n, delta);
}

/* May a UDP datagram to port need steering: does any container have a
 * wildcard socket on it? */
static __always_inline int uwild_on(__u16 port)
{
	__u32 k = port, *n = bpf_map_lookup_elem(&l3_uwild, &k);

	return n && *n;
}

/*
 * The entry of container id that a connection or datagram for (d, port)
 * goes to: a socket bound to d itself, else a wildcard socket of d's
 * family — for IPv4 an IPv6 one too, which receives it if it is dual-stack
 * (the kernel's lookup of its socket decides, as for any dual-stack
 * socket). A wildcard socket hears every address of its container,
 * its private loopback included.
 */
static __always_inline struct l3_bval *binds_find(__u32 id, __u8 proto, __u16 port,
						  const struct l3_addr *d, struct l3_bkey *k)
{
	struct l3_bval *v;

	k->id = id;
	k->proto = proto;
	k->kind = L3_BK_EXACT;
	k->port = port;
	k->addr = *d;
	v = bpf_map_lookup_elem(&l3_binds, k);
	if (v)
		return v;
	__builtin_memset(&k->addr, 0, sizeof(k->addr));
	if (addr_is_mapped(d)) {
		k->kind = L3_BK_ANY4;
		v = bpf_map_lookup_elem(&l3_binds, k);
		if (v)
			return v;
	}
	k->kind = L3_BK_ANY6;
	return bpf_map_lookup_elem(&l3_binds, k);
}

/*
 * Enter the socket whose state is s at s->bkey, holding sport at saddr in
 * the kernel (s->bkey.port if it is not a shadow). A socket that joins
 * (SO_REUSEPORT, or SO_REUSEADDR for UDP, on both) takes a reference to
 * the entry it joined; if that is gone meanwhile, the port is its own and
 * it enters a new one. Returns 0, -EADDRINUSE (another socket took the key
 * meanwhile) or -ENOBUFS (its quota, or the map, is full).
 */
static __always_inline int binds_add(struct l3_sk *s, __u16 sport, const struct l3_addr *saddr)
{
	struct l3_bval nv = {.refs = 1, .sport = sport, .flags = s->bflags, .saddr = *saddr};
	struct l3_bval *v;
	__u32 epoch;
	long err;

	if (quota_take(s->bkey.id, &epoch))
		return -ENOBUFS;
	if (s->flags & L3_SK_JOIN) {
		v = bpf_map_lookup_elem(&l3_binds, &s->bkey);
		if (v) {
			int joined = 0;

			bpf_spin_lock(&v->lock);
			if (!(v->flags & L3_BV_DEAD) && v->sport == sport) {
				v->refs++;
				joined = 1;
			}
			bpf_spin_unlock(&v->lock);
			if (joined)
				goto done;
		}
	}
	err = bpf_map_update_elem(&l3_binds, &s->bkey, &nv, BPF_NOEXIST);
	if (err) {
		quota_give(s->bkey.id, epoch);
		if (err == -17 /* EEXIST */) {
			count(s->bkey.id, L3_C_BIND_INUSE);
			return -EADDRINUSE;
		}
		count(s->bkey.id, L3_C_SOCK_QUOTA);
		return -ENOBUFS;
	}
	if (s->flags & L3_SK_SHADOW) {
		struct l3_sport *sp = sport_of(s->bkey.proto, sport);

		if (sp) {
			sp->aport = s->bkey.port;
			sp->view = s->bkey.addr;
			sp->id = s->bkey.id;
		}
	}
	uwild_add(&s->bkey, 1);
done:
	s->epoch = epoch;
	s->flags |= L3_SK_BOUND;
	return 0;
}

/* The socket whose state is s closes: its reference goes; the entry (and
 * its shadow port) with the last one. */
static __always_inline void binds_del(struct l3_sk *s)
{
	struct l3_bval *v;
	__u16 sport = 0;
	int last = 0;

	if (!(s->flags & L3_SK_BOUND))
		return;
	s->flags &= ~L3_SK_BOUND;
	if (!epoch_current(s->bkey.id, s->epoch))
		return; /* its container is gone; the purge took its entries */
	v = bpf_map_lookup_elem(&l3_binds, &s->bkey);
	if (v) {
		bpf_spin_lock(&v->lock);
		if (!(v->flags & L3_BV_DEAD)) {
			if (v->refs > 1) {
				v->refs--;
			} else {
				v->flags |= L3_BV_DEAD;
				sport = v->sport;
				last = 1;
			}
		}
		bpf_spin_unlock(&v->lock);
	}
	if (last) {
		uwild_add(&s->bkey, -1);
		bpf_map_delete_elem(&l3_binds, &s->bkey);
		if (s->flags & L3_SK_SHADOW) {
			struct l3_sport *sp = sport_of(s->bkey.proto, sport);

			if (sp && sp->id == s->bkey.id)
				sp->id = 0;
		}
	}
	quota_give(s->bkey.id, s->epoch);
}

#endif /* L3ISO_BINDS_H */
