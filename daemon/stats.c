/* stats — the counters behind /metrics, /status, / and `hl7bridge stats`.
 *
 * Recording (network thread): the sender and type keys are built from the
 * message into per-struct scratch space and hashed before the lock is
 * taken; under the lock the keys are interned (fixed open-addressing
 * tables, no allocation), the (listener, sender, type) series is found or
 * added, and a handful of counters are bumped.  Tables that fill up send
 * what does not fit to the "other" sender / type and to the listener's
 * preallocated (listener, other, other) series, so memory is bounded by
 * what stats_new allocates whatever peers send.
 *
 * Reading (HTTP and monitor threads): stats_snapshot_new copies the used
 * part of the tables under the same lock, then aggregates outside it, so a
 * scrape holds up the network thread only for a memcpy.
 *
 * The renderers work on a snapshot and never see the live tables: the
 * Prometheus text format (HELP/TYPE, counters ending in _total, one
 * histogram), the /status JSON, and the HTML page. */
#include "daemon/stats.h"
#include "daemon/chart.h"

#include "core/clock.h"
#include "daemon/cli.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENDER_SLOTS 256   /* hash slots, twice STATS_MAX_SENDERS */
#define TYPE_SLOTS   128
#define SERIES_SLOTS 4096
#define NONE_KEY     "(none)"
#define CACHE_RAW_MAX 256  /* header bytes the one-entry key cache compares */

_Static_assert(SENDER_SLOTS >= 2 * STATS_MAX_SENDERS, "sender table load");
_Static_assert(TYPE_SLOTS >= 2 * STATS_MAX_TYPES, "type table load");
_Static_assert(SERIES_SLOTS >= 2 * STATS_MAX_SERIES, "series table load");
_Static_assert(STATS_MAX_SERIES < 65535 && STATS_MAX_SENDERS < 65535, "uint16_t ids");

struct key_table {
    size_t n, max;
    char (*name)[STATS_KEY_MAX + 1];
    uint16_t *slot;        /* id + 1, 0 = empty */
    size_t n_slots;
};

struct stats {
    pthread_mutex_t mu;
    int64_t started_ms;
    size_t n_listeners;
    const char *lptr[STATS_MAX_LISTENERS];      /* the caller's pointers */
    char lname[STATS_MAX_LISTENERS][65];
    struct stats_hist latency[STATS_MAX_LISTENERS];
    struct key_table senders, types;
    struct stats_series *series;
    size_t n_series;
    uint16_t *series_slot;                      /* id + 1, 0 = empty */
    uint64_t overflow;
    uint64_t tot_acks, tot_nacks;
    struct stats_gauges g;
    struct stats_health h;
    size_t n_sinks;
    struct stats_sink sinks[STATS_MAX_SINKS];
    /* Per listener, a ring of minute marks (index minute % ring size). */
    struct stats_mark marks[STATS_MAX_LISTENERS][STATS_HISTORY_MIN + 1];
    /* Recording thread's scratch (not under the lock). */
    struct buf scratch;
    char skey[STATS_KEY_MAX + 1], tkey[STATS_KEY_MAX + 1];
    /* The last message's raw MSH-3, MSH-4, MSH-9.1, MSH-9.2 and the series
     * they led to.  A feed sends the same header fields message after
     * message, so most records skip decoding, hashing and interning. */
    struct {
        int valid;
        unsigned listener;
        struct hl7_delims d;
        enum hl7_charset cs;
        size_t len[4];
        uint8_t raw[CACHE_RAW_MAX];
        uint16_t series;
        int over;
    } last;
};

/* ---- small pieces -------------------------------------------------------- */

static const int reason_codes[STATS_REASONS - 1] = {
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207,
};

unsigned stats_reason_index(int code)
{
    for (unsigned i = 0; i < STATS_REASONS - 1; i++)
        if (reason_codes[i] == code)
            return i;
    return STATS_REASONS - 1;
}

int stats_reason_code(unsigned index)
{
    return index < STATS_REASONS - 1 ? reason_codes[index] : -1;
}

/* Sub-millisecond buckets matter: an AR is answered in microseconds, an AA
 * after an fsync that takes from 100 µs (NVMe) to tens of ms. */
static const uint64_t lat_le_ns[STATS_LAT_BUCKETS] = {
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
    100000000, 250000000, 500000000, 1000000000, 2500000000u, 5000000000u, 10000000000u,
};
static const char *const lat_le_text[STATS_LAT_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
};

uint64_t stats_lat_le_ns(unsigned i) { return i < STATS_LAT_BUCKETS ? lat_le_ns[i] : UINT64_MAX; }
const char *stats_lat_le_text(unsigned i) { return i < STATS_LAT_BUCKETS ? lat_le_text[i] : "+Inf"; }

unsigned stats_lat_bucket(uint64_t ns)
{
    unsigned lo = 0, hi = STATS_LAT_BUCKETS; /* first edge >= ns, by bisection */
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (lat_le_ns[mid] >= ns)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static const char *const degraded_names[STATS_DEG_COUNT] = {
    "nack_rate", "queue_depth", "sink_failing", "store_unwritable",
};

const char *stats_degraded_name(unsigned bit_index)
{
    return bit_index < STATS_DEG_COUNT ? degraded_names[bit_index] : "unknown";
}

static int is_nack(unsigned code)
{
    return code == HL7_ACK_AE || code == HL7_ACK_AR || code == HL7_ACK_CE || code == HL7_ACK_CR;
}

uint64_t stats_nacks(const struct stats_counts *c)
{
    return c->acks[HL7_ACK_AE] + c->acks[HL7_ACK_AR] + c->acks[HL7_ACK_CE] + c->acks[HL7_ACK_CR];
}

uint64_t stats_acks(const struct stats_counts *c)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < STATS_ACK_CODES; i++)
        n += c->acks[i];
    return n;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0. */
static size_t utf8_len(const uint8_t *p, size_t left)
{
    uint8_t b = p[0];
    size_t n;
    uint32_t min;
    if (b < 0x80)
        return 1;
    if ((b & 0xe0) == 0xc0) { n = 2; min = 0x80; }
    else if ((b & 0xf0) == 0xe0) { n = 3; min = 0x800; }
    else if ((b & 0xf8) == 0xf0) { n = 4; min = 0x10000; }
    else return 0;
    if (n > left)
        return 0;
    uint32_t cp = b & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

size_t stats_clean_key(const uint8_t *p, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(p + i, len - i);
        if (n == 0 || (n == 1 && (p[i] < 0x20 || p[i] == 0x7f))) {
            if (o + 1 > STATS_KEY_MAX)
                break;
            out[o++] = '?';
            i += n ? n : 1;
            continue;
        }
        if (o + n > STATS_KEY_MAX) /* never cut a character in two */
            break;
        memcpy(out + o, p + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    return o;
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- tables (under the lock) ----------------------------------------- */

static int table_init(struct key_table *t, size_t max, size_t slots)
{
    t->max = max;
    t->n_slots = slots;
    t->name = calloc(max, sizeof *t->name);
    t->slot = calloc(slots, sizeof *t->slot);
    if (!t->name || !t->slot)
        return -1;
    memcpy(t->name[0], STATS_OTHER, sizeof STATS_OTHER); /* id 0, never hashed */
    t->n = 1;
    return 0;
}

static void table_release(struct key_table *t)
{
    free(t->name);
    free(t->slot);
}

/* The id of `key`, adding it when there is room; 0 ("other") otherwise.
 * A key that reads "other" is the overflow bucket itself. */
static uint16_t table_intern(struct key_table *t, const char *key, size_t len, uint64_t h,
                             int *overflow)
{
    if (len == sizeof STATS_OTHER - 1 && memcmp(key, STATS_OTHER, len) == 0)
        return 0;
    size_t mask = t->n_slots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        uint16_t s = t->slot[i];
        if (s == 0) {
            if (t->n >= t->max) {
                *overflow = 1;
                return 0;
            }
            uint16_t id = (uint16_t)t->n++;
            memcpy(t->name[id], key, len);
            t->name[id][len] = '\0';
            t->slot[i] = (uint16_t)(id + 1);
            return id;
        }
        const char *nm = t->name[s - 1];
        if (strncmp(nm, key, len) == 0 && nm[len] == '\0')
            return (uint16_t)(s - 1);
    }
}

static struct stats_series *series_get(struct stats *st, unsigned l, uint16_t sid, uint16_t tid,
                                       int *overflow)
{
    uint64_t k = ((uint64_t)l << 32) | ((uint64_t)sid << 16) | tid;
    uint64_t h = k * 0x9e3779b97f4a7c15ull;
    size_t mask = SERIES_SLOTS - 1;
    for (size_t i = (size_t)(h >> 40) & mask;; i = (i + 1) & mask) {
        uint16_t s = st->series_slot[i];
        if (s == 0) {
            if (st->n_series >= STATS_MAX_SERIES) {
                *overflow = 1;
                return &st->series[l]; /* (l, other, other), made at stats_new */
            }
            struct stats_series *se = &st->series[st->n_series];
            se->listener = (uint16_t)l;
            se->sender = sid;
            se->type = tid;
            st->series_slot[i] = (uint16_t)(++st->n_series);
            return se;
        }
        struct stats_series *se = &st->series[s - 1];
        if (se->listener == l && se->sender == sid && se->type == tid)
            return se;
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

struct stats *stats_new(const char *const *listeners, size_t n)
{
    if (n == 0 || n > STATS_MAX_LISTENERS)
        return NULL;
    struct stats *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    pthread_mutex_init(&st->mu, NULL);
    st->started_ms = clock_wall_ms();
    /* Every counter starts at zero: that is the mark of the first minute, so
     * the charts count what arrives before the first sample too. */
    int64_t first = st->started_ms / 60000;
    for (size_t l = 0; l < n; l++)
        st->marks[l][first % (STATS_HISTORY_MIN + 1)].minute = first;
    buf_init(&st->scratch, 4 * STATS_KEY_MAX);
    st->series = calloc(STATS_MAX_SERIES, sizeof *st->series);
    st->series_slot = calloc(SERIES_SLOTS, sizeof *st->series_slot);
    if (!st->series || !st->series_slot ||
        table_init(&st->senders, STATS_MAX_SENDERS, SENDER_SLOTS) != 0 ||
        table_init(&st->types, STATS_MAX_TYPES, TYPE_SLOTS) != 0)
        goto fail;
    st->n_listeners = n;
    int dummy = 0;
    for (size_t i = 0; i < n; i++) {
        st->lptr[i] = listeners[i];
        snprintf(st->lname[i], sizeof st->lname[i], "%s", listeners[i] ? listeners[i] : "");
        /* Series i is (listener i, other, other): the fallback when full. */
        (void)series_get(st, (unsigned)i, 0, 0, &dummy);
    }
    /* Grow the scratch once now, so recording never allocates. */
    uint8_t *w = buf_reserve(&st->scratch, 4 * STATS_KEY_MAX);
    if (!w)
        goto fail;
    return st;
fail:
    stats_free(st);
    return NULL;
}

void stats_free(struct stats *st)
{
    if (!st)
        return;
    table_release(&st->senders);
    table_release(&st->types);
    free(st->series);
    free(st->series_slot);
    buf_release(&st->scratch);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* ---- recording (network thread) ------------------------------------------ */

static unsigned listener_index(const struct stats *st, const char *name)
{
    for (size_t i = 0; i < st->n_listeners; i++)
        if (st->lptr[i] == name)
            return (unsigned)i;
    for (size_t i = 0; name && i < st->n_listeners; i++)
        if (strcmp(st->lname[i], name) == 0)
            return (unsigned)i;
    return 0;
}

/* Bumps the counters of one series (under the lock). */
static void bump(struct stats *st, unsigned l, struct stats_series *se, int over,
                 unsigned ci, int nack, unsigned ri, unsigned messages, unsigned duplicates,
                 unsigned b, uint64_t latency_ns)
{
    se->c.received += messages;
    se->c.duplicates += duplicates;
    se->c.acks[ci]++;
    st->tot_acks++;
    if (nack) {
        se->c.nacks[ri]++;
        st->tot_nacks++;
    }
    if (over)
        st->overflow += messages;
    if (latency_ns) {
        struct stats_hist *h = &st->latency[l];
        h->bucket[b]++;
        h->count++;
        h->sum_ns += latency_ns;
    }
}

/* Records under the keys in skey/tkey; returns the series index used and
 * whether a table was full. */
static uint16_t record(struct stats *st, unsigned l, size_t slen, size_t tlen,
                       enum hl7_ack_code code, int reason, unsigned messages, unsigned duplicates,
                       uint64_t latency_ns, int *overflow)
{
    uint64_t hs = fnv1a(st->skey, slen), ht = fnv1a(st->tkey, tlen);
    unsigned b = latency_ns ? stats_lat_bucket(latency_ns) : 0;
    unsigned ci = (unsigned)code < STATS_ACK_CODES ? (unsigned)code : HL7_ACK_AE;
    int nack = is_nack(ci);
    unsigned ri = nack ? stats_reason_index(reason) : 0;
    int over = 0;

    pthread_mutex_lock(&st->mu);
    uint16_t sid = table_intern(&st->senders, st->skey, slen, hs, &over);
    uint16_t tid = table_intern(&st->types, st->tkey, tlen, ht, &over);
    struct stats_series *se = series_get(st, l, sid, tid, &over);
    bump(st, l, se, over, ci, nack, ri, messages, duplicates, b, latency_ns);
    pthread_mutex_unlock(&st->mu);
    *overflow = over;
    return (uint16_t)(se - st->series);
}

/* The four raw header fields that make the keys, and whether they (with
 * the delimiters and charset that decoding depends on) are the cached ones. */
static int cache_hit(const struct stats *st, unsigned l, const struct hl7_msg *m,
                     const struct hl7_slice f[4])
{
    if (!st->last.valid || st->last.listener != l || st->last.cs != hl7_msg_charset(m) ||
        memcmp(&st->last.d, hl7_msg_delims(m), sizeof st->last.d) != 0)
        return 0;
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        if (f[i].len != st->last.len[i] || memcmp(st->last.raw + off, f[i].p, f[i].len) != 0)
            return 0;
        off += f[i].len;
    }
    return 1;
}

static void cache_store(struct stats *st, unsigned l, const struct hl7_msg *m,
                        const struct hl7_slice f[4], uint16_t series, int over)
{
    size_t total = f[0].len + f[1].len + f[2].len + f[3].len, off = 0;
    st->last.valid = total <= CACHE_RAW_MAX;
    if (!st->last.valid)
        return;
    for (int i = 0; i < 4; i++) {
        if (f[i].len)
            memcpy(st->last.raw + off, f[i].p, f[i].len);
        st->last.len[i] = f[i].len;
        off += f[i].len;
    }
    st->last.listener = l;
    st->last.d = *hl7_msg_delims(m);
    st->last.cs = hl7_msg_charset(m);
    st->last.series = series;
    st->last.over = over;
}

/* Appends to the key scratch; at its ceiling the key is simply cut short. */
static void scratch_add(struct buf *b, const void *p, size_t n)
{
    size_t room = b->max - b->len;
    if (buf_append(b, p, n < room ? n : room) != 0)
        return;
}

/* Appends the namespace id of an HD field (its first component, or the
 * universal id when that is empty), decoded when possible. */
static void append_hd(struct stats *st, const struct hl7_msg *m, struct hl7_slice raw,
                      uint8_t comp)
{
    struct hl7_slice v = hl7_slice_piece(raw, comp, 1);
    if (v.len == 0)
        v = hl7_slice_piece(raw, comp, 2);
    size_t before = st->scratch.len;
    if (m && hl7_decode(m, v, &st->scratch) == 0)
        return;
    st->scratch.len = before;
    scratch_add(&st->scratch, v.p, v.len);
}

static size_t make_key(struct stats *st, const struct hl7_msg *m, struct hl7_slice a,
                       struct hl7_slice b, uint8_t comp, int hd, char *out)
{
    buf_reset(&st->scratch);
    if (hd) {
        append_hd(st, m, a, comp);
    } else {
        scratch_add(&st->scratch, a.p, a.len < STATS_KEY_MAX ? a.len : STATS_KEY_MAX);
    }
    size_t first = st->scratch.len;
    scratch_add(&st->scratch, "^", 1);
    if (hd)
        append_hd(st, m, b, comp);
    else
        scratch_add(&st->scratch, b.p, b.len < STATS_KEY_MAX ? b.len : STATS_KEY_MAX);
    if (first == 0 && st->scratch.len == 1) {
        memcpy(out, NONE_KEY, sizeof NONE_KEY);
        return sizeof NONE_KEY - 1;
    }
    return stats_clean_key(buf_data(&st->scratch), st->scratch.len, out);
}

void stats_record_msg(struct stats *st, const char *listener, const struct hl7_msg *m,
                      enum hl7_ack_code code, int reason, int duplicate, uint64_t latency_ns)
{
    size_t slen, tlen;
    unsigned l = listener_index(st, listener);
    int over = 0;
    if (m) {
        const struct hl7_header *h = hl7_msg_header(m);
        const struct hl7_slice f[4] = { h->send_app, h->send_fac, h->msg_type, h->trigger };
        if (cache_hit(st, l, m, f)) {
            unsigned ci = (unsigned)code < STATS_ACK_CODES ? (unsigned)code : HL7_ACK_AE;
            int nack = is_nack(ci);
            unsigned b = latency_ns ? stats_lat_bucket(latency_ns) : 0;
            pthread_mutex_lock(&st->mu);
            bump(st, l, &st->series[st->last.series], st->last.over, ci, nack,
                 nack ? stats_reason_index(reason) : 0, 1, duplicate ? 1 : 0, b, latency_ns);
            pthread_mutex_unlock(&st->mu);
            return;
        }
        const struct hl7_delims *d = hl7_msg_delims(m);
        uint8_t comp = d && d->comp ? d->comp : '^';
        slen = make_key(st, m, h->send_app, h->send_fac, comp, 1, st->skey);
        tlen = make_key(st, m, h->msg_type, h->trigger, comp, 0, st->tkey);
        uint16_t se = record(st, l, slen, tlen, code, reason, 1, duplicate ? 1 : 0, latency_ns,
                             &over);
        cache_store(st, l, m, f, se, over);
        return;
    }
    memcpy(st->skey, NONE_KEY, sizeof NONE_KEY);
    memcpy(st->tkey, NONE_KEY, sizeof NONE_KEY);
    slen = tlen = sizeof NONE_KEY - 1;
    (void)record(st, l, slen, tlen, code, reason, 1, duplicate ? 1 : 0, latency_ns, &over);
}

void stats_record_batch(struct stats *st, const char *listener, const struct hl7_batch_iter *it,
                        enum hl7_ack_code code, int reason, unsigned messages,
                        unsigned duplicates, uint64_t latency_ns)
{
    size_t slen;
    if (it) {
        uint8_t comp = it->d.comp ? it->d.comp : '^';
        slen = make_key(st, NULL, it->send_app, it->send_fac, comp, 1, st->skey);
    } else {
        memcpy(st->skey, NONE_KEY, sizeof NONE_KEY);
        slen = sizeof NONE_KEY - 1;
    }
    memcpy(st->tkey, "BATCH", 6);
    int over = 0;
    (void)record(st, listener_index(st, listener), slen, 5, code, reason, messages, duplicates,
                 latency_ns, &over);
}

/* A listener's cumulative figures now (under the lock). */
static void mark_now(const struct stats *st, size_t l, int64_t minute, struct stats_mark *m)
{
    memset(m, 0, sizeof *m);
    m->minute = minute;
    for (size_t i = 0; i < st->n_series; i++) {
        const struct stats_series *se = &st->series[i];
        if (se->listener != l)
            continue;
        m->received += se->c.received;
        m->acks += stats_acks(&se->c);
        m->nacks += stats_nacks(&se->c);
    }
    memcpy(m->lat, st->latency[l].bucket, sizeof m->lat);
}

void stats_set_gauges(struct stats *st, const struct stats_gauges *g)
{
    pthread_mutex_lock(&st->mu);
    st->g = *g;
    /* Once a minute: where each listener's counters stood at its start. */
    int64_t minute = g->updated_ms > 0 ? g->updated_ms / 60000 : 0;
    if (minute > 0 && st->n_listeners &&
        st->marks[0][minute % (STATS_HISTORY_MIN + 1)].minute != minute)
        for (size_t l = 0; l < st->n_listeners; l++)
            mark_now(st, l, minute, &st->marks[l][minute % (STATS_HISTORY_MIN + 1)]);
    pthread_mutex_unlock(&st->mu);
}

void stats_get_gauges(struct stats *st, struct stats_gauges *out)
{
    pthread_mutex_lock(&st->mu);
    *out = st->g;
    pthread_mutex_unlock(&st->mu);
}

void stats_set_health(struct stats *st, const struct stats_health *h)
{
    pthread_mutex_lock(&st->mu);
    st->h = *h;
    pthread_mutex_unlock(&st->mu);
}

void stats_set_sinks(struct stats *st, const struct stats_sink *s, size_t n)
{
    if (n > STATS_MAX_SINKS)
        n = STATS_MAX_SINKS;
    pthread_mutex_lock(&st->mu);
    if (n)
        memcpy(st->sinks, s, n * sizeof *s);
    st->n_sinks = n;
    pthread_mutex_unlock(&st->mu);
}

void stats_totals(struct stats *st, uint64_t *acks, uint64_t *nacks)
{
    pthread_mutex_lock(&st->mu);
    *acks = st->tot_acks;
    *nacks = st->tot_nacks;
    pthread_mutex_unlock(&st->mu);
}

/* ---- snapshot (any thread) --------------------------------------------------- */

static void add_counts(struct stats_counts *to, const struct stats_counts *c)
{
    to->received += c->received;
    to->duplicates += c->duplicates;
    for (unsigned i = 0; i < STATS_ACK_CODES; i++)
        to->acks[i] += c->acks[i];
    for (unsigned i = 0; i < STATS_REASONS; i++)
        to->nacks[i] += c->nacks[i];
}

struct stats_snapshot *stats_snapshot_new(struct stats *st)
{
    struct stats_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->now_ms = clock_wall_ms();
    pthread_mutex_lock(&st->mu);
    s->started_ms = st->started_ms;
    s->n_listeners = st->n_listeners;
    memcpy(s->listeners, st->lname, sizeof s->listeners);
    memcpy(s->latency, st->latency, sizeof s->latency);
    s->n_senders = st->senders.n;
    memcpy(s->senders, st->senders.name, s->n_senders * sizeof s->senders[0]);
    s->n_types = st->types.n;
    memcpy(s->types, st->types.name, s->n_types * sizeof s->types[0]);
    s->n_series = st->n_series;
    memcpy(s->series, st->series, s->n_series * sizeof s->series[0]);
    s->overflow = st->overflow;
    s->g = st->g;
    s->h = st->h;
    s->n_sinks = st->n_sinks;
    memcpy(s->sinks, st->sinks, sizeof s->sinks);
    s->history_minute = s->now_ms / 60000;
    for (size_t l = 0; l < s->n_listeners; l++) {
        struct stats_mark now;
        mark_now(st, l, s->history_minute, &now);
        stats_history(st->marks[l], &now, s->history_minute, s->history[l]);
    }
    pthread_mutex_unlock(&st->mu);

    for (size_t i = 0; i < s->n_series; i++) {
        const struct stats_series *se = &s->series[i];
        add_counts(&s->by_listener[se->listener], &se->c);
        add_counts(&s->by_sender[se->sender], &se->c);
        add_counts(&s->by_type[se->type], &se->c);
        add_counts(&s->total, &se->c);
    }
    return s;
}

void stats_snapshot_free(struct stats_snapshot *s) { free(s); }

/* ---- text helpers --------------------------------------------------------- */

static int bprintf(struct buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bprintf(struct buf *out, const char *fmt, ...)
{
    va_list ap;
    char tmp[512];
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof tmp)
        return buf_append(out, tmp, (size_t)n);
    uint8_t *w = buf_reserve(out, (size_t)n + 1);
    if (!w)
        return -1;
    va_start(ap, fmt);
    vsnprintf((char *)w, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_commit(out, (size_t)n);
    return 0;
}

int stats_prom_escape(const char *p, size_t len, struct buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i++) {
        switch (p[i]) {
        case '\\': rc = buf_append(out, "\\\\", 2); break;
        case '"': rc = buf_append(out, "\\\"", 2); break;
        case '\n': rc = buf_append(out, "\\n", 2); break;
        default: rc = buf_append(out, p + i, 1); break;
        }
    }
    return rc;
}

int stats_json_escape(const char *p, size_t len, struct buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = { '\\', (char)ch };
            rc = buf_append(out, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            rc = bprintf(out, "\\u%04x", ch);
        } else {
            rc = buf_append(out, p + i, 1);
        }
    }
    return rc;
}

int stats_html_escape(const char *p, size_t len, struct buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i++) {
        switch (p[i]) {
        case '&': rc = buf_append_str(out, "&amp;"); break;
        case '<': rc = buf_append_str(out, "&lt;"); break;
        case '>': rc = buf_append_str(out, "&gt;"); break;
        case '"': rc = buf_append_str(out, "&quot;"); break;
        case '\'': rc = buf_append_str(out, "&#39;"); break;
        default: rc = buf_append(out, p + i, 1); break;
        }
    }
    return rc;
}

static int prom_s(struct buf *out, const char *s) { return stats_prom_escape(s, strlen(s), out); }
static int json_s(struct buf *out, const char *s)
{
    return buf_append(out, "\"", 1) | stats_json_escape(s, strlen(s), out) |
           buf_append(out, "\"", 1);
}
static int html_s(struct buf *out, const char *s) { return stats_html_escape(s, strlen(s), out); }

/* Nanoseconds as exact decimal seconds. */
static int secs(struct buf *out, uint64_t ns)
{
    return bprintf(out, "%" PRIu64 ".%09" PRIu64, ns / 1000000000u, ns % 1000000000u);
}

/* ---- Prometheus ------------------------------------------------------------- */

static int prom_head(struct buf *out, const char *name, const char *type, const char *help)
{
    return bprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int prom_series_labels(struct buf *out, const struct stats_snapshot *s,
                              const struct stats_series *se)
{
    int rc = buf_append_str(out, "listener=\"");
    rc |= prom_s(out, s->listeners[se->listener]);
    rc |= buf_append_str(out, "\",sender=\"");
    rc |= prom_s(out, s->senders[se->sender]);
    rc |= buf_append_str(out, "\",type=\"");
    rc |= prom_s(out, s->types[se->type]);
    rc |= buf_append_str(out, "\"");
    return rc;
}

static int series_used(const struct stats_series *se)
{
    return se->c.received || stats_acks(&se->c);
}

/* One counter family over every used series; `which` picks the figure. */
enum series_fig { FIG_RECEIVED, FIG_DUPLICATES, FIG_ACKS, FIG_NACKS };

static int prom_series_family(struct buf *out, const struct stats_snapshot *s, const char *name,
                              const char *help, enum series_fig which)
{
    int rc = prom_head(out, name, "counter", help);
    for (size_t i = 0; i < s->n_series && rc == 0; i++) {
        const struct stats_series *se = &s->series[i];
        if (!series_used(se))
            continue;
        if (which == FIG_RECEIVED || which == FIG_DUPLICATES) {
            rc |= bprintf(out, "%s{", name);
            rc |= prom_series_labels(out, s, se);
            rc |= bprintf(out, "} %" PRIu64 "\n",
                          which == FIG_RECEIVED ? se->c.received : se->c.duplicates);
        } else if (which == FIG_ACKS) {
            for (unsigned c = 0; c < STATS_ACK_CODES; c++) {
                if (!se->c.acks[c])
                    continue;
                rc |= bprintf(out, "%s{", name);
                rc |= prom_series_labels(out, s, se);
                rc |= bprintf(out, ",code=\"%s\"} %" PRIu64 "\n",
                              hl7_ack_code_name((enum hl7_ack_code)c), se->c.acks[c]);
            }
        } else {
            for (unsigned r = 0; r < STATS_REASONS; r++) {
                if (!se->c.nacks[r])
                    continue;
                rc |= bprintf(out, "%s{", name);
                rc |= prom_series_labels(out, s, se);
                int code = stats_reason_code(r);
                if (code < 0)
                    rc |= bprintf(out, ",reason=\"other\"} %" PRIu64 "\n", se->c.nacks[r]);
                else
                    rc |= bprintf(out, ",reason=\"%d\"} %" PRIu64 "\n", code, se->c.nacks[r]);
            }
        }
    }
    return rc;
}

static int prom_one(struct buf *out, const char *name, const char *type, const char *help,
                    uint64_t v)
{
    return prom_head(out, name, type, help) | bprintf(out, "%s %" PRIu64 "\n", name, v);
}

int stats_render_prometheus(const struct stats_snapshot *s, struct buf *out)
{
    const struct stats_gauges *g = &s->g;
    int rc = 0;
    rc |= prom_head(out, "hl7bridge_build_info", "gauge", "Version of the running hl7bridge.");
    rc |= bprintf(out, "hl7bridge_build_info{version=\"%s\"} 1\n", HL7BRIDGE_VERSION);
    rc |= prom_head(out, "hl7bridge_start_time_seconds", "gauge",
                    "Start time of the process since the Unix epoch.");
    rc |= bprintf(out, "hl7bridge_start_time_seconds %" PRId64 ".%03" PRId64 "\n",
                  s->started_ms / 1000, s->started_ms % 1000);

    rc |= prom_series_family(out, s, "hl7bridge_messages_received_total",
                             "HL7 messages received (batch members one by one).", FIG_RECEIVED);
    rc |= prom_series_family(out, s, "hl7bridge_acks_total",
                             "Acknowledgements sent, by MSA-1 code (one per batch).", FIG_ACKS);
    rc |= prom_series_family(out, s, "hl7bridge_nacks_total",
                             "Negative acknowledgements (AE AR CE CR) by HL7 table 0357 reason.",
                             FIG_NACKS);
    rc |= prom_series_family(out, s, "hl7bridge_duplicates_total",
                             "Messages re-sent after being stored, answered with the original ACK.",
                             FIG_DUPLICATES);
    rc |= prom_one(out, "hl7bridge_stats_overflow_total", "counter",
                   "Messages counted under sender/type \"other\" because the key tables were full.",
                   s->overflow);

    rc |= prom_head(out, "hl7bridge_ack_latency_seconds", "histogram",
                    "Time from a frame's arrival to its ACK being handed to the connection.");
    for (size_t l = 0; l < s->n_listeners && rc == 0; l++) {
        const struct stats_hist *h = &s->latency[l];
        uint64_t cum = 0;
        for (unsigned b = 0; b <= STATS_LAT_BUCKETS; b++) {
            cum += h->bucket[b];
            rc |= buf_append_str(out, "hl7bridge_ack_latency_seconds_bucket{listener=\"");
            rc |= prom_s(out, s->listeners[l]);
            rc |= bprintf(out, "\",le=\"%s\"} %" PRIu64 "\n", stats_lat_le_text(b), cum);
        }
        rc |= buf_append_str(out, "hl7bridge_ack_latency_seconds_sum{listener=\"");
        rc |= prom_s(out, s->listeners[l]);
        rc |= buf_append_str(out, "\"} ");
        rc |= secs(out, h->sum_ns);
        rc |= buf_append_str(out, "\nhl7bridge_ack_latency_seconds_count{listener=\"");
        rc |= prom_s(out, s->listeners[l]);
        rc |= bprintf(out, "\"} %" PRIu64 "\n", h->count);
    }

    /* Transport. */
    rc |= prom_one(out, "hl7bridge_connections", "gauge", "Open MLLP connections.", g->connections);
    rc |= prom_one(out, "hl7bridge_connections_accepted_total", "counter",
                   "MLLP connections accepted.", g->mllp.accepted);
    rc |= prom_head(out, "hl7bridge_connections_refused_total", "counter",
                    "MLLP connections refused, by reason.");
    rc |= bprintf(out, "hl7bridge_connections_refused_total{reason=\"limit\"} %" PRIu64 "\n",
                  g->mllp.refused_limit);
    rc |= prom_one(out, "hl7bridge_connections_closed_idle_total", "counter",
                   "MLLP connections closed after the idle timeout.", g->mllp.closed_idle);
    rc |= prom_one(out, "hl7bridge_frames_total", "counter", "MLLP frames received.",
                   g->mllp.frames);
    rc |= prom_head(out, "hl7bridge_frames_rejected_total", "counter",
                    "MLLP frames rejected or abandoned, by reason.");
    rc |= bprintf(out, "hl7bridge_frames_rejected_total{reason=\"oversize\"} %" PRIu64 "\n",
                  g->mllp.oversize);
    rc |= bprintf(out, "hl7bridge_frames_rejected_total{reason=\"restarted\"} %" PRIu64 "\n",
                  g->mllp.restarts);
    rc |= bprintf(out, "hl7bridge_frames_rejected_total{reason=\"input_budget\"} %" PRIu64 "\n",
                  g->mllp.over_budget);
    rc |= prom_one(out, "hl7bridge_garbage_bytes_total", "counter",
                   "Bytes received outside MLLP frames and skipped.", g->mllp.garbage_bytes);
    rc |= prom_one(out, "hl7bridge_received_bytes_total", "counter",
                   "Bytes read from MLLP connections.", g->mllp.bytes_in);
    rc |= prom_one(out, "hl7bridge_sent_bytes_total", "counter",
                   "Bytes written to MLLP connections.", g->mllp.bytes_out);

    /* Store and pipeline. */
    rc |= prom_one(out, "hl7bridge_store_queue_depth", "gauge",
                   "Messages handed to the store writer and not yet committed.", g->store_queue);
    rc |= prom_one(out, "hl7bridge_acks_pending", "gauge",
                   "Frames received and not yet answered.", g->acks_pending);
    rc |= prom_one(out, "hl7bridge_store_commits_total", "counter",
                   "Store transactions committed (group commits).", g->store.commits);
    rc |= prom_one(out, "hl7bridge_store_messages_total", "counter",
                   "Messages committed to the store.", g->store.messages);
    rc |= prom_one(out, "hl7bridge_store_duplicates_total", "counter",
                   "Messages the store found already stored.", g->store.duplicates);
    rc |= prom_one(out, "hl7bridge_control_id_reused_total", "counter",
                   "Messages stored as new although their sender and control id were stored"
                   " before with other content (a reused control id, not a re-send).",
                   g->store.control_id_reused);
    rc |= prom_one(out, "hl7bridge_store_failures_total", "counter",
                   "Messages the store could not commit (answered AE).", g->store.failures);
    rc |= prom_one(out, "hl7bridge_store_unavailable", "gauge",
                   "1 while the store's database server cannot be reached (PostgreSQL).",
                   (uint64_t)g->store.unavailable);
    rc |= prom_one(out, "hl7bridge_store_reconnects_total", "counter",
                   "Times the store connected again to its database server (PostgreSQL).",
                   g->store.reconnects);
    rc |= prom_head(out, "hl7bridge_store_commit_seconds_total", "counter",
                    "Time spent in store transactions.");
    rc |= buf_append_str(out, "hl7bridge_store_commit_seconds_total ");
    rc |= secs(out, g->store.commit_ns_total);
    rc |= buf_append_str(out, "\n");
    rc |= prom_one(out, "hl7bridge_store_max_group_messages", "gauge",
                   "Largest number of messages committed in one transaction.",
                   g->store.max_group_seen);
    rc |= prom_one(out, "hl7bridge_rows_total", "counter", "Connector rows stored.",
                   g->ingest.rows);
    rc |= prom_one(out, "hl7bridge_messages_quarantined_total", "counter",
                   "Messages accepted and kept aside by the mapping rules.", g->ingest.quarantined);
    rc |= prom_one(out, "hl7bridge_messages_filtered_total", "counter",
                   "Messages accepted that no mapping rule selected.", g->ingest.filtered);
    rc |= prom_one(out, "hl7bridge_batch_count_mismatch_total", "counter",
                   "Batches whose BTS-1 or FTS-1 count did not match their content"
                   " (warned; the members were judged one by one).",
                   g->ingest.batch_count_mismatch);
    rc |= prom_one(out, "hl7bridge_batches_total", "counter", "HL7 batches received.",
                   g->ingest.batches);
    rc |= prom_head(out, "hl7bridge_unresolved_user_rows_total", "counter",
                    "Rows whose user the rules could not resolve, by rule and by what "
                    "on_unresolved_user did (filter: dropped, quarantine: message kept aside, "
                    "keep: row kept).");
    for (unsigned i = 0; i < g->ingest.n_unresolved; i++) {
        const struct ingest_rule_stat *u = &g->ingest.unresolved[i];
        for (int a = 0; a < MAPPING_UNRESOLVED_N; a++) {
            rc |= buf_append_str(out, "hl7bridge_unresolved_user_rows_total{rule=\"");
            rc |= prom_s(out, u->rule);
            rc |= bprintf(out, "\",action=\"%s\"} %" PRIu64 "\n",
                          mapping_unresolved_name((enum mapping_unresolved)a), u->rows[a]);
        }
    }
    rc |= prom_head(out, "hl7bridge_store_free_disk_bytes", "gauge",
                    "Free space on the store's filesystem (-1 unknown).");
    rc |= bprintf(out, "hl7bridge_store_free_disk_bytes %" PRId64 "\n",
                  s->h.free_disk_mb < 0 ? -1 : s->h.free_disk_mb * 1048576);

    /* Sinks: one gauge set per reporting sink. */
    rc |= prom_head(out, "hl7bridge_sink_rows_pending", "gauge", "Rows waiting for a sink.");
    for (size_t i = 0; i < s->n_sinks; i++) {
        rc |= buf_append_str(out, "hl7bridge_sink_rows_pending{sink=\"");
        rc |= prom_s(out, s->sinks[i].name);
        rc |= bprintf(out, "\"} %" PRIu64 "\n", s->sinks[i].rows_pending);
    }
    rc |= prom_head(out, "hl7bridge_sink_failing", "gauge",
                    "1 while a sink's last attempt failed.");
    for (size_t i = 0; i < s->n_sinks; i++) {
        rc |= buf_append_str(out, "hl7bridge_sink_failing{sink=\"");
        rc |= prom_s(out, s->sinks[i].name);
        rc |= bprintf(out, "\"} %d\n", s->sinks[i].failing_since_ms ? 1 : 0);
    }

    /* Health. */
    rc |= prom_one(out, "hl7bridge_ready", "gauge",
                   "1 when the store is writable and no sink has failed too long.",
                   (uint64_t)(s->h.ready ? 1 : 0));
    rc |= prom_one(out, "hl7bridge_degraded", "gauge", "1 when any degraded condition holds.",
                   (uint64_t)(s->h.degraded ? 1 : 0));
    rc |= prom_head(out, "hl7bridge_degraded_condition", "gauge",
                    "1 while this degraded condition holds.");
    for (unsigned i = 0; i < STATS_DEG_COUNT; i++)
        rc |= bprintf(out, "hl7bridge_degraded_condition{condition=\"%s\"} %d\n",
                      stats_degraded_name(i), (s->h.degraded >> i) & 1u ? 1 : 0);
    return rc ? -1 : 0;
}

/* ---- JSON ------------------------------------------------------------------- */

/* Written with ", " and ": " separators: the text is also YAML, which is
 * how `hl7bridge stats` reads it back with the YAML parser it links. */
static int json_counts(struct buf *out, const struct stats_counts *c)
{
    int rc = bprintf(out, "\"received\": %" PRIu64 ", \"duplicates\": %" PRIu64
                          ", \"nacks_total\": %" PRIu64 ", \"acks\": {",
                     c->received, c->duplicates, stats_nacks(c));
    for (unsigned i = 0; i < STATS_ACK_CODES; i++)
        rc |= bprintf(out, "%s\"%s\": %" PRIu64, i ? ", " : "",
                      hl7_ack_code_name((enum hl7_ack_code)i), c->acks[i]);
    rc |= buf_append_str(out, "}, \"nacks\": {");
    int first = 1;
    for (unsigned r = 0; r < STATS_REASONS; r++) {
        if (!c->nacks[r])
            continue;
        int code = stats_reason_code(r);
        if (code < 0)
            rc |= bprintf(out, "%s\"other\": %" PRIu64, first ? "" : ", ", c->nacks[r]);
        else
            rc |= bprintf(out, "%s\"%d\": %" PRIu64, first ? "" : ", ", code, c->nacks[r]);
        first = 0;
    }
    rc |= buf_append_str(out, "}");
    return rc;
}

static int used(const struct stats_counts *c) { return c->received || stats_acks(c); }

/* Upper bucket edge below which `q` of the observations fall, in ns (0:
 * no data, UINT64_MAX: beyond the last edge). */
static uint64_t hist_quantile(const struct stats_hist *h, double q)
{
    if (!h->count)
        return 0;
    uint64_t want = (uint64_t)((double)h->count * q + 0.999999);
    uint64_t cum = 0;
    for (unsigned b = 0; b <= STATS_LAT_BUCKETS; b++) {
        cum += h->bucket[b];
        if (cum >= want)
            return stats_lat_le_ns(b);
    }
    return UINT64_MAX;
}

void stats_history(const struct stats_mark *ring, const struct stats_mark *now, int64_t minute,
                   struct stats_minute *out)
{
    for (size_t k = 0; k < STATS_HISTORY_MIN; k++) {
        int64_t m = minute - (int64_t)(STATS_HISTORY_MIN - 1) + (int64_t)k;
        struct stats_minute *o = &out[k];
        memset(o, 0, sizeof *o);
        const struct stats_mark *a = &ring[m % (STATS_HISTORY_MIN + 1)];
        const struct stats_mark *b = m == minute ? now : &ring[(m + 1) % (STATS_HISTORY_MIN + 1)];
        if (m <= 0 || a->minute != m || b->minute != m + (m == minute ? 0 : 1) ||
            b->received < a->received || b->acks < a->acks || b->nacks < a->nacks)
            continue;
        struct stats_hist h = { .count = 0 };
        for (unsigned i = 0; i <= STATS_LAT_BUCKETS; i++) {
            h.bucket[i] = b->lat[i] >= a->lat[i] ? b->lat[i] - a->lat[i] : 0;
            h.count += h.bucket[i];
        }
        o->valid = 1;
        o->received = b->received - a->received;
        o->acks = b->acks - a->acks;
        o->nacks = b->nacks - a->nacks;
        o->p99_ns = hist_quantile(&h, 0.99);
    }
}

int stats_render_json(const struct stats_snapshot *s, struct buf *out)
{
    const struct stats_gauges *g = &s->g;
    const struct stats_health *h = &s->h;
    int rc = bprintf(out, "{\"version\": \"%s\", \"now_ms\": %" PRId64 ", \"started_ms\": %" PRId64
                          ", \"uptime_s\": %" PRId64 ", \"ready\": %s, \"degraded\": %s, "
                          "\"degraded_reasons\": [",
                     HL7BRIDGE_VERSION, s->now_ms, s->started_ms,
                     (s->now_ms - s->started_ms) / 1000, h->ready ? "true" : "false",
                     h->degraded ? "true" : "false");
    int first = 1;
    for (unsigned i = 0; i < STATS_DEG_COUNT; i++) {
        if (h->degraded & (1u << i)) {
            rc |= bprintf(out, "%s\"%s\"", first ? "" : ", ", stats_degraded_name(i));
            first = 0;
        }
    }
    uint64_t wpct10 = h->window_acks ? h->window_nacks * 1000 / h->window_acks : 0;
    rc |= bprintf(out, "], \"thresholds\": {\"nack_percent\": %u, \"queue_depth\": %u, "
                       "\"sink_failing_s\": %u}, \"nack_window\": {\"seconds\": %" PRIu64
                       ", \"acks\": %" PRIu64 ", \"nacks\": %" PRIu64 ", \"percent\": %" PRIu64
                       ".%" PRIu64 "}, ",
                  h->nack_percent, h->queue_depth, h->sink_failing_s, h->window_s, h->window_acks,
                  h->window_nacks, wpct10 / 10, wpct10 % 10);
    rc |= bprintf(out, "\"store\": {\"writable\": %s, \"free_disk_mb\": %" PRId64
                       ", \"queue_depth\": %" PRIu64 ", \"acks_pending\": %" PRIu64
                       ", \"commits\": %" PRIu64 ", \"messages\": %" PRIu64
                       ", \"duplicates\": %" PRIu64 ", \"control_id_reused\": %" PRIu64
                       ", \"failures\": %" PRIu64 ", \"max_group\": %" PRIu64 ", \"commit_us_avg\": %" PRIu64
                       ", \"rows\": %" PRIu64 ", \"quarantined\": %" PRIu64 ", \"filtered\": %"
                       PRIu64 ", \"unavailable\": %s, \"reconnects\": %" PRIu64 "}, ",
                  h->store_writable ? "true" : "false", h->free_disk_mb, g->store_queue,
                  g->acks_pending, g->store.commits, g->store.messages, g->store.duplicates,
                  g->store.control_id_reused, g->store.failures, g->store.max_group_seen,
                  g->store.commits ? g->store.commit_ns_total / g->store.commits / 1000 : 0,
                  g->ingest.rows, g->ingest.quarantined, g->ingest.filtered,
                  g->store.unavailable ? "true" : "false", g->store.reconnects);
    /* Retention: how long each PHI-bearing kind is kept and the age of the
     * oldest record of it the store still holds (keep_s -1: kept). */
    const struct store_retention_report *rr = &g->store.retention;
    rc |= bprintf(out, "\"retention\": {\"checked_ms\": %" PRId64 ", \"kinds\": [", rr->checked_ms);
    for (int k = 0; k < STORE_KIND_N; k++) {
        int64_t keep = rr->keep_ms[k] == STORE_KEEP_FOREVER ? -1 : (int64_t)(rr->keep_ms[k] / 1000);
        int64_t age = rr->oldest_ms[k] && s->now_ms > rr->oldest_ms[k]
                          ? (s->now_ms - rr->oldest_ms[k]) / 1000 : 0;
        rc |= bprintf(out, "%s{\"kind\": \"%s\", \"keep_s\": %" PRId64 ", \"oldest_ms\": %" PRId64
                           ", \"oldest_age_s\": %" PRId64 ", \"purged\": %" PRIu64 "}",
                      k ? ", " : "", store_kind_name((enum store_kind)k), keep, rr->oldest_ms[k],
                      age, rr->purged[k]);
    }
    rc |= buf_append_str(out, "]}, ");
    rc |= bprintf(out, "\"connections\": {\"current\": %" PRIu64 ", \"accepted\": %" PRIu64
                       ", \"refused_limit\": %" PRIu64 ", \"closed_idle\": %" PRIu64 "}, "
                       "\"frames\": {\"received\": %" PRIu64 ", \"oversize\": %" PRIu64
                       ", \"restarted\": %" PRIu64 ", \"garbage_bytes\": %" PRIu64 "}, "
                       "\"bytes\": {\"in\": %" PRIu64 ", \"out\": %" PRIu64 "}, ",
                  g->connections, g->mllp.accepted, g->mllp.refused_limit, g->mllp.closed_idle,
                  g->mllp.frames, g->mllp.oversize, g->mllp.restarts, g->mllp.garbage_bytes,
                  g->mllp.bytes_in, g->mllp.bytes_out);
    rc |= bprintf(out, "\"unresolved_users\": {\"rows\": %" PRIu64 ", \"rules\": [",
                  g->ingest.unresolved_users);
    for (unsigned i = 0; i < g->ingest.n_unresolved; i++) {
        const struct ingest_rule_stat *u = &g->ingest.unresolved[i];
        rc |= buf_append_str(out, i ? ", {\"rule\": " : "{\"rule\": ");
        rc |= json_s(out, u->rule);
        for (int a = 0; a < MAPPING_UNRESOLVED_N; a++)
            rc |= bprintf(out, ", \"%s\": %" PRIu64,
                          mapping_unresolved_name((enum mapping_unresolved)a), u->rows[a]);
        rc |= buf_append_str(out, "}");
    }
    rc |= buf_append_str(out, "]}, ");
    rc |= buf_append_str(out, "\"totals\": {");
    rc |= json_counts(out, &s->total);
    rc |= bprintf(out, ", \"overflow\": %" PRIu64 "}, \"listeners\": [", s->overflow);
    for (size_t l = 0; l < s->n_listeners; l++) {
        const struct stats_hist *hh = &s->latency[l];
        rc |= buf_append_str(out, l ? ", {\"name\": " : "{\"name\": ");
        rc |= json_s(out, s->listeners[l]);
        rc |= buf_append_str(out, ", ");
        rc |= json_counts(out, &s->by_listener[l]);
        uint64_t p50 = hist_quantile(hh, 0.5), p99 = hist_quantile(hh, 0.99);
        rc |= bprintf(out, ", \"latency\": {\"count\": %" PRIu64 ", \"sum_us\": %" PRIu64
                           ", \"p50_le_us\": %" PRId64 ", \"p99_le_us\": %" PRId64 "}}",
                      hh->count, hh->sum_ns / 1000,
                      p50 == UINT64_MAX ? (int64_t)-1 : (int64_t)(p50 / 1000),
                      p99 == UINT64_MAX ? (int64_t)-1 : (int64_t)(p99 / 1000));
    }
    rc |= buf_append_str(out, "], \"senders\": [");
    first = 1;
    for (size_t i = 0; i < s->n_senders; i++) {
        if (!used(&s->by_sender[i]))
            continue;
        rc |= buf_append_str(out, first ? "{\"sender\": " : ", {\"sender\": ");
        rc |= json_s(out, s->senders[i]);
        rc |= buf_append_str(out, ", ");
        rc |= json_counts(out, &s->by_sender[i]);
        rc |= buf_append_str(out, "}");
        first = 0;
    }
    rc |= buf_append_str(out, "], \"types\": [");
    first = 1;
    for (size_t i = 0; i < s->n_types; i++) {
        if (!used(&s->by_type[i]))
            continue;
        rc |= buf_append_str(out, first ? "{\"type\": " : ", {\"type\": ");
        rc |= json_s(out, s->types[i]);
        rc |= buf_append_str(out, ", ");
        rc |= json_counts(out, &s->by_type[i]);
        rc |= buf_append_str(out, "}");
        first = 0;
    }
    rc |= buf_append_str(out, "], \"series\": [");
    first = 1;
    for (size_t i = 0; i < s->n_series; i++) {
        const struct stats_series *se = &s->series[i];
        if (!series_used(se))
            continue;
        rc |= buf_append_str(out, first ? "{\"listener\": " : ", {\"listener\": ");
        rc |= json_s(out, s->listeners[se->listener]);
        rc |= buf_append_str(out, ", \"sender\": ");
        rc |= json_s(out, s->senders[se->sender]);
        rc |= buf_append_str(out, ", \"type\": ");
        rc |= json_s(out, s->types[se->type]);
        rc |= buf_append_str(out, ", ");
        rc |= json_counts(out, &se->c);
        rc |= buf_append_str(out, "}");
        first = 0;
    }
    rc |= buf_append_str(out, "], \"sinks\": [");
    for (size_t i = 0; i < s->n_sinks; i++) {
        const struct stats_sink *k = &s->sinks[i];
        rc |= buf_append_str(out, i ? ", {\"name\": " : "{\"name\": ");
        rc |= json_s(out, k->name);
        rc |= buf_append_str(out, ", \"type\": ");
        rc |= json_s(out, k->type);
        rc |= buf_append_str(out, ", \"state\": ");
        rc |= json_s(out, k->state);
        rc |= bprintf(out, ", \"rows_pending\": %" PRIu64 ", \"blocks_sealed\": %" PRIu64
                           ", \"blocks_uploading\": %" PRIu64 ", \"blocks_done\": %" PRIu64
                           ", \"blocks_failed\": %" PRIu64 ", \"retries\": %" PRIu64
                           ", \"token_renewals\": %" PRIu64 ", \"sent\": %" PRIu64
                           ", \"failed\": %" PRIu64 ", \"skipped\": %" PRIu64
                           ", \"last_success_ms\": %" PRId64 ", \"failing_since_ms\": %" PRId64
                           ", \"last_error\": ",
                      k->rows_pending, k->blocks_sealed, k->blocks_uploading, k->blocks_done,
                      k->blocks_failed, k->retries, k->token_renewals, k->sent, k->failed,
                      k->skipped, k->last_success_ms, k->failing_since_ms);
        rc |= json_s(out, k->last_error);
        rc |= buf_append_str(out, "}");
    }
    /* PostgreSQL: the nodes as this node's last heartbeat read them
     * (age_ms on the server's clock at that moment); empty on SQLite. */
    rc |= buf_append_str(out, "], \"cluster\": [");
    for (size_t i = 0; i < g->n_cluster; i++) {
        const struct store_node *x = &g->cluster[i];
        rc |= buf_append_str(out, i ? ", {\"name\": " : "{\"name\": ");
        rc |= json_s(out, x->name);
        rc |= buf_append_str(out, ", \"version\": ");
        rc |= json_s(out, x->version);
        rc |= bprintf(out, ", \"state\": \"%s\", \"heartbeat_age_ms\": %" PRId64
                           ", \"heartbeat_ms\": %" PRId64 ", \"started_ms\": %" PRId64
                           ", \"pid\": %" PRId64 ", \"aa\": %" PRIu64 ", \"ae\": %" PRIu64
                           ", \"ar\": %" PRIu64 ", \"stored\": %" PRIu64 "}",
                      x->up ? "up" : "down", x->age_ms, x->interval_ms, x->started_ms, x->pid,
                      x->aa, x->ae, x->ar, x->stored);
    }
    rc |= buf_append_str(out, "]}\n");
    return rc ? -1 : 0;
}

/* ---- HTML ------------------------------------------------------------------- */

static const char page_head[] =
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta http-equiv=\"refresh\" content=\"5\">"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    "<title>hl7bridge status</title><style>"
    "body{font:14px/1.4 system-ui,-apple-system,\"Segoe UI\",sans-serif;margin:0;"
    "color:#1d2330;background:#f5f6f8}"
    "header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:16px;"
    "align-items:baseline}"
    "header h1{font-size:18px;margin:0}main{padding:8px 24px 24px}"
    "h2{font-size:15px;margin:20px 0 6px}"
    "table{border-collapse:collapse;background:#fff;min-width:60%;"
    "box-shadow:0 1px 2px rgba(0,0,0,.08)}"
    "th,td{padding:5px 10px;border-bottom:1px solid #e4e6eb;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "th{background:#eceef2;font-weight:600}"
    "td.bad{color:#b3261e;font-weight:600}"
    ".pill{padding:2px 10px;border-radius:10px;font-weight:600}"
    ".ok{background:#d7f5dd;color:#11632a}.warn{background:#fff1c2;color:#7a5200}"
    ".down{background:#fbd9d6;color:#8c1d18}"
    ".muted{color:#6b7280}footer{padding:0 24px 24px;color:#6b7280}"
    "h3{font-size:14px;margin:10px 0 4px}"
    ".listener-history{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}"
    ".listener-history h3{flex-basis:100%}"
    "svg.chart{background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}"
    "</style></head><body>\n";

static int html_pct(struct buf *out, uint64_t part, uint64_t whole, int bad_over)
{
    uint64_t p10 = whole ? part * 1000 / whole : 0;
    int bad = whole && bad_over > 0 && p10 > (uint64_t)bad_over * 10;
    return bprintf(out, "<td%s>%" PRIu64 ".%" PRIu64 "%%</td>", bad ? " class=\"bad\"" : "",
                   p10 / 10, p10 % 10);
}

static int html_counts_row(struct buf *out, const char *name, const struct stats_counts *c,
                           unsigned nack_pct)
{
    int rc = buf_append_str(out, "<tr><td>");
    rc |= html_s(out, name);
    rc |= bprintf(out, "</td><td>%" PRIu64 "</td>", c->received);
    for (unsigned i = 0; i < STATS_ACK_CODES; i++)
        rc |= bprintf(out, "<td%s>%" PRIu64 "</td>",
                      is_nack(i) && c->acks[i] ? " class=\"bad\"" : "", c->acks[i]);
    rc |= bprintf(out, "<td>%" PRIu64 "</td>", c->duplicates);
    rc |= html_pct(out, stats_nacks(c), stats_acks(c), (int)nack_pct);
    return rc;
}

static const char counts_head[] =
    "<th>Received</th><th>AA</th><th>AE</th><th>AR</th><th>CA</th><th>CE</th><th>CR</th>"
    "<th>Duplicates</th><th>NACK rate</th>";

static int html_latency(struct buf *out, uint64_t ns)
{
    if (ns == 0)
        return buf_append_str(out, "<td class=\"muted\">–</td>");
    if (ns == UINT64_MAX)
        return buf_append_str(out, "<td>&gt; 10 s</td>");
    if (ns < 1000000)
        return bprintf(out, "<td>≤ %" PRIu64 " µs</td>", ns / 1000);
    if (ns < 1000000000)
        return bprintf(out, "<td>≤ %" PRIu64 ".%" PRIu64 " ms</td>", ns / 1000000,
                       ns % 1000000 / 100000);
    return bprintf(out, "<td>≤ %" PRIu64 ".%" PRIu64 " s</td>", ns / 1000000000,
                   ns % 1000000000 / 100000000);
}

/* The last hour per listener: messages per minute, NACK rate and ACK p99,
 * as three inline SVG charts. */
static int html_history(struct buf *out, const struct stats_snapshot *s)
{
    int rc = buf_append_str(out, "<h2>Last hour</h2><div id=\"history\">\n");
    double v[3][STATS_HISTORY_MIN];
    uint8_t ok[3][STATS_HISTORY_MIN];
    for (size_t l = 0; l < s->n_listeners && rc == 0; l++) {
        for (size_t k = 0; k < STATS_HISTORY_MIN; k++) {
            const struct stats_minute *m = &s->history[l][k];
            v[0][k] = (double)m->received;
            ok[0][k] = (uint8_t)m->valid;
            v[1][k] = m->acks ? 100.0 * (double)m->nacks / (double)m->acks : 0;
            ok[1][k] = (uint8_t)(m->valid && m->acks);
            /* Above the last bucket: drawn at its edge (the tooltip says so too). */
            v[2][k] = m->p99_ns == UINT64_MAX ? (double)stats_lat_le_ns(STATS_LAT_BUCKETS - 1) / 1e6
                                              : (double)m->p99_ns / 1e6;
            ok[2][k] = (uint8_t)(m->valid && m->p99_ns);
        }
        rc |= bprintf(out, "<section class=\"listener-history\" id=\"history-%zu\"><h3>", l);
        rc |= html_s(out, s->listeners[l]);
        rc |= buf_append_str(out, "</h3>");
        static const char *const ids[3] = { "messages", "nacks", "p99" };
        static const char *const titles[3] = { "Messages per minute", "NACK rate",
                                               "ACK latency p99" };
        static const char *const units[3] = { "", "%", " ms" };
        for (int c = 0; c < 3 && rc == 0; c++) {
            char id[48];
            snprintf(id, sizeof id, "chart-%zu-%s", l, ids[c]);
            struct chart ch = { .id = id, .title = titles[c], .unit = units[c],
                                .decimals = c == 0 ? 0 : 1,
                                .kind = c == 0 ? CHART_BARS : CHART_LINE,
                                .last_minute = s->history_minute, .v = v[c], .valid = ok[c],
                                .n = STATS_HISTORY_MIN };
            rc |= chart_svg(out, &ch);
        }
        rc |= buf_append_str(out, "</section>\n");
    }
    rc |= buf_append_str(out, "</div>\n");
    return rc;
}

int stats_render_html(const struct stats_snapshot *s, struct buf *out)
{
    const struct stats_health *h = &s->h;
    const struct stats_gauges *g = &s->g;
    int rc = buf_append_str(out, page_head);
    rc |= bprintf(out, "<header><h1>hl7bridge %s</h1>", HL7BRIDGE_VERSION);
    rc |= bprintf(out, "<span id=\"ready\" class=\"pill %s\">%s</span>", h->ready ? "ok" : "down",
                  h->ready ? "Ready" : "Not ready");
    if (h->degraded) {
        rc |= buf_append_str(out, "<span id=\"degraded\" class=\"pill warn\">Degraded:");
        for (unsigned i = 0; i < STATS_DEG_COUNT; i++)
            if (h->degraded & (1u << i))
                rc |= bprintf(out, " %s", stats_degraded_name(i));
        rc |= buf_append_str(out, "</span>");
    } else {
        rc |= buf_append_str(out, "<span id=\"degraded\" class=\"pill ok\">Not degraded</span>");
    }
    int64_t up = (s->now_ms - s->started_ms) / 1000;
    rc |= bprintf(out, "<span>up %" PRId64 "h %02" PRId64 "m</span></header><main>\n", up / 3600,
                  up / 60 % 60);

    uint64_t wp10 = h->window_acks ? h->window_nacks * 1000 / h->window_acks : 0;
    rc |= bprintf(out, "<h2>Queues</h2><table id=\"queues\"><tr><th>Figure</th><th>Value</th></tr>"
                       "<tr><td>Store queue depth</td><td%s>%" PRIu64 "</td></tr>"
                       "<tr><td>ACKs pending</td><td>%" PRIu64 "</td></tr>"
                       "<tr><td>Connections open</td><td>%" PRIu64 "</td></tr>"
                       "<tr><td>NACK rate, last %" PRIu64 " s</td><td%s>%" PRIu64 ".%" PRIu64
                       "%% of %" PRIu64 "</td></tr>"
                       "<tr><td>Store writable</td><td%s>%s</td></tr>"
                       "<tr><td>Store commits / failures</td><td>%" PRIu64 " / %" PRIu64
                       "</td></tr></table>\n",
                  h->degraded & STATS_DEG_QUEUE ? " class=\"bad\"" : "", g->store_queue,
                  g->acks_pending, g->connections, h->window_s,
                  h->degraded & STATS_DEG_NACK_RATE ? " class=\"bad\"" : "", wp10 / 10, wp10 % 10,
                  h->window_acks, h->store_writable ? "" : " class=\"bad\"",
                  h->store_writable ? "yes" : "no", g->store.commits, g->store.failures);

    rc |= bprintf(out, "<h2>Listeners</h2><table id=\"listeners\"><tr><th>Listener</th>%s"
                       "<th>p50 latency</th><th>p99 latency</th></tr>\n", counts_head);
    for (size_t l = 0; l < s->n_listeners; l++) {
        rc |= html_counts_row(out, s->listeners[l], &s->by_listener[l], h->nack_percent);
        rc |= html_latency(out, hist_quantile(&s->latency[l], 0.5));
        rc |= html_latency(out, hist_quantile(&s->latency[l], 0.99));
        rc |= buf_append_str(out, "</tr>\n");
    }
    rc |= buf_append_str(out, "</table>\n");
    rc |= html_history(out, s);

    rc |= bprintf(out, "<h2>Senders</h2><table id=\"senders\"><tr><th>Sender</th>%s</tr>\n",
                  counts_head);
    int any = 0;
    for (size_t i = 0; i < s->n_senders; i++) {
        if (!used(&s->by_sender[i]))
            continue;
        rc |= html_counts_row(out, s->senders[i], &s->by_sender[i], h->nack_percent);
        rc |= buf_append_str(out, "</tr>\n");
        any = 1;
    }
    if (!any)
        rc |= buf_append_str(out, "<tr><td class=\"muted\" colspan=\"10\">No messages yet</td></tr>\n");
    rc |= buf_append_str(out, "</table>\n");

    rc |= buf_append_str(out, "<h2>Sinks</h2>");
    if (!s->n_sinks) {
        rc |= buf_append_str(out, "<p id=\"sinks\" class=\"muted\">No sink reports yet.</p>\n");
    } else {
        rc |= buf_append_str(out, "<table id=\"sinks\"><tr><th>Sink</th><th>Type</th><th>State</th>"
                                  "<th>Rows pending</th><th>Blocks failed</th><th>Retries</th>"
                                  "<th>Last error</th></tr>\n");
        for (size_t i = 0; i < s->n_sinks; i++) {
            const struct stats_sink *k = &s->sinks[i];
            rc |= buf_append_str(out, "<tr><td>");
            rc |= html_s(out, k->name);
            rc |= buf_append_str(out, "</td><td>");
            rc |= html_s(out, k->type);
            rc |= bprintf(out, "</td><td%s>", k->failing_since_ms ? " class=\"bad\"" : "");
            rc |= html_s(out, k->state);
            rc |= bprintf(out, "</td><td>%" PRIu64 "</td><td>%" PRIu64 "</td><td>%" PRIu64
                               "</td><td>",
                          k->rows_pending, k->blocks_failed, k->retries);
            rc |= html_s(out, k->last_error);
            rc |= buf_append_str(out, "</td></tr>\n");
        }
        rc |= buf_append_str(out, "</table>\n");
    }
    /* PostgreSQL: the nodes as this node's last heartbeat read them. */
    if (s->g.n_cluster) {
        rc |= buf_append_str(out, "<h2>Cluster</h2><table id=\"cluster\"><tr><th>Node</th>"
                                  "<th>State</th><th>Heartbeat</th><th>Version</th><th>AA</th>"
                                  "<th>AE</th><th>AR</th><th>Stored</th></tr>\n");
        for (size_t i = 0; i < s->g.n_cluster; i++) {
            const struct store_node *x = &s->g.cluster[i];
            rc |= buf_append_str(out, "<tr><td>");
            rc |= html_s(out, x->name);
            rc |= bprintf(out, "</td><td%s>%s</td><td>%.1f s ago</td><td>",
                          x->up ? "" : " class=\"bad\"", x->up ? "up" : "down",
                          (double)x->age_ms / 1000.0);
            rc |= html_s(out, x->version);
            rc |= bprintf(out, "</td><td>%" PRIu64 "</td><td>%" PRIu64 "</td><td>%" PRIu64
                               "</td><td>%" PRIu64 "</td></tr>\n",
                          x->aa, x->ae, x->ar, x->stored);
        }
        rc |= buf_append_str(out, "</table>\n");
    }
    rc |= buf_append_str(out, "</main><footer>Refreshes every 5 s · "
                              "<a href=\"/metrics\">/metrics</a> · <a href=\"/status\">/status</a>"
                              "</footer></body></html>\n");
    return rc ? -1 : 0;
}
