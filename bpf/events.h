/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h — a record of every denial and drop, for `l3iso monitor`
 * (l3iso.h, struct l3_event). Only denial and drop paths call these: an
 * allowed bind, connect or packet writes nothing.
 *
 * Include after maps.h.
 */
#ifndef L3ISO_EVENTS_H
#define L3ISO_EVENTS_H

/*
 * A record of container id's to fill and submit (ev_submit), or NULL: over
 * its rate (a token bucket per container and CPU, so a flood from one
 * container costs a bounded share of the ring and of the CPU, and
 * another's events still arrive), or the ring is full. Either is counted.
 */
static __always_inline struct l3_event *ev_begin(__u32 id, __u16 type, __u16 reason)
{
	struct l3_bucket *b = bpf_map_lookup_elem(&l3_ebucket, &id);
	struct l3_cfg *cfg = config();
	struct l3_event *e;
	__u64 now;

	if (!b || !cfg || (cfg->flags & L3_CFG_NO_EVENTS))
		return NULL;
	now = bpf_ktime_get_ns();
	if (b->tokens < L3_EV_BURST) {
		__u64 add = (now - b->last) / L3_EV_INTERVAL_NS;

		if (add) {
			b->tokens = add >= L3_EV_BURST - b->tokens ? L3_EV_BURST : b->tokens + add;
			b->last = now;
		}
	} else {
		b->last = now;
	}
	if (!b->tokens) {
		count(id, L3_C_EVENTS_LOST);
		return NULL;
	}
	e = bpf_ringbuf_reserve(&l3_events, sizeof(*e), 0);
	if (!e) {
		count(id, L3_C_EVENTS_LOST);
		return NULL;
	}
	b->tokens--;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts = bpf_ktime_get_boot_ns();
	e->id = id;
	e->type = type;
	e->reason = reason;
	return e;
}

/* The calling task, where there is one (system calls, not packets). */
static __always_inline void ev_task(struct l3_event *e)
{
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

static __always_inline void ev_addrs(struct l3_event *e, __u8 proto, const struct l3_addr *a,
				     __u16 port, const struct l3_addr *a2, __u16 port2)
{
	e->proto = proto;
	if (a) {
		e->addr = *a;
		e->family = addr_is_mapped(a) ? 4 : 6;
	}
	if (a2) {
		e->addr2 = *a2;
		if (!a)
			e->family = addr_is_mapped(a2) ? 4 : 6;
	}
	e->port = port;
	e->port2 = port2;
}

static __always_inline void ev_submit(struct l3_event *e)
{
	bpf_ringbuf_submit(e, 0);
}

#endif /* L3ISO_EVENTS_H */
