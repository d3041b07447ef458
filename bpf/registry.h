/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * registry.h — what containers' sockets register, and what that may cost
 * each container (docs/DESIGN.md rules 3 and 6, and rule 8: a container cannot
 * exhaust what the others need).
 *
 *   quota_take/give  l3_quota: a container's sockets hold at most
 *                    L3_SOCK_QUOTA registrations (l3_binds entries and
 *                    l3_listen slots); beyond it a bind or join fails with
 *                    ENOBUFS (counter socket_quota_exceeded)
 *   reg_add/reg_del  l3_listen + l3_lsum: the broadcast/multicast listener
 *                    registry (fanout.h fans datagrams out over it); a page and
 *                    a summary are deleted when their last entry goes
 *
 * Include after maps.h.
 */
#ifndef L3ISO_REGISTRY_H
#define L3ISO_REGISTRY_H

/*
 * Take one registration of container id's quota. The epoch (l3_quota's,
 * set by user space each time an id is given to a container) is recorded
 * with what is registered, so that a socket outliving its container never
 * gives back, or unregisters, what a later container of the same id holds.
 */
static __always_inline int quota_take(__u32 id, __u32 *epoch)
{
	struct l3_qval *q = bpf_map_lookup_elem(&l3_quota, &id);

	if (!q)
		return -1;
	if (__sync_fetch_and_add(&q->used, 1) >= L3_SOCK_QUOTA) {
		__sync_fetch_and_sub(&q->used, 1);
		count(id, L3_C_SOCK_QUOTA);
		return -1;
	}
	*epoch = q->epoch;
	return 0;
}

static __always_inline void quota_give(__u32 id, __u32 epoch)
{
	struct l3_qval *q = bpf_map_lookup_elem(&l3_quota, &id);

	if (q && q->epoch == epoch && q->used > 0)
		__sync_fetch_and_sub(&q->used, 1);
}

/* Is what a socket registered under epoch still its container's? */
static __always_inline int epoch_current(__u32 id, __u32 epoch)
{
	struct l3_qval *q = bpf_map_lookup_elem(&l3_quota, &id);

	return q && q->epoch == epoch;
}

/* ------------------------------- broadcast/multicast registry (rule 6) */

/* An empty l3_lset (too big for the stack), an empty l3_lsum. */
static const struct l3_lset lset_zero;
static const struct l3_lpages lsum_zero;

/* The entry of key k in map m, made from zero when missing. */
static __always_inline void *lookup_or_make(void *m, const void *k, const void *zero)
{
	void *v = bpf_map_lookup_elem(m, k);

	if (!v) {
		bpf_map_update_elem(m, k, zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(m, k);
	}
	return v;
}

/*
 * Global functions (verified once per program, not once per call site:
 * the socket hooks call them in loops over a socket's groups).
 *
 * Register (or count once more) container id, listening at addr:port,
 * under (group, gport) — ports is gport | port << 16 (five arguments at
 * most): O(1), its entry has a fixed place (struct l3_lset).
 * A new entry takes one of the container's quota (epoch: quota_take).
 * Returns 0, or -1 when its quota or the registry is exhausted.
 *
 * The summary's lock guards the page too (l3iso.h, struct l3_lpages). A
 * page or summary found dead (its last entry went, it is being deleted) is
 * made anew: at most twice more, then the registration fails.
 */
__attribute__((noinline)) int reg_add(const struct l3_addr *group, __u32 ports, __u32 id,
				      const struct l3_addr *addr, __u32 *epoch)
{
	__u16 gport = ports & 0xffff, port = ports >> 16;
	struct l3_lkey k = {.port = gport};
	struct l3_lpages *sum;
	struct l3_qval *q;
	struct l3_lset *v;
	struct l3_lent *e;
	__u32 pg, slot;
	int i, taken = 0, done = 0;

	if (!group || !addr || !epoch)
		return -1;
	k.group = *group;
	if (!id || id > L3_MAX_CONTAINERS || !(q = bpf_map_lookup_elem(&l3_quota, &id)))
		return -1;
	*epoch = q->epoch;
	pg = lpage_of(id);
	slot = lslot_of(id, !addr_is_mapped(addr)) & (L3_LPAGE_SLOTS - 1);
	for (i = 0; i < 3 && !done; i++) {
		k.page = 0;
		sum = lookup_or_make(&l3_lsum, &k, &lsum_zero);
		k.page = pg;
		v = lookup_or_make(&l3_listen, &k, &lset_zero);
		if (!sum || !v)
			break;
		e = &v->e[slot];
		if (!taken && e->id != id) {
			/* a new entry, most likely: its quota first (no helper
			 * may run under the lock) */
			if (quota_take(id, epoch))
				return -1;
			taken = 1;
		}
		bpf_spin_lock(&sum->lock);
		if (sum->dead || v->dead) {
			bpf_spin_unlock(&sum->lock);
			continue;
		}
		if (e->id == id) {
			e->refs++;
			bpf_spin_unlock(&sum->lock);
			if (taken)
				quota_give(id, *epoch);
			return 0;
		}
		if (!taken) {
			bpf_spin_unlock(&sum->lock);
			continue; /* it went meanwhile: take the quota, once more */
		}
		e->id = id;
		e->refs = 1;
		e->addr = *addr;
		e->port = port;
		v->used |= 1ULL << slot;
		sum->pages[(pg / 64) & (L3_LPAGE_WORDS - 1)] |= 1ULL << (pg % 64);
		bpf_spin_unlock(&sum->lock);
		done = 1;
	}
	if (!done) {
		if (taken)
			quota_give(id, *epoch);
		count(id, L3_C_SOCK_QUOTA);
		return -1;
	}
	return 0;
}

/*
 * Unregister container id once from (group, gport): its entry goes with
 * its last socket (and gives back its quota), the page with its last
 * entry, the summary with its last page. all: remove the entry whatever
 * its count (a purge). Returns the entries removed. Callers check that
 * what they unregister is still their container's (epoch_current).
 */
__attribute__((noinline)) int reg_del(const struct l3_addr *group, __u16 gport, __u32 id, int v6,
				      int all)
{
	struct l3_lkey k = {.port = gport};
	struct l3_lpages *sum;
	struct l3_lset *v;
	struct l3_lent *e;
	__u32 pg, slot, w;
	int freed = 0, page_gone = 0, sum_gone = 0;

	if (!group)
		return 0;
	k.group = *group;
	if (!id || id > L3_MAX_CONTAINERS)
		return 0;
	pg = lpage_of(id);
	slot = lslot_of(id, v6) & (L3_LPAGE_SLOTS - 1);
	w = (pg / 64) & (L3_LPAGE_WORDS - 1);
	sum = bpf_map_lookup_elem(&l3_lsum, &k);
	k.page = pg;
	v = bpf_map_lookup_elem(&l3_listen, &k);
	if (!sum || !v)
		return 0;
	e = &v->e[slot];
	bpf_spin_lock(&sum->lock);
	if (!sum->dead && !v->dead && e->id == id) {
		if (e->refs > 1 && !all) {
			e->refs--;
		} else {
			e->id = 0;
			e->refs = 0;
			v->used &= ~(1ULL << slot);
			freed = 1;
			if (!v->used) {
				v->dead = 1;
				page_gone = 1;
				sum->pages[w] &= ~(1ULL << (pg % 64));
				if (!(sum->pages[0] | sum->pages[1] | sum->pages[2] | sum->pages[3] |
				      sum->pages[4] | sum->pages[5] | sum->pages[6] | sum->pages[7])) {
					sum->dead = 1;
					sum_gone = 1;
				}
			}
		}
	}
	bpf_spin_unlock(&sum->lock);
	/* Nobody can have made a new one under the key: the dead one is there
	 * until deleted, and lookup_or_make only inserts where none is. */
	if (freed && !all) {
		struct l3_qval *q = bpf_map_lookup_elem(&l3_quota, &id);

		if (q && q->used > 0)
			__sync_fetch_and_sub(&q->used, 1);
	}
	if (page_gone)
		bpf_map_delete_elem(&l3_listen, &k);
	if (sum_gone) {
		k.page = 0;
		bpf_map_delete_elem(&l3_lsum, &k);
	}
	return freed;
}

_Static_assert(L3_LPAGE_WORDS == 8, "reg_del reads every word of l3_lpages");

#endif /* L3ISO_REGISTRY_H */
