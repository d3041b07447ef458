/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * l3iso.h — the one contract between the BPF programs and Go.
 *
 * Every struct here is a map key or value; bpf2go generates the Go types
 * from it (-type), so Go never mirrors these layouts by hand. Keep explicit
 * padding: the kernel compares keys byte for byte.
 *
 * Addresses are always 16 bytes, network byte order: IPv6 as is, IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d). One key shape serves both families and
 * dual-stack sockets, whose IPv4 peers appear as mapped addresses anyway.
 *
 * Policy maps carry a generation number in their keys. Programs read the
 * active generation once per invocation (l3_config[0].gen) and do every
 * lookup in it, so a policy push — write the inactive generation, then
 * flip gen (docs/ARCHITECTURE.md, "Atomic pushes") — is atomic for every
 * bind, connect and packet.
 */
#ifndef L3ISO_H
#define L3ISO_H

#include <linux/types.h>

enum l3_limits {
	L3_MAX_CONTAINERS = 16384, /* container ids are 1..L3_MAX_CONTAINERS */
	L3_MAX_ADDRS = 16,	   /* addresses per container */
	L3_MAX_MCAST = 8,	   /* multicast prefixes per container */
	L3_NAME_LEN = 32,	   /* container name, NUL padded */
	L3_PATH_LEN = 256,
	L3_OWNER_PLEN_ADDR = 160, /* l3_owner prefixlen of a whole IP (gen + addr) */
	L3_OWNER_PLEN_FULL = 184, /* gen + addr + proto + port */
	L3_SOCK_QUOTA = 4096,	  /* socket registrations per container (l3_binds, l3_listen) */
	L3_MAX_XUPLINKS = 8,	  /* extra uplinks (l3_xuplinks) */
};

/* l3_xuplinks[i]: an extra uplink's name, NUL padded ("": none). */
struct l3_ifname {
	char name[16];
};

/* An IPv6 or IPv4-mapped address, network byte order. */
struct l3_addr {
	__u32 w[4];
};

/* Bits of l3_cfg.bcast_bloom: a 256-bit filter of broadcast addresses. */
enum l3_bloom {
	L3_BLOOM_BITS = 256,
	L3_BLOOM_MUL = 0x45d9f3b, /* multiplicative hash: bit = (__u32)(ip4 * MUL) >> 24 */
};

/*
 * l3_ofilter[0] (struct l3_owned_filter): which IPs no container owns,
 * surely — a bit per hash of an address, set when no address of any live
 * generation's containers hashes to it. A clear bit proves nothing:
 * l3_owners decides. So a map that is all zeros (made by `up` for an
 * installation older than it, or never written) is correct, only slower,
 * and the host's traffic to its own addresses — the most common, on any
 * host — skips the l3_owners trie walk (owner_of) for one word read. User
 * space clears an address's bit before the address goes live and sets
 * bits only when it recomputes the filter from the one generation left
 * (pkg/maps, hotline.go: addFilters, ResetFilters).
 */
enum l3_ofilter_bits {
	L3_OFILTER_BITS = 65536,
	L3_OFILTER_MUL = 0x9e3779b1, /* bit = (__u32)((w[0] ^ w[1] ^ w[2] ^ w[3]) * MUL) >> 16 */
};

struct l3_owned_filter {
	__u64 w[L3_OFILTER_BITS / 64];
};

/*
 * l3_config[0]: set by `l3iso up`, read by every program. The first 64
 * bytes are what the hot paths read — one cache line: the active policy
 * generation and the broadcast filter. The map is mmapable so user space
 * flips gen with one atomic 4-byte store and sets filter bits with atomic
 * ORs; the rest it writes with map updates, which rewrite gen and the
 * filter with the bytes they already hold.
 */
struct l3_cfg {
	__u32 gen;	    /* the active policy generation (see the top of this file) */
	__u32 level;	    /* cgroup level of container cgroups (<root>/l3iso/<name>) */
	__u64 netns_cookie; /* the host netns: rules for non-container sockets apply only here */
	__u32 delivery;	      /* enum l3_delivery */
	__u32 uplink_ifindex; /* 0: none, shared addresses live on lo */
	__u32 flags;	      /* enum l3_cfg_flags (user space only, but L3_CFG_NO_EVENTS) */
	__u32 uplink_ip4;     /* an IPv4 address of the uplink (network order), 0: none */
	/*
	 * Every directed broadcast address of a container subnet (IPv4, as
	 * loaded from the header) has bit (ip4 * L3_BLOOM_MUL) >> 24 set; a
	 * clear bit proves a UDP destination is no such broadcast without a
	 * map lookup (the per-datagram cost on lo). Bits are added before the
	 * addresses go live and cleared only when recomputed from the policy.
	 */
	__u64 bcast_bloom[L3_BLOOM_BITS / 64];
	char cgroot[L3_PATH_LEN];
	char uplink[16];
	__u8 uplink_mac[6]; /* source of the frames l3iso sends out of the uplink itself */
	__u16 pad2;
	__u32 name_tag;	    /* user space only: the installation's tag in netns container names */
	__u32 pad3;
};

enum l3_cfg_flags {
	L3_CFG_DIRTY = 1 << 0, /* a changing command is (or was, if it died) under way */
	L3_CFG_FWD4 = 1 << 1,  /* l3iso turned on IPv4 forwarding (routed, bridge): undo it later */
	L3_CFG_FWD6 = 1 << 2,  /* l3iso turned on IPv6 forwarding (routed, bridge): undo it later */
	L3_CFG_ACCEPT_LOCAL = 1 << 3, /* l3iso turned on lo's accept_local: down turns it off */
	L3_CFG_NO_EVENTS = 1 << 4,    /* write no l3_events records (read by the programs) */
};

enum l3_delivery {
	L3_DELIVERY_DIRECT = 0,
	L3_DELIVERY_ROUTED = 1,
	L3_DELIVERY_BRIDGE = 2,
};

/* l3_conts: which cgroup is which container. */
struct l3_cont_key {
	__u32 gen;
	__u32 pad;
	__u64 cgid; /* cgroup id of the container's cgroup (its ancestor at cfg.level) */
};

enum l3_cont_flags {
	L3_CF_LOOP_HOST = 1 << 0, /* share the host's loopback instead of isolating it */
	L3_CF_HAS4 = 1 << 1,	  /* primary4 is valid */
	L3_CF_HAS6 = 1 << 2,	  /* primary6 is valid */
	L3_CF_NETNS = 1 << 3,	  /* mode netns */
	L3_CF_SUBNETS = 1 << 4,	  /* has IP/PREFIX addresses: l3_routes picks its source */
};

struct l3_cont {
	__u32 id;
	__u32 flags;		 /* enum l3_cont_flags */
	struct l3_addr primary4; /* first whole IPv4 address (mapped) */
	struct l3_addr primary6; /* first whole IPv6 address */
	struct l3_addr lo4;	 /* private loopback, mapped 127.128.0.0 + id */
	struct l3_addr lo6;	 /* private loopback, L3_LO6_PREFIX::id */
};

/* l3_local: the addresses a container may use — own and derivative. */
struct l3_local_key {
	__u32 gen;
	__u32 id;
	struct l3_addr addr;
};

enum l3_local_kind {
	L3_LOCAL_WHOLE = 1, /* owns every port of the IP */
	L3_LOCAL_PART = 2,  /* owns some ports of the IP: see l3_owner */
	L3_LOCAL_BCAST = 3, /* directed broadcast of an owned subnet */
	L3_LOCAL_LOOP = 4,  /* its private loopback address */
};

struct l3_local {
	__u32 kind;
	__u32 pad;
};

/*
 * l3_owner (LPM trie): who owns an address, or a port range of it.
 * prefixlen 160 (gen + addr) owns the whole IP; 168 + k narrows to a
 * protocol and a port prefix (port ranges are split into prefixes).
 */
struct l3_owner_key {
	__u32 prefixlen;
	__u32 gen;
	struct l3_addr addr;
	__u8 proto;
	__u8 port_hi; /* port, big endian, as two bytes so the trie sees network order */
	__u8 port_lo;
	__u8 pad;
};

enum l3_owner_flags {
	L3_OF_PARTIAL = 1 << 0, /* addr-level marker: only port ranges are owned; id is 0 */
	L3_OF_NETNS = 1 << 1,	/* owned by a netns container: not local on the host */
};

struct l3_owner {
	__u32 id;
	__u32 flags;
};

/* l3_route (LPM trie): a container's subnets, for source address selection. */
struct l3_route_key {
	__u32 prefixlen; /* 64 + subnet bits (of the 128-bit mapped form) */
	__u32 gen;
	__u32 id;
	struct l3_addr addr;
};

struct l3_route {
	struct l3_addr src; /* the container's address on that subnet */
};

/* l3_mcast (LPM trie): multicast groups a container may join. */
struct l3_mcast_key {
	__u32 prefixlen; /* 64 + group prefix bits */
	__u32 gen;
	__u32 id;
	struct l3_addr group;
};

struct l3_mcast {
	__u32 allowed;
	__u32 pad;
};

/*
 * l3_meta: the operator's view of a container (user space only). Together
 * with l3_cfg it is the source of truth the stateless CLI rebuilds every
 * other map from.
 */
struct l3_meta_key {
	__u32 gen;
	__u32 id;
};

enum l3_spec_flags {
	L3_SF_PREFIX = 1 << 0,	   /* prefixlen is valid (IP/PREFIX form) */
	L3_SF_CONFIGURED = 1 << 1, /* l3iso configured this IP on the host */
};

struct l3_addr_spec {
	struct l3_addr addr;
	__u8 prefixlen; /* of the mapped form for IPv4 (96 + n) */
	__u8 proto;	/* 0 any, 6 tcp, 17 udp */
	__u8 flags;	/* enum l3_spec_flags */
	__u8 pad;
	__u16 port_lo; /* host order; 0,0 = every port */
	__u16 port_hi;
};

struct l3_prefix {
	struct l3_addr addr;
	__u8 prefixlen; /* of the mapped form for IPv4 */
	__u8 pad[3];
};

enum l3_mode {
	L3_MODE_SHARED = 0,
	L3_MODE_NETNS = 1,
};

struct l3_meta {
	char name[L3_NAME_LEN];
	__u64 cgid;
	__u32 flags; /* enum l3_cont_flags */
	__u8 mode;   /* enum l3_mode */
	__u8 naddrs;
	__u8 nmcast;
	__u8 pad;
	struct l3_addr_spec addrs[L3_MAX_ADDRS];
	struct l3_prefix mcast[L3_MAX_MCAST];
};

/* l3_counters: per-CPU counters per container id; id 0 is "not a container". */
enum l3_counter {
	L3_C_BIND_ALLOWED = 0,
	L3_C_BIND_DENIED_FOREIGN,   /* EADDRNOTAVAIL: not an address it owns */
	L3_C_BIND_DENIED_PORT,	    /* EACCES: a port of a shared IP it does not own */
	L3_C_BIND_REWRITTEN,	    /* wildcard bind rewritten to its own address */
	L3_C_CONNECT_ALLOWED,	    /* connect or sendmsg passed */
	L3_C_SRC_REWRITTEN,	    /* unset source filled in with its own address */
	L3_C_SEND_DENIED_SPOOF,	    /* sendmsg with an explicit source it does not own */
	L3_C_NO_ADDR,		    /* connect/send in a family it has no address of */
	L3_C_LOOP_REMAPPED,	    /* 127.0.0.1 / ::1 mapped to its private loopback */
	L3_C_INGRESS_DROP_FOREIGN,  /* a packet for an address it does not own reached its socket */
	L3_C_EGRESS_DROP_SPOOF,	    /* a packet with a source it does not own left its socket */
	L3_C_HOST_BIND_DENIED,	    /* (id 0) a host process tried to bind a container address */
	L3_C_HOST_INGRESS_DROP,	    /* (id 0) a host socket got a packet for a container address */
	L3_C_HOST_SRC_REWRITTEN,    /* (id 0) host → container: source set to loopback */
	L3_C_JOIN_ALLOWED,	    /* multicast join allowed */
	L3_C_JOIN_DENIED,	    /* multicast join refused: not in the policy */
	/* TC (bpf/tc.c), netns containers; id 0 counts what belongs to no container */
	L3_C_TC_REDIRECT_IN,	    /* redirected into it (bpf_redirect_peer), from the uplink or a sibling */
	L3_C_TC_REDIRECT_OUT,	    /* from it, redirected out of the uplink or into a sibling */
	L3_C_TC_TO_HOST,	    /* from it, passed to the host stack (host or link-scope destination) */
	L3_C_TC_DROP_SPOOF,	    /* from it with a source it does not own (id 0: from the uplink
				       with a local container's source) */
	L3_C_TC_DROP_NO_ROUTE,	    /* from it, for a destination the host has no route to */
	L3_C_TC_DROP_MALFORMED,	    /* from it, with a truncated IPv4/IPv6 header */
	L3_C_TC_DROP_UNKNOWN_PORT,  /* (id 0) on a veth l3iso guards but knows no container of */
	/* Broadcast and multicast (rule 6) */
	L3_C_GROUP_COPY,	    /* a broadcast/multicast copy steered to its listening socket */
	L3_C_GROUP_NO_LISTENER,	    /* (id 0) a broadcast/multicast datagram no container listens for */
	L3_C_GROUP_LOST,	    /* a copy whose listener was gone when it arrived */
	L3_C_GROUP_FILTERED,	    /* a multicast copy its socket's source filter refused (or a
				       socket that did not join the group) */
	/* Sockets that share a port (rule 3): l3_binds, l3_tc_group, l3_sk_lookup */
	L3_C_BIND_INUSE,	    /* EADDRINUSE: it holds that address and port already */
	L3_C_SOCK_QUOTA,	    /* ENOBUFS: a bind or join beyond its socket registrations
				       (L3_SOCK_QUOTA), or the registry is full */
	L3_C_STEERED,		    /* a connection or datagram for it steered to its listening socket */
	L3_C_REFUSED,		    /* a connection or datagram to it nobody of it listens for:
				       refused (RST, ICMP port unreachable) */
	L3_C_LOOP_DENIED,	    /* connect/send to another's private loopback, or from its own
				       loopback to elsewhere (id 0: the host to a private loopback) */
	L3_C_EVENTS_LOST,	    /* a denial or drop whose event (l3_events) the rate limit or a
				       full ring buffer kept out */
	L3_C_CONNECT_BOUND,	    /* EADDRNOTAVAIL: connect of a socket bound to a port (a shadow:
				       the wildcard, on l3iso's port) that needs a source address */
	L3_C_MAX = 40, /* x8 bytes x 16385 ids per CPU */
};

/*
 * l3_delivs: where each address of a netns container lives, key struct
 * l3_addr. The TC programs deliver to it (direct) and check the source of
 * what leaves a container against it (every delivery mode). Written when
 * the container's veth exists, for its whole lifetime in every mode.
 */
struct l3_deliv {
	__u32 ifindex;	   /* host-side veth, in the host netns */
	__u32 id;	   /* container id */
	__u8 peer_mac[6];  /* eth0 inside the container */
	__u8 host_mac[6];  /* the host-side veth */
};

/* l3_ports: host-side veth ifindex → the container behind it. */
struct l3_port {
	__u32 id;
	__u32 pad;
};

struct l3_stats {
	__u64 c[L3_C_MAX];
};

/* Private loopback ranges: 127.128.0.0/9 and fd6c:3369:736f::/48 (l3iso). */
#define L3_LO4_BASE 0x7f800000 /* 127.128.0.0, host order */
#define L3_LO6_W0 0xfd6c3369   /* first two words of L3_LO6 prefix, host order */
#define L3_LO6_W1 0x736f0000

/*
 * The host's own address toward shared containers: the source of a host
 * socket that talks to one (no container can bind it, send from it or
 * reach the host's loopback through it), in the private ranges above every
 * container id: 127.255.255.254 and fd6c:3369:736f::ffff:fffe.
 */
#define L3_HOST4 0x7ffffffe	/* host order */
#define L3_HOST6_W3 0xfffffffe	/* last word of fd6c:3369:736f::ffff:fffe, host order */


/*
 * l3_binds: the listening sockets of shared-mode containers, by what the
 * application asked for (docs/DESIGN.md rule 3). A container's sockets never
 * hold its addresses in the kernel's bind table on the port the
 * application named: a TCP bind to port P (wildcard, an own address, or
 * 127.0.0.1/::1) and a UDP wildcard bind to P are bound to the wildcard on
 * a port of the kernel's choosing (a "shadow" port), so the host and every
 * container can each listen on *:P. The TC programs on lo and the uplink
 * steer a connection or datagram for (an address of container id, P) to
 * the socket this entry names (bpf_sk_assign); l3_sk_lookup refuses the
 * rest. UDP binds to an address stay where they are (with SO_REUSEADDR, so
 * a host wildcard on P does not collide with them) and are entered too.
 */
enum l3_bind_kind {
	L3_BK_EXACT = 0, /* the address in the key */
	L3_BK_ANY4 = 1,	 /* an IPv4 wildcard socket */
	L3_BK_ANY6 = 2,	 /* an IPv6 wildcard socket (IPv4 too unless it is IPV6_V6ONLY) */
};

struct l3_bkey {
	__u32 id;
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 kind;  /* enum l3_bind_kind */
	__u16 port; /* host order: the port the application bound */
	struct l3_addr addr; /* L3_BK_EXACT: its address (its private loopback for 127.0.0.1, ::1) */
};

enum l3_bval_flags {
	L3_BV_REUSEPORT = 1 << 0, /* the application set SO_REUSEPORT */
	L3_BV_REUSEADDR = 1 << 1, /* the application set SO_REUSEADDR */
	L3_BV_DEAD = 1 << 2,	  /* its last socket is gone: being deleted */
};

struct l3_bval {
	struct bpf_spin_lock lock;
	__u32 refs;	      /* sockets holding it (one, or an SO_REUSEPORT group) */
	__u16 sport;	      /* host order: the port the sockets hold in the kernel */
	__u8 flags;	      /* enum l3_bval_flags */
	__u8 pad;
	__u32 pad2;
	struct l3_addr saddr; /* the address they hold: zero (the wildcard) or a mapped/IPv6 address */
};

/*
 * l3_sports: the shadow ports, index proto_idx * 65536 + port (proto_idx 0
 * TCP, 1 UDP): which container's socket holds it, for the port the
 * application asked for and at which address. The TC programs give a
 * shadow UDP socket's datagrams their application port back; l3_sk_lookup
 * refuses what is sent to a shadow port itself; getsockname shows what the
 * application bound (the socket of an MPTCP listener is not the one bind
 * saw, so this is kept by port, not on the socket).
 */
struct l3_sport {
	__u32 id; /* 0: not a shadow port */
	__u16 aport;
	__u16 pad;
	struct l3_addr view; /* the address the application bound (zero: the wildcard) */
};

/* sk_storage flags on a socket. */
enum l3_sk_flags {
	L3_SK_LISTENER = 1 << 1,     /* a UDP wildcard bind: registered in l3_listen */
	L3_SK_BIND_PENDING = 1 << 2, /* a UDP wildcard bind in progress: post_bind registers it */
	L3_SK_REG_BIND = 1 << 3,     /* bind under way: post_bind enters it in l3_binds (bkey) */
	L3_SK_REG_LISTEN = 1 << 4,   /* bound to port 0: listen() enters it in l3_binds */
	L3_SK_BOUND = 1 << 5,	     /* holds a reference to l3_binds[bkey] */
	L3_SK_SHADOW = 1 << 6,	     /* bound to the wildcard on another port (struct l3_bval) */
	L3_SK_JOIN = 1 << 7,	     /* joins the sockets of bkey (SO_REUSEPORT / SO_REUSEADDR) */
	L3_SK_HOST_WILD = 1 << 8,    /* a host UDP wildcard socket counted in l3_hostudp */
};

enum l3_group_limits {
	L3_SK_GROUPS = 8,     /* (group, source) entries one socket may hold: see struct l3_sk */
	L3_MARK_TAG = 0x6c330000, /* skb->mark of a steered copy: tag | container id (< 1 << 16) */
	L3_MARK_MASK = 0xffff0000,
	L3_MARK_COPY = 0x6c340001, /* a multicast copy assigned to its socket through lo (see tc.c) */
	L3_MARK_OUT = 0x6c340002,  /* a container's limited broadcast sent out of the uplink */
};

/*
 * What one slot of a socket's multicast state says about the sources of its
 * group (struct l3_sk). The kernel keeps, per socket and group, a filter
 * mode and a source list (RFC 3678): INCLUDE {S...} receives from S... only,
 * EXCLUDE {S...} from everyone else. l3iso mirrors it in slots: an
 * any-source join is one L3_SRC_ANY slot (EXCLUDE {}), and each blocked
 * source an L3_SRC_EXCLUDE slot beside it; a source-specific join is one
 * L3_SRC_INCLUDE slot per source. One group is in one mode at a time.
 */
enum l3_sk_src_mode {
	L3_SRC_ANY = 0,	    /* joined G from any source (sources[i] unused, zero) */
	L3_SRC_INCLUDE = 1, /* joined G from sources[i] (IP_ADD_SOURCE_MEMBERSHIP, MCAST_JOIN_SOURCE_GROUP) */
	L3_SRC_EXCLUDE = 2, /* an any-source join of G blocks sources[i] (IP_BLOCK_SOURCE, MCAST_BLOCK_SOURCE) */
};

/*
 * Per-socket state (l3_skstore). For a registered broadcast/multicast
 * listener: the container, its ports and addresses, and the multicast
 * groups it joined, so the release hook unregisters exactly what the socket
 * registered. A group may fill several slots (one per source of its filter,
 * see enum l3_sk_src_mode); it is registered in l3_listen once, while it
 * holds any. For a socket in l3_binds: its key, and what the application
 * sees of its bind (getsockname).
 */
struct l3_sk {
	__u32 flags; /* enum l3_sk_flags */
	__u32 id;    /* container id (L3_SK_LISTENER, groups) */
	__u16 port;  /* host order: the port datagrams are sent to (L3_SK_LISTENER, L3_SK_HOST_WILD) */
	__u16 kport; /* host order: the port it holds in the kernel (L3_SK_LISTENER) */
	__u32 epoch; /* l3_quota's epoch of what it registered */
	struct l3_addr addr;			/* its container's IPv4 address (L3_SK_LISTENER), or zero */
	struct l3_addr groups[L3_SK_GROUPS];	/* per slot: the group; zero = a free slot */
	struct l3_addr sources[L3_SK_GROUPS];	/* per slot: the source (INCLUDE, EXCLUDE) */
	__u8 modes[L3_SK_GROUPS];		/* per slot: enum l3_sk_src_mode */
	__u8 bflags;				/* enum l3_bval_flags of its bind (the application's) */
	__u8 pad[7];
	struct l3_addr addr6;			/* its container's IPv6 address (L3_SK_LISTENER), or zero */
	struct l3_bkey bkey;			/* L3_SK_REG_*, L3_SK_BOUND */
};

/*
 * l3_listen: the broadcast/multicast listener registry, filled by the
 * socket hooks (bind, setsockopt, sock_release), read by l3_tc_group.
 * Key: a multicast group, or 255.255.255.255 (mapped) for "every broadcast
 * address this container may receive", a UDP port, and a page.
 *
 * Every container has a fixed place: page (id - 1) / L3_LPAGE_IDS, and in
 * it one entry per family (slot ((id - 1) % L3_LPAGE_IDS) * 2 + is IPv6),
 * so registering and finding a container's entry is O(1) and every
 * container fits (L3_MAX_CONTAINERS / L3_LPAGE_IDS pages). l3_lsum says
 * which pages of (group, port) hold anybody, each page's used which of its
 * slots do, so a fan-out visits listeners only: O(listeners +
 * L3_LPAGE_WORDS), not O(containers).
 *
 * An entry holds the address its sockets are bound to (the TC program
 * steers a copy to that socket) and the number of its sockets registered.
 * A page's entries and used bits change under its lock; its bit in l3_lsum
 * is set and cleared under that lock too (an atomic or/and: the pages of
 * one word have different locks), so it is set while the page holds
 * anybody. User space never writes l3_lsum, and purges a page only under
 * its lock (BPF_F_LOCK), leaving at worst a bit set for an empty page.
 */
struct l3_lkey {
	struct l3_addr group;
	__u16 port; /* host order */
	__u16 page; /* (id - 1) / L3_LPAGE_IDS */
	__u32 pad;
};

struct l3_lent {
	__u32 id; /* 0: free */
	__u32 refs;
	struct l3_addr addr; /* an address of the container its copies are looked up at */
	__u16 port;	     /* and the port (its shadow port for a UDP wildcard socket) */
	__u16 pad;
	__u32 pad2;
};

enum l3_lpage_limits {
	L3_LPAGE_IDS = 32, /* containers per page: two slots (IPv4, IPv6) each */
	L3_LPAGE_SLOTS = 2 * L3_LPAGE_IDS,
	L3_LPAGES = L3_MAX_CONTAINERS / L3_LPAGE_IDS,
	L3_LPAGE_WORDS = L3_LPAGES / 64,
};

struct l3_lset {
	__u32 dead; /* emptied and being deleted: make a new one */
	__u32 pad;
	__u64 used; /* bit s: e[s] holds a container */
	struct l3_lent e[L3_LPAGE_SLOTS];
};

/*
 * l3_lsum: key (group, port, page 0): bit p of pages: page p holds
 * anybody. Its lock guards it and every page of (group, port): registering
 * and unregistering change a page and its bit together. A page whose last
 * entry goes, and a summary whose last page goes, are marked dead under the
 * lock and deleted; a registration that finds one dead makes a new one.
 */
struct l3_lpages {
	struct bpf_spin_lock lock;
	__u32 dead;
	__u64 pages[L3_LPAGE_WORDS];
};

/* l3_quota: per container id, its sockets' registrations (l3_binds entries,
 * l3_listen entries): at most L3_SOCK_QUOTA. */
struct l3_qval {
	__u32 used;
	__u32 epoch; /* user space bumps it whenever the id is given to a new container */
};

/*
 * What user space asks of l3_purge (tc.c), run with BPF_PROG_TEST_RUN
 * as its packet: remove container id's entries from page key.page of
 * key.group/key.port, under the page's lock.
 */
struct l3_purge_req {
	struct l3_lkey key;
	__u32 id;
	__u32 pad;
};

/*
 * l3_events: a record of every denial and drop (never of an allowed
 * verdict: the counters say those), for `l3iso monitor`. Rate-limited per
 * container and CPU (struct l3_bucket); what the limit or a full ring
 * keeps out is counted (L3_C_EVENTS_LOST).
 */
enum l3_event_type {
	L3_EV_BIND = 1,	   /* bind (and the post_bind registration of it) */
	L3_EV_CONNECT = 2, /* connect */
	L3_EV_SENDMSG = 3, /* sendto / sendmsg */
	L3_EV_INGRESS = 4, /* a packet to a socket (cgroup_skb ingress) */
	L3_EV_EGRESS = 5,  /* a packet from a socket (cgroup_skb egress) */
	L3_EV_JOIN = 6,	   /* a multicast join */
	L3_EV_TC = 7,	   /* a packet of a netns container, or to a group (TC programs) */
	L3_EV_LOOKUP = 8,  /* a connection or datagram nobody listens for (l3_sk_lookup) */
};

struct l3_event {
	__u64 ts;	      /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
	__u32 id;	      /* container id (0: the host) */
	__u32 pid;	      /* tgid; 0 where no task context (packets) */
	char comm[16];	      /* task comm; empty where none */
	__u16 type;	      /* enum l3_event_type */
	__u16 reason;	      /* enum l3_counter: the counter that counted it */
	__s32 err;	      /* errno returned to the application; 0 for a silent drop */
	__u8 family;	      /* 4 or 6 */
	__u8 proto;	      /* IPPROTO_* */
	__u16 pad;
	__u16 port;	      /* host order: the requested or source port */
	__u16 port2;	      /* host order: the destination port */
	struct l3_addr addr;  /* the requested address (bind; join: the group), or the source */
	struct l3_addr addr2; /* the destination, where there is one */
	__u32 owner;	      /* a bind denied: the container that owns the address (0: none) */
	__u32 pad2;
};

/* Per container and CPU, the event rate limit: a token bucket. */
struct l3_bucket {
	__u64 last;   /* when a token was last added (bpf_ktime_get_ns) */
	__u32 tokens;
	__u32 pad;
};

enum l3_event_limits {
	L3_EV_INTERVAL_NS = 50000000, /* a token every 50 ms: 20 events/s per container and CPU */
	L3_EV_BURST = 50,
	L3_EV_RING = 1 << 20,	      /* bytes of l3_events */
};

#endif /* L3ISO_H */
