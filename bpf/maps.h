/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h — the maps of every l3iso program (sock.c, tc.c) and the helpers
 * they share. Both objects declare every map identically, so either spec
 * can create the set and each loads against the pinned maps by name
 * (pkg/maps owns them; pkg/loader pins them in <bpffs>/maps).
 *
 * Include after l3iso.h and the libbpf headers.
 */
#ifndef L3ISO_MAPS_H
#define L3ISO_MAPS_H

/* Maps. Names are <= 15 characters: the kernel truncates longer ones. */

/* Mmapable: user space flips gen with an atomic store (l3iso.h, l3_cfg). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct l3_cfg);
} l3_config SEC(".maps");

/*
 * User space only: the extra uplinks `l3iso up --extra-uplink` named,
 * where l3iso attaches what it attaches to the uplink's TCX hooks
 * (pkg/loader, HostTC). A map of its own: l3_config's layout stays.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L3_MAX_XUPLINKS);
	__type(key, __u32);
	__type(value, struct l3_ifname);
} l3_xuplinks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * L3_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_cont_key);
	__type(value, struct l3_cont);
} l3_conts SEC(".maps");

/* Mmapable: user space writes its words with atomic stores (l3iso.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct l3_owned_filter);
} l3_ofilter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_local_key);
	__type(value, struct l3_local);
} l3_locals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_owner_key);
	__type(value, struct l3_owner);
} l3_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_route_key);
	__type(value, struct l3_route);
} l3_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_mcast_key);
	__type(value, struct l3_mcast);
} l3_mcasts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * L3_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_meta_key);
	__type(value, struct l3_meta);
} l3_metas SEC(".maps");

/*
 * Preallocated: a per-CPU hash without preallocation draws on an atomic
 * cache that a burst of container adds exhausts (ENOMEM). Indexed by id.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L3_MAX_CONTAINERS + 1);
	__type(key, __u32);
	__type(value, struct l3_stats);
} l3_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct l3_sk);
} l3_skstore SEC(".maps");

/* l3_delivs, l3_ports: netns containers' addresses and host-side veths (tc.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, L3_MAX_CONTAINERS * L3_MAX_ADDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_addr);
	__type(value, struct l3_deliv);
} l3_delivs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * L3_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct l3_port);
} l3_ports SEC(".maps");

/* l3_listen: broadcast/multicast listeners by (group or broadcast, port, page). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_lkey);
	__type(value, struct l3_lset);
} l3_listen SEC(".maps");

/* l3_lsum: which pages of l3_listen hold listeners, by (group, port). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_lkey);
	__type(value, struct l3_lpages);
} l3_lsum SEC(".maps");

/* l3_quota: per container id, how many registrations its sockets hold. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L3_MAX_CONTAINERS + 1);
	__type(key, __u32);
	__type(value, struct l3_qval);
} l3_quota SEC(".maps");

/* l3_binds: shared containers' listening sockets (l3iso.h, struct l3_bkey). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l3_bkey);
	__type(value, struct l3_bval);
} l3_binds SEC(".maps");

/*
 * l3_socks: listening sockets by their l3_binds key, for l3_sk_lookup
 * (which can only assign a socket from a socket map): a SYN for a 4-tuple
 * in TIME_WAIT goes through the kernel's TIME_WAIT handling, which looks
 * the listener up itself; a fragmented datagram is whole only after TC.
 * The TC program enters the socket when it meets such a packet; the
 * kernel removes a socket when it closes. MPTCP listeners cannot be
 * entered (their subflow socket has a ULP).
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct l3_bkey);
	__type(value, __u64);
} l3_socks SEC(".maps");

/* l3_sports: the shadow ports of TCP (0..65535) and UDP (65536..). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * 65536);
	__type(key, __u32);
	__type(value, struct l3_sport);
} l3_sports SEC(".maps");

/*
 * l3_uwild: per UDP port, the containers' wildcard UDP sockets on it
 * (l3_binds entries): a datagram to a port without any needs no steering
 * (the kernel finds a socket at the address itself), and l3_tc_group
 * spends one array read on it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} l3_uwild SEC(".maps");

/* l3_hostudp: per UDP port, the host's wildcard sockets on it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} l3_hostudp SEC(".maps");

/*
 * l3_scratch: per CPU, set while a TC program looks a socket up: the lookup
 * runs l3_sk_lookup, which must not refuse (or count) l3iso's own lookups.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} l3_scratch SEC(".maps");

/* l3_events: denials and drops, for `l3iso monitor` (l3iso.h, struct l3_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, L3_EV_RING);
} l3_events SEC(".maps");

/* l3_ebucket: per container id and CPU, the event rate limit. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L3_MAX_CONTAINERS + 1);
	__type(key, __u32);
	__type(value, struct l3_bucket);
} l3_ebucket SEC(".maps");

/* ---------------------------------------------------------------- helpers */

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

/* How many IPv6 extension headers l4_of and the skb backstops' parse
 * walk: hop-by-hop, destination options, routing, fragment (RFC 8200's
 * order) — an AH or a longer chain ends the walk. */
#define L3_EXTHDRS 4

/* Is nh an IPv6 extension header the walks step over (hop-by-hop,
 * routing, destination options: each (length + 1) * 8 bytes)? */
static __always_inline int ext_hdr(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST;
}

static __always_inline void count(__u32 id, __u32 c)
{
	struct l3_stats *s = bpf_map_lookup_elem(&l3_counters, &id);

	/* Per-CPU: a plain increment (an atomic one costs a locked bus cycle
	 * on every bind, connect and packet). */
	if (s && c < L3_C_MAX)
		s->c[c]++;
}

static __always_inline struct l3_cfg *config(void)
{
	__u32 zero = 0;

#ifdef L3ISO_VARIANT
	/* The upgrade test's "older binary": same behaviour, other instructions. */
	asm volatile("r0 = 0" ::: "r0");
#endif

	return bpf_map_lookup_elem(&l3_config, &zero);
}

/* Read once per invocation: every lookup of one decision uses one generation. */
static __always_inline __u32 active_gen(void)
{
	struct l3_cfg *cfg = config();

	return cfg ? *(volatile __u32 *)&cfg->gen : 0;
}

/* May ip4 (network order) be a container subnet's broadcast address? A
 * "no" is certain; a "yes" needs the l3_locals lookup. */
static __always_inline int maybe_bcast4(const struct l3_cfg *cfg, __u32 ip4)
{
	__u32 bit = (__u32)(ip4 * (__u32)L3_BLOOM_MUL) >> 24;

	return (cfg->bcast_bloom[bit >> 6] >> (bit & 63)) & 1;
}

static __always_inline void addr_set4(struct l3_addr *a, __u32 ip4 /* network order */)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = ip4;
}

static __always_inline int addr_is_mapped(const struct l3_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int addr_eq(const struct l3_addr *a, const struct l3_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

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

/* The host's own address toward shared containers (l3iso.h, L3_HOST4). */
static __always_inline int addr_is_host(const struct l3_addr *a)
{
	if (addr_is_mapped(a))
		return a->w[3] == bpf_htonl(L3_HOST4);
	return a->w[0] == bpf_htonl(L3_LO6_W0) && a->w[1] == bpf_htonl(L3_LO6_W1) &&
	       a->w[2] == 0 && a->w[3] == bpf_htonl(L3_HOST6_W3);
}

static __always_inline void host_addr_like(const struct l3_addr *like, struct l3_addr *out)
{
	if (addr_is_mapped(like)) {
		addr_set4(out, bpf_htonl(L3_HOST4));
	} else {
		out->w[0] = bpf_htonl(L3_LO6_W0);
		out->w[1] = bpf_htonl(L3_LO6_W1);
		out->w[2] = 0;
		out->w[3] = bpf_htonl(L3_HOST6_W3);
	}
}

/* The container id whose private loopback a is (0: none; a is private). */
static __always_inline __u32 private_id(const struct l3_addr *a)
{
	__u32 id;

	if (addr_is_mapped(a))
		id = bpf_ntohl(a->w[3]) - L3_LO4_BASE;
	else if (a->w[1] == bpf_htonl(L3_LO6_W1) && a->w[2] == 0)
		id = bpf_ntohl(a->w[3]); /* fd6c:3369:736f::id exactly, not fd6c:3369:736f:X::id */
	else
		return 0;
	return id <= L3_MAX_CONTAINERS ? id : 0;
}

/*
 * Where container id (1..L3_MAX_CONTAINERS) has its registry entry for a
 * family: the page of l3_listen, and the slot in it (struct l3_lset).
 */
static __always_inline __u32 lpage_of(__u32 id)
{
	return (id - 1) / L3_LPAGE_IDS;
}

static __always_inline __u32 lslot_of(__u32 id, int v6)
{
	return ((id - 1) % L3_LPAGE_IDS) * 2 + (v6 ? 1 : 0);
}


/* The l3_listen key of broadcast listeners: 255.255.255.255, mapped. */
static __always_inline void bcast_key(struct l3_addr *a)
{
	addr_set4(a, 0xffffffff);
}

static __always_inline int addr_is_mcast(const struct l3_addr *a)
{
	if (addr_is_mapped(a))
		return (bpf_ntohl(a->w[3]) >> 28) == 0xe;
	return (bpf_ntohl(a->w[0]) >> 24) == 0xff;
}

/* Does l3_ofilter prove that no container owns IP a (any port)? */
static __always_inline int surely_unowned(const struct l3_addr *a)
{
	__u32 zero = 0, h = (a->w[0] ^ a->w[1] ^ a->w[2] ^ a->w[3]) * (__u32)L3_OFILTER_MUL;
	struct l3_owned_filter *f = bpf_map_lookup_elem(&l3_ofilter, &zero);

	h >>= 16;
	return f && (f->w[(h >> 6) & (L3_OFILTER_BITS / 64 - 1)] >> (h & 63)) & 1;
}

static __always_inline struct l3_owner *owner_of(__u32 gen, const struct l3_addr *a,
						 __u8 proto, __u16 port /* host order */)
{
	/* No policy owns a loopback address (pkg/policy refuses them; the
	 * private loopbacks are l3_locals'): the host's traffic on lo, the
	 * most common, is spared the trie walk. */
	if (addr_is_loopback(a) || surely_unowned(a))
		return NULL;
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

/*
 * l3iso's own socket lookups (bpf_sk_lookup_*, from TC and socket hooks)
 * run l3_sk_lookup too, which must let them through: a per-CPU count of
 * lookups under way (a program on this CPU may interrupt another).
 */
static __always_inline void own_lookup(int delta)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&l3_scratch, &zero);

	if (n)
		__sync_fetch_and_add(n, delta);
}

/* Is a TC program of l3iso looking a socket up on this CPU (own_lookup)? */
static __always_inline int own_lookup_busy(void)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&l3_scratch, &zero);

	return n && *n;
}

static __always_inline int mcast_allowed(__u32 gen, __u32 id, const struct l3_addr *g)
{
	struct l3_mcast_key k = {.prefixlen = 64 + 128, .gen = gen, .id = id, .group = *g};

	return bpf_map_lookup_elem(&l3_mcasts, &k) != NULL;
}

/*
 * May a socket whose multicast state is s receive a datagram to group g
 * from src? The kernel's per-socket source filter (ip_mc_sf_allow,
 * inet6_mc_check), from l3iso's mirror of it (struct l3_sk): a slot of g
 * naming src decides (INCLUDE: yes, EXCLUDE: no); else an any-source join
 * of g says yes; a socket with no slot of g did not join it. Checked where
 * l3iso delivers around the kernel's filter: copies assigned to a socket
 * with bpf_sk_assign never reach it (tc.c, and the skb backstop).
 */
static __always_inline int sk_source_ok(const struct l3_sk *s, const struct l3_addr *g,
					const struct l3_addr *src)
{
	int i, any = 0;

	for (i = 0; i < L3_SK_GROUPS; i++) {
		if (!addr_eq(&s->groups[i], g))
			continue;
		if (s->modes[i] == L3_SRC_ANY)
			any = 1;
		else if (addr_eq(&s->sources[i], src))
			return s->modes[i] == L3_SRC_INCLUDE;
	}
	return any;
}

#endif /* L3ISO_MAPS_H */
