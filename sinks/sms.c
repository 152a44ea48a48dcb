/* sinks/sms — the SMS worker: appointment facts in the store → appointment
 * state → confirmation and reminder texts → ACS (or a JSON-lines file).
 *
 * Design: one thread, one SQLite connection (store/sms.c), no hook into the
 * ingest path.  The facts were mapped once, at ingest, and stored with their
 * message (appt_facts); this worker never parses HL7 or runs rules.  Each
 * turn
 *   1. reads the next stored facts, applies each to its appointment (latest
 *      event time wins), queues texts and deletes the facts it read — all in
 *      one transaction, so a crash neither loses nor repeats an event;
 *   2. purges personal fields of appointments that are over or cancelled;
 *   3. sends due texts one by one: each is claimed durably first (attempt
 *      count, first-sent date), sent with its fixed repeatability id, and its
 *      answer recorded; 429/5xx and transport errors are retried with
 *      backoff or the server's hint until grace_period after the due time;
 *      a 401 stops all sending until restart (a wrong key or a signing bug
 *      must not burn through the outbox).
 * Sleeps on a condition variable between turns, so stop is prompt; a
 * transfer in progress is aborted through libcurl's progress callback.
 *
 * Threads: start/stop on the main thread; the worker owns the connection
 * and the HTTP client; stats are copied under a mutex.  Logs carry outbox
 * ids, journal ids, kinds and statuses — never names, numbers or texts. */
#include "sinks/sms.h"
#include "sinks/sinks.h"

#include "config/config.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/tz.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SMS_TICK_MS        200   /* polling period for new appointment facts */
#define SMS_SCAN_BATCH     64    /* facts per transaction */
#define SMS_SENDS_PER_TURN 16    /* texts sent before looking at the journal again */
#define SMS_PURGE_MS       1000
#define SMS_RETRY_BASE_MS  1000
#define SMS_RETRY_MAX_MS   60000
#define SMS_HTTP_TIMEOUT_S 30

enum kind { K_SCHEDULED = 0, K_UPDATED, K_CANCELLED, K_REMINDER, K_N };
static const char *const kind_names[K_N] = { "scheduled", "updated", "cancelled", "reminder" };

static const char *const skip_names[SINK_SMS_SKIP_N] = {
    [SINK_SMS_SKIP_NO_CONSENT] = "no_consent",
    [SINK_SMS_SKIP_NO_NUMBER] = "no_number",
    [SINK_SMS_SKIP_BAD_NUMBER] = "bad_number",
    [SINK_SMS_SKIP_STALE] = "stale_event",
    [SINK_SMS_SKIP_DUPLICATE] = "duplicate_event",
    [SINK_SMS_SKIP_REMINDER_PAST] = "reminder_past",
    [SINK_SMS_SKIP_TOO_LATE] = "too_late",
    [SINK_SMS_SKIP_PAST_APPT] = "past_appointment",
    [SINK_SMS_SKIP_NO_APPT] = "no_appointment",
    [SINK_SMS_SKIP_UNPARSEABLE] = "unparseable",
    [SINK_SMS_SKIP_OTHER_TRIGGER] = "other_trigger",
    [SINK_SMS_SKIP_KIND_OFF] = "kind_off",
};

const char *sink_sms_skip_name(enum sink_sms_skip s)
{
    return (unsigned)s < SINK_SMS_SKIP_N ? skip_names[s] : "unknown";
}

/* Counter slots: the skip reasons, then these. */
enum { C_SENT = SINK_SMS_SKIP_N, C_FAILED, C_TRUNCATED, C_RETRIES, C_MESSAGES, C_PURGED, C_N };
static const char *counter_name(int i)
{
    static const char *const more[] = { "sent", "failed", "truncated", "retries", "messages",
                                        "purged" };
    return i < SINK_SMS_SKIP_N ? skip_names[i] : more[i - SINK_SMS_SKIP_N];
}

/* Where an appointment's texts take their settings from: one per
 * sinks.sms.facilities entry, then the global settings (the last one). */
struct place {
    struct tz *tz;                          /* owned */
    struct sink_sms_zone zone;
    const char *from;                       /* borrowed from the config; may be NULL */
    const char *link;                       /* link template, "" for none */
};

struct sink_sms {
    enum config_sms_type type;
    const struct config *cfg;
    struct place *places;        /* n_places: facilities, then the global one */
    size_t n_places;
    uint8_t key[256];
    size_t key_len;

    struct store_sms *ss;
    struct sink_acs_client *acs;
    int fd;                      /* type file */

    pthread_t th;
    int started;
    atomic_int stop;
    pthread_mutex_t *mu;         /* → mu_storage: lockable through a const sink */
    pthread_mutex_t mu_storage;
    pthread_cond_t cv;
    struct sink_sms_stats st;    /* under mu */

    /* worker only */
    struct buf scratch;
    int64_t counts[C_N];         /* deltas of the open transaction */
    int64_t not_before_ms;       /* a 429 hint holds every send */
    int halted;
    uint32_t rnd;
    char last_error[256];
    /* large per-step records, worker thread only */
    struct store_sms_text out_text, claim_text;
    struct store_sms_appt appt_old, appt_new;
    struct sink_acs_reply reply;
};

/* ---- small helpers ------------------------------------------------------- */

/* Copies UTF-8, cut at a character boundary. */
static void copy_utf8(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

static int32_t zone_offset(const void *z, int64_t t) { return tz_offset_at(z, t); }
static int64_t zone_to_utc(const void *z, int64_t local) { return tz_local_to_utc(z, local); }

static uint32_t next_rnd(struct sink_sms *s)
{
    /* xorshift: jitter only, not security */
    uint32_t x = s->rnd ? s->rnd : 2463534242u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return s->rnd = x;
}

static void set_error(struct sink_sms *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(struct sink_sms *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->last_error, sizeof s->last_error, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(s->mu);
    snprintf(s->st.last_error, sizeof s->st.last_error, "%s", s->last_error);
    pthread_mutex_unlock(s->mu);
}

/* Counters: deltas gathered in the worker's transaction, written with it,
 * and added to the live stats only after the commit. */
static void count(struct sink_sms *s, int slot, int64_t n) { s->counts[slot] += n; }

static int counts_write(struct sink_sms *s)
{
    for (int i = 0; i < C_N; i++)
        if (s->counts[i] && store_sms_count_add(s->ss, counter_name(i), s->counts[i]) < 0)
            return -1;
    return 0;
}

static void counts_publish(struct sink_sms *s)
{
    pthread_mutex_lock(s->mu);
    for (int i = 0; i < C_N; i++) {
        uint64_t v = (uint64_t)s->counts[i];
        if (i < SINK_SMS_SKIP_N)
            s->st.skipped[i] += v;
        else if (i == C_SENT)
            s->st.sent += v;
        else if (i == C_FAILED)
            s->st.failed += v;
        else if (i == C_TRUNCATED)
            s->st.truncated += v;
        else if (i == C_RETRIES)
            s->st.retries += v;
        else if (i == C_MESSAGES)
            s->st.messages += v;
        else if (i == C_PURGED)
            s->st.purged += v;
    }
    pthread_mutex_unlock(s->mu);
    memset(s->counts, 0, sizeof s->counts);
}

/* ---- one SIU message → appointment and texts -------------------------------- */

enum evclass { EV_BOOK, EV_MOVE, EV_CANCEL, EV_NOSHOW, EV_OTHER };

static enum evclass classify(const char *trigger)
{
    if (strcmp(trigger, "S12") == 0)
        return EV_BOOK;
    if (strcmp(trigger, "S13") == 0 || strcmp(trigger, "S14") == 0)
        return EV_MOVE;
    if (strcmp(trigger, "S15") == 0 || strcmp(trigger, "S17") == 0)
        return EV_CANCEL;
    if (strcmp(trigger, "S26") == 0)
        return EV_NOSHOW;
    return EV_OTHER;
}

struct facts {
    int64_t msg_id, received_s;
    char trigger[8];
    int64_t event_time, start, duration;
    char facility[STORE_SMS_KEY_MAX], appt_id[STORE_SMS_KEY_MAX];
    char location[STORE_SMS_FACT_MAX], provider[STORE_SMS_FACT_MAX], first[STORE_SMS_FACT_MAX];
    char phone_raw[64];
    char language[STORE_SMS_LANG_MAX];
    char link[STORE_SMS_LINK_MAX];
    int consent_present, consent;
};

static void fingerprint(const struct facts *f, const char *phone, char out[65])
{
    char tmp[2048];
    int n = snprintf(tmp, sizeof tmp, "%s\x1f%lld\x1f%lld\x1f%s\x1f%s\x1f%s\x1f%s\x1f%d\x1f%s\x1f%.1000s",
                     f->trigger, (long long)f->start, (long long)f->duration, f->location,
                     f->provider, f->first, phone, f->consent, f->language, f->link);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    if (n < 0 || EVP_Digest(tmp, (size_t)(n < (int)sizeof tmp ? n : (int)sizeof tmp - 1), md, &ml,
                            EVP_sha256(), NULL) != 1)
        ml = 0;
    OPENSSL_cleanse(tmp, sizeof tmp);
    static const char hx[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = i < ml ? hx[md[i] >> 4] : '0';
        out[2 * i + 1] = i < ml ? hx[md[i] & 15] : '0';
    }
    out[64] = '\0';
}

static int consent_ok(const struct sink_sms *s, const char *v)
{
    const struct config *c = s->cfg;
    for (size_t i = 0; i < c->sinks.sms.consent.n_accept; i++)
        if (strcasecmp(v, c->sinks.sms.consent.accept[i]) == 0)
            return 1;
    return 0;
}

static int kind_on(const struct config *c, enum kind k)
{
    return k == K_SCHEDULED ? c->sinks.sms.send.scheduled
           : k == K_UPDATED ? c->sinks.sms.send.updated
           : k == K_CANCELLED ? c->sinks.sms.send.cancelled
                              : c->sinks.sms.send.reminder;
}

static const char *template_of(const struct config_sms_templates *t, enum kind k)
{
    return k == K_SCHEDULED ? t->scheduled : k == K_UPDATED ? t->updated
           : k == K_CANCELLED ? t->cancelled : t->reminder;
}

int sink_sms_facility_index(const struct config *c, const char *facility)
{
    for (size_t i = 0; facility && i < c->sinks.sms.n_facilities; i++) {
        const struct config_sms_facility *f = &c->sinks.sms.facilities[i];
        for (size_t j = 0; j < f->n_codes; j++)
            if (strcmp(f->codes[j], facility) == 0)
                return (int)i;
    }
    return -1;
}

/* The settings of an appointment's facility (its entry, else the global
 * ones). */
static const struct place *place_of(const struct sink_sms *s, const char *facility)
{
    int i = sink_sms_facility_index(s->cfg, facility);
    return &s->places[i >= 0 ? (size_t)i : s->n_places - 1];
}

/* 1 when PID-15 `lang` is `code`, without case, or a regional form of it
 * ("es" takes "es-MX" and "es_MX"). */
static int lang_is(const char *lang, const char *code)
{
    size_t n = strlen(code);
    return strncasecmp(lang, code, n) == 0 &&
           (lang[n] == '\0' || lang[n] == '-' || lang[n] == '_' || lang[n] == '^');
}

/* The template for kind k: in the patient's language when the languages
 * list that applies (the facility's own when it wrote one, else
 * sinks.sms.languages) has one for it, else the facility's template, else
 * the global one.  A text the patient can read comes before the clinic's
 * wording; a facility that wants its wording in every language lists its
 * languages. */
const char *sink_sms_pick_template(const struct config *c, int facility, const char *lang,
                                   unsigned kind)
{
    enum kind k = kind < K_N ? (enum kind)kind : K_SCHEDULED;
    const struct config_sms_facility *f =
        facility >= 0 && (size_t)facility < c->sinks.sms.n_facilities
            ? &c->sinks.sms.facilities[facility] : NULL;
    const struct config_sms_language *langs = f && f->has_languages ? f->languages
                                                                     : c->sinks.sms.languages;
    size_t n_langs = f && f->has_languages ? f->n_languages : c->sinks.sms.n_languages;
    for (size_t i = 0; lang && lang[0] && i < n_langs; i++) {
        const char *t = template_of(&langs[i].templates, k);
        for (size_t j = 0; t && j < langs[i].n_codes; j++)
            if (lang_is(lang, langs[i].codes[j]))
                return t;
    }
    const char *t = f ? template_of(&f->templates, k) : NULL;
    return t ? t : template_of(&c->sinks.sms.templates, k);
}

/* Renders and queues one text; 0 / -1 (store error). */
static int queue_text(struct sink_sms *s, const struct store_sms_appt *a, enum kind k,
                      const char *event_key, int64_t due)
{
    const struct config *c = s->cfg;
    int fi = sink_sms_facility_index(c, a->facility);
    const struct place *pl = place_of(s, a->facility);
    const char *tmpl = sink_sms_pick_template(c, fi, a->language, k);
    struct store_sms_text *tp = &s->out_text;
    memset(tp, 0, sizeof *tp);
    copy_utf8(tp->facility, sizeof tp->facility, a->facility);
    copy_utf8(tp->appt_id, sizeof tp->appt_id, a->appt_id);
    snprintf(tp->kind, sizeof tp->kind, "%s", kind_names[k]);
    snprintf(tp->event_key, sizeof tp->event_key, "%s", event_key);
    tp->due_s = due;
    tp->start_s = a->start_s;
    struct sink_sms_vars v = {
        .first_name = a->first_name, .location = a->location, .provider = a->provider,
        .link = "", .appointment_id = a->appt_id, .facility = a->facility, .start = a->start_s,
        .utc_offset = tz_offset_at(pl->tz, a->start_s),
    };
    /* The link the rules mapped from the message wins; else the facility's
     * (or global) link template over this appointment's fields. */
    char link[STORE_SMS_LINK_MAX];
    if (a->link[0]) {
        v.link = a->link;
    } else if (pl->link[0]) {
        sink_sms_render_link(pl->link, &v, link, sizeof link);
        v.link = link;
    }
    sink_sms_render(tmpl, &v, tp->text, sizeof tp->text);
    if (sink_sms_fit(tp->text, c->sinks.sms.max_segments))
        count(s, C_TRUNCATED, 1);
    struct sink_sms_segments sg;
    sink_sms_count(tp->text, strlen(tp->text), &sg);
    tp->segments = sg.segments;
    snprintf(tp->encoding, sizeof tp->encoding, "%s", sg.encoding == SINK_SMS_GSM7 ? "GSM-7" : "UCS-2");
    snprintf(tp->to, sizeof tp->to, "%s", a->phone);
    sink_sms_request_id(a->facility, a->appt_id, event_key, tp->request_id);
    int r = store_sms_text_add(s->ss, tp);
    OPENSSL_cleanse(tp->text, sizeof tp->text);
    if (r < 0)
        return -1;
    if (r > 0)
        log_debug("sms_queued", "kind=%s due=%lld segments=%u encoding=%s", kind_names[k],
                  (long long)due, sg.segments, tp->encoding);
    return 0;
}

static int plan_reminders(struct sink_sms *s, const struct store_sms_appt *a, int64_t arrival,
                          int count_past)
{
    const struct config *c = s->cfg;
    if (!c->sinks.sms.send.reminder)
        return 0; /* switched off: none planned */
    const struct place *pl = place_of(s, a->facility);
    for (size_t i = 0; i < c->sinks.sms.n_reminders; i++) {
        int64_t off = c->sinks.sms.reminders_s[i];
        int64_t due = a->start_s - off;
        if (c->sinks.sms.quiet_hours.enabled)  /* in the clinic's own local time */
            due = sink_sms_quiet_adjust(due, &pl->zone, c->sinks.sms.quiet_hours.start_min,
                                        c->sinks.sms.quiet_hours.end_min);
        if (due <= arrival) {
            if (count_past)
                count(s, SINK_SMS_SKIP_REMINDER_PAST, 1);
            continue;
        }
        char key[80];
        snprintf(key, sizeof key, "reminder@%lld@%lld", (long long)off, (long long)a->start_s);
        if (queue_text(s, a, K_REMINDER, key, due) < 0)
            return -1;
    }
    return 0;
}

/* Applies one message's facts: the appointment's state machine.  Returns 0
 * (whatever it decided) or -1 on a store error (the transaction is then
 * rolled back and the message looked at again). */
static int apply(struct sink_sms *s, const struct facts *f)
{
    const struct config *c = s->cfg;
    enum evclass ev = classify(f->trigger);
    if (ev == EV_OTHER) {
        count(s, SINK_SMS_SKIP_OTHER_TRIGGER, 1);
        return 0;
    }
    struct store_sms_appt *ap = &s->appt_old, *np = &s->appt_new;
    int have = store_sms_appt_get(s->ss, f->facility, f->appt_id, ap);
    if (have < 0)
        return -1;
    char phone[STORE_SMS_PHONE_MAX] = "";
    int bad_number = 0;
    if (f->phone_raw[0] &&
        sink_sms_e164(f->phone_raw, c->sinks.sms.default_country, phone, sizeof phone) < 0)
        bad_number = 1;
    char fp[65];
    fingerprint(f, phone, fp);
    if (have) {
        if (f->event_time < ap->event_time) {
            count(s, SINK_SMS_SKIP_STALE, 1);
            log_info("sms_event_ignored", "msg_id=%lld reason=stale_event", (long long)f->msg_id);
            return 0;
        }
        if (f->event_time == ap->event_time && (!ap->fingerprint[0] || strcmp(fp, ap->fingerprint) == 0)) {
            count(s, SINK_SMS_SKIP_DUPLICATE, 1);
            log_info("sms_event_ignored", "msg_id=%lld reason=duplicate_event",
                     (long long)f->msg_id);
            return 0;
        }
    }

    /* The new state: facts the message carries, else what was known (a
     * cancellation often carries less than the booking did). */
    if (have)
        *np = *ap;
    else
        memset(np, 0, sizeof *np);
    copy_utf8(np->facility, sizeof np->facility, f->facility);
    copy_utf8(np->appt_id, sizeof np->appt_id, f->appt_id);
    np->event_time = f->event_time;
    np->last_msg_id = f->msg_id;
    memcpy(np->fingerprint, fp, sizeof fp);
    if (f->start > 0)
        np->start_s = f->start;
    if (f->duration >= 0)
        np->duration_min = f->duration;
    if (f->location[0])
        copy_utf8(np->location, sizeof np->location, f->location);
    if (f->provider[0])
        copy_utf8(np->provider, sizeof np->provider, f->provider);
    if (f->first[0])
        copy_utf8(np->first_name, sizeof np->first_name, f->first);
    if (phone[0] || bad_number)
        copy_utf8(np->phone, sizeof np->phone, phone);
    if (f->consent_present || !have)
        np->consent = f->consent;
    if (f->language[0])
        copy_utf8(np->language, sizeof np->language, f->language);
    if (f->link[0])
        copy_utf8(np->link, sizeof np->link, f->link);
    np->state = ev == EV_CANCEL ? STORE_SMS_CANCELLED : ev == EV_NOSHOW ? STORE_SMS_NOSHOW
                                                                      : STORE_SMS_BOOKED;
    np->purge_after_s = (np->start_s > 0 ? np->start_s + np->duration_min * 60 : f->received_s) +
                      (int64_t)c->sinks.sms.grace_period_s;
    np->purged = 0;
    if (store_sms_appt_put(s->ss, np) < 0)
        return -1;

    int was_booked = have && ap->state == STORE_SMS_BOOKED;
    int start_changed = !have || ap->start_s != np->start_s;
    int changed = !was_booked || start_changed || strcmp(ap->location, np->location) != 0 ||
                  strcmp(ap->provider, np->provider) != 0;
    int want = -1; /* confirmation kind */
    unsigned drop;
    const char *why;
    switch (ev) {
    case EV_BOOK:
        want = !was_booked ? K_SCHEDULED : changed ? K_UPDATED : -1;
        drop = STORE_SMS_DROP_REMINDERS | (want >= 0 ? STORE_SMS_DROP_CONFIRMATIONS : 0);
        why = "superseded";
        break;
    case EV_MOVE:
        want = changed ? K_UPDATED : -1;
        drop = STORE_SMS_DROP_REMINDERS | (want >= 0 ? STORE_SMS_DROP_CONFIRMATIONS : 0);
        why = "superseded";
        break;
    case EV_CANCEL:
        want = !have || ap->state == STORE_SMS_BOOKED ? K_CANCELLED : -1;
        drop = STORE_SMS_DROP_REMINDERS | STORE_SMS_DROP_ALL;
        why = "cancelled";
        break;
    default: /* no-show: its reminders go, nothing is sent */
        drop = STORE_SMS_DROP_REMINDERS | STORE_SMS_DROP_ALL;
        why = "no_show";
        break;
    }

    /* Who may be texted, judged on the new state. */
    int reason = -1;
    if (c->sinks.sms.consent.required && !np->consent)
        reason = SINK_SMS_SKIP_NO_CONSENT;
    else if (!np->phone[0])
        reason = bad_number ? SINK_SMS_SKIP_BAD_NUMBER : SINK_SMS_SKIP_NO_NUMBER;
    if (reason >= 0) {
        drop = STORE_SMS_DROP_REMINDERS | STORE_SMS_DROP_ALL;
        why = skip_names[reason];
    }
    unsigned dropped = 0;
    if (store_sms_drop_pending(s->ss, np->facility, np->appt_id, drop, why, &dropped) < 0)
        return -1;
    if (reason >= 0) {
        if (ev != EV_NOSHOW)
            count(s, reason, 1);
        log_info("sms_not_texted", "msg_id=%lld trigger=%s reason=%s", (long long)f->msg_id,
                 f->trigger, skip_names[reason]);
        return 0;
    }

    if (want >= 0) {
        char key[80];
        snprintf(key, sizeof key, "%s@%lld", kind_names[want], (long long)f->event_time);
        if (!kind_on(c, (enum kind)want))
            count(s, SINK_SMS_SKIP_KIND_OFF, 1);
        else if (np->start_s <= 0)
            count(s, SINK_SMS_SKIP_NO_APPT, 1);
        else if (np->start_s + np->duration_min * 60 <= f->received_s)
            count(s, SINK_SMS_SKIP_PAST_APPT, 1);
        else if (queue_text(s, np, (enum kind)want, key, f->received_s) < 0)
            return -1;
    }
    if (np->state == STORE_SMS_BOOKED && np->start_s > f->received_s &&
        plan_reminders(s, np, f->received_s, start_changed) < 0)
        return -1;
    log_info("sms_event", "msg_id=%lld trigger=%s confirmation=%s dropped=%u",
             (long long)f->msg_id, f->trigger, want >= 0 ? kind_names[want] : "none", dropped);
    return 0;
}

/* Store scan callback: the facts of one stored SIU message. */
static int on_fact(void *ud, const struct store_sms_fact *sf)
{
    struct sink_sms *s = ud;
    count(s, C_MESSAGES, 1);
    struct facts f;
    memset(&f, 0, sizeof f);
    f.msg_id = sf->msg_id;
    f.received_s = sf->received_ms / 1000;
    copy_utf8(f.trigger, sizeof f.trigger, sf->event);
    copy_utf8(f.facility, sizeof f.facility, sf->facility);
    copy_utf8(f.appt_id, sizeof f.appt_id, sf->appt_id);
    copy_utf8(f.location, sizeof f.location, sf->location);
    copy_utf8(f.provider, sizeof f.provider, sf->provider);
    copy_utf8(f.first, sizeof f.first, sf->first_name);
    copy_utf8(f.phone_raw, sizeof f.phone_raw, sf->phone);
    copy_utf8(f.language, sizeof f.language, sf->language);
    copy_utf8(f.link, sizeof f.link, sf->link);
    f.event_time = sf->event_time >= 0 ? sf->event_time : f.received_s;
    f.start = sf->start_s >= 0 ? sf->start_s : 0;
    f.duration = sf->duration_min;
    /* Consent as sent (sinks.sms.consent.field, else the rules' fact);
     * an absent value leaves what an earlier message said. */
    if (sf->consent[0]) {
        f.consent_present = 1;
        f.consent = consent_ok(s, sf->consent);
    }
    int r = 0;
    if (!f.facility[0] || !f.appt_id[0])
        count(s, SINK_SMS_SKIP_NO_APPT, 1);
    else
        r = apply(s, &f);
    OPENSSL_cleanse(&f, sizeof f);
    return r;
}

/* One transaction: up to SMS_SCAN_BATCH facts, applied and deleted.
 * Returns the number of facts looked at, or -1. */
static int ingest_step(struct sink_sms *s)
{
    /* A read first: the write lock is only taken when there is news. */
    if (store_sms_facts_waiting(s->ss) == 0)
        return 0;
    unsigned n = 0;
    if (store_sms_begin(s->ss) < 0)
        goto fail;
    if (store_sms_scan(s->ss, SMS_SCAN_BATCH, on_fact, s, &n) != 0 || counts_write(s) < 0 ||
        store_sms_commit(s->ss) < 0)
        goto fail;
    counts_publish(s);
    return (int)n;
fail:
    store_sms_rollback(s->ss);
    memset(s->counts, 0, sizeof s->counts);
    set_error(s, "store: %s", store_sms_errmsg(s->ss));
    log_warn("sms_store_failed", "step=ingest error=\"%s\"", store_sms_errmsg(s->ss));
    return -1;
}

/* ---- sending -------------------------------------------------------------------- */

static void finish(struct sink_sms *s, const struct store_sms_text *t,
                   enum store_sms_text_state state, int status, const char *error,
                   const char *message_id, int slot)
{
    int64_t now = clock_wall_ms();
    if (store_sms_begin(s->ss) < 0)
        goto fail;
    if (store_sms_finish(s->ss, t->id, state, status, error, message_id, now) < 0)
        goto fail;
    if (slot >= 0)
        count(s, slot, 1);
    if (counts_write(s) < 0 || store_sms_commit(s->ss) < 0)
        goto fail;
    counts_publish(s);
    if (state == STORE_SMS_SENT) {
        pthread_mutex_lock(s->mu);
        s->st.last_success_ms = now;
        pthread_mutex_unlock(s->mu);
    }
    log_info(state == STORE_SMS_SENT ? "sms_sent" : state == STORE_SMS_FAILED ? "sms_failed"
                                                                              : "sms_skipped",
             "id=%lld kind=%s attempts=%u status=%d segments=%u", (long long)t->id, t->kind,
             t->attempts, status, t->segments);
    return;
fail:
    store_sms_rollback(s->ss);
    memset(s->counts, 0, sizeof s->counts);
    log_warn("sms_store_failed", "step=finish id=%lld error=\"%s\"", (long long)t->id,
             store_sms_errmsg(s->ss));
}

static void retry(struct sink_sms *s, const struct store_sms_text *t, int status,
                  const char *error, const struct sink_acs_reply *rp)
{
    int64_t now = clock_wall_ms();
    uint64_t delay = rp && rp->has_hint
                         ? rp->hint_ms
                         : sink_backoff_ms(t->attempts, SMS_RETRY_BASE_MS, SMS_RETRY_MAX_MS,
                                           next_rnd(s));
    if (rp && rp->has_hint && rp->http_status == 429)
        s->not_before_ms = now + (int64_t)delay;
    if (store_sms_retry(s->ss, t->id, status, error, now + (int64_t)delay) < 0 ||
        store_sms_count_add(s->ss, "retries", 1) < 0) {
        log_warn("sms_store_failed", "step=retry id=%lld error=\"%s\"", (long long)t->id,
                 store_sms_errmsg(s->ss));
        return;
    }
    pthread_mutex_lock(s->mu);
    s->st.retries++;
    pthread_mutex_unlock(s->mu);
    log_info("sms_retry", "id=%lld kind=%s attempts=%u status=%d delay_ms=%llu", (long long)t->id,
             t->kind, t->attempts, status, (unsigned long long)delay);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* "+14155550100" → "+*******0100": the last four digits tell an operator
 * which patient's text it was without the file holding the number. */
static void mask_number(const char *in, char *out, size_t cap)
{
    size_t n = strlen(in);
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (in[i] >= '0' && in[i] <= '9' && i + 4 < n) ? '*' : in[i];
    out[n] = '\0';
}

static int open_file_sink(struct sink_sms *s, const char *path, char *err, size_t errcap);

/* The store's housekeeping renames the file when it rotates it (its
 * retention): the next line goes to a new file under the configured name. */
static int reopen_if_rotated(struct sink_sms *s)
{
    struct stat a, b;
    const char *path = s->cfg->sinks.sms.path;
    if (s->fd >= 0 && fstat(s->fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
        a.st_dev == b.st_dev)
        return 0;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    char err[300];
    if (open_file_sink(s, path, err, sizeof err) < 0) {
        set_error(s, "file sink: %s", err);
        return -1;
    }
    return 0;
}

static void deliver_file(struct sink_sms *s, const struct store_sms_text *t)
{
    const struct config *c = s->cfg;
    if (reopen_if_rotated(s) < 0) {
        retry(s, t, 0, "file open failed", NULL);
        return;
    }
    char to[STORE_SMS_PHONE_MAX];
    if (c->sinks.sms.mask_numbers)
        mask_number(t->to, to, sizeof to);
    else
        snprintf(to, sizeof to, "%s", t->to);
    char now[32];
    sink_sms_rfc1123(clock_wall_ms() / 1000, now);
    const char *from = place_of(s, t->facility)->from;
    struct buf *b = &s->scratch;
    buf_reset(b);
    char num[64];
    snprintf(num, sizeof num, ",\"segments\":%u,\"attempts\":%u", t->segments, t->attempts);
    int bad =
        buf_append_str(b, "{\"time\":\"") || buf_append_str(b, now) ||
        buf_append_str(b, "\",\"kind\":\"") || buf_append_str(b, t->kind) ||
        buf_append_str(b, "\",\"from\":\"") ||
        sink_sms_json_escape(b, from ? from : "", from ? strlen(from) : 0) ||
        buf_append_str(b, "\",\"to\":\"") || sink_sms_json_escape(b, to, strlen(to)) ||
        buf_append_str(b, "\",\"message\":\"") ||
        sink_sms_json_escape(b, t->text, strlen(t->text)) ||
        buf_append_str(b, "\",\"repeatabilityRequestId\":\"") ||
        buf_append_str(b, t->request_id) || buf_append_str(b, "\",\"repeatabilityFirstSent\":\"") ||
        buf_append_str(b, t->first_sent) || buf_append_str(b, "\",\"encoding\":\"") ||
        buf_append_str(b, t->encoding) || buf_append_str(b, "\"") || buf_append_str(b, num) ||
        buf_append_str(b, "}\n");
    if (bad || write_all(s->fd, buf_data(b), b->len) < 0 || fsync(s->fd) < 0) {
        int e = errno;
        OPENSSL_cleanse(buf_data(b), b->len);
        set_error(s, "file sink: write %s: %s", c->sinks.sms.path, bad ? "too long" : strerror(e));
        log_warn("sms_file_failed", "id=%lld errno=%d", (long long)t->id, e);
        retry(s, t, 0, "file write failed", NULL);
        return;
    }
    OPENSSL_cleanse(buf_data(b), b->len);
    finish(s, t, STORE_SMS_SENT, 0, NULL, NULL, C_SENT);
}

static void deliver_acs(struct sink_sms *s, const struct store_sms_text *t)
{
    struct buf *b = &s->scratch;
    buf_reset(b);
    char tag[40];
    snprintf(tag, sizeof tag, "hl7bridge-%s", t->kind);
    /* The number of the appointment's facility, looked up now: the outbox
     * keeps the facility, and the settings are fixed while the sink runs. */
    if (sink_acs_body(b, place_of(s, t->facility)->from, t->to, t->request_id, t->first_sent, t->text, 0, tag) <
        0) {
        finish(s, t, STORE_SMS_FAILED, 0, "body too large", NULL, C_FAILED);
        return;
    }
    struct sink_acs_reply *rpp = &s->reply;
    int rc = sink_acs_send(s->acs, buf_data(b), b->len, clock_wall_ms() / 1000, &s->stop, rpp);
    OPENSSL_cleanse(buf_data(b), b->len);
    if (rc < 0) {
        if (atomic_load(&s->stop))
            return; /* stays claimed; resent with the same id at the next start
                     * (or by another node once its lease ran out) */
        set_error(s, "acs: %s", rpp->transport_error);
        log_warn("sms_send_failed", "id=%lld kind=%s attempts=%u error=\"%s\"", (long long)t->id,
                 t->kind, t->attempts, rpp->transport_error);
        retry(s, t, 0, rpp->transport_error, NULL);
        return;
    }
    char err[400];
    if (rpp->http_status == 202) {
        if (rpp->n_results < 1) {
            set_error(s, "acs: 202 without a readable result");
            retry(s, t, 202, "202 without a readable result", rpp);
            return;
        }
        const struct sink_acs_result *r = &rpp->result;
        if (r->successful) {
            finish(s, t, STORE_SMS_SENT, r->http_status ? r->http_status : 202, NULL,
                   r->message_id, C_SENT);
        } else if (sink_acs_retryable(r->http_status)) {
            snprintf(err, sizeof err, "recipient %d: %s", r->http_status, r->error);
            set_error(s, "acs: recipient status %d", r->http_status);
            retry(s, t, r->http_status, err, rpp);
        } else {
            snprintf(err, sizeof err, "recipient %d: %s", r->http_status, r->error);
            set_error(s, "acs: recipient rejected with status %d", r->http_status);
            finish(s, t, STORE_SMS_FAILED, r->http_status, err, r->message_id, C_FAILED);
        }
        return;
    }
    snprintf(err, sizeof err, "%d %s: %s", rpp->http_status, rpp->error_code, rpp->error_message);
    if (rpp->http_status == 401) {
        /* A refused signature or content hash never gets better by
         * retrying: stop sending, say why, keep the rest of the outbox. */
        s->halted = 1;
        set_error(s,
                  "acs: 401 %s: %s (the access key or the request signature was refused; check "
                  "sinks.sms.access_key and the endpoint; sending is stopped until restart)",
                  rpp->error_code, rpp->error_message);
        log_error("sms_auth_failed",
                  "id=%lld status=401 code=\"%s\" hint=\"check sinks.sms.access_key and endpoint; "
                  "SMS sending stopped until restart\"",
                  (long long)t->id, rpp->error_code);
        pthread_mutex_lock(s->mu);
        s->st.halted = 1;
        pthread_mutex_unlock(s->mu);
        finish(s, t, STORE_SMS_FAILED, 401, err, NULL, C_FAILED);
        return;
    }
    set_error(s, "acs: HTTP %d %s", rpp->http_status, rpp->error_code);
    if (sink_acs_retryable(rpp->http_status))
        retry(s, t, rpp->http_status, err, rpp);
    else
        finish(s, t, STORE_SMS_FAILED, rpp->http_status, err, NULL, C_FAILED);
}

/* Sends up to SMS_SENDS_PER_TURN due texts; returns how many were handled. */
static int send_step(struct sink_sms *s)
{
    const struct config *c = s->cfg;
    int handled = 0;
    struct store_sms_text *tp = &s->claim_text;
    while (handled < SMS_SENDS_PER_TURN && !atomic_load(&s->stop) && !s->halted) {
        int64_t now_ms = clock_wall_ms();
        if (now_ms < s->not_before_ms)
            break;
        char date[32];
        sink_sms_rfc1123(now_ms / 1000, date);
        int r = store_sms_claim(s->ss, now_ms, date, tp);
        if (r < 0) {
            set_error(s, "store: %s", store_sms_errmsg(s->ss));
            log_warn("sms_store_failed", "step=claim error=\"%s\"", store_sms_errmsg(s->ss));
            break;
        }
        if (r == 0)
            break;
        handled++;
        int64_t now = now_ms / 1000;
        int late = now > tp->due_s + (int64_t)c->sinks.sms.grace_period_s ||
                   (strcmp(tp->kind, "reminder") == 0 && now >= tp->start_s);
        if (late) {
            /* A first attempt that is too late is skipped; a text that was
             * tried and kept failing until now has failed. */
            if (tp->attempts > 1)
                finish(s, tp, STORE_SMS_FAILED, 0, "gave up: past grace period", NULL, C_FAILED);
            else
                finish(s, tp, STORE_SMS_SKIPPED, 0, "too_late", NULL, SINK_SMS_SKIP_TOO_LATE);
        } else if (!tp->to[0] || !tp->text[0]) {
            finish(s, tp, STORE_SMS_SKIPPED, 0, "purged", NULL, -1);
        } else if (s->type == CONFIG_SMS_FILE) {
            deliver_file(s, tp);
        } else {
            deliver_acs(s, tp);
        }
        OPENSSL_cleanse(tp, sizeof *tp);
    }
    return handled;
}

static void refresh_pending(struct sink_sms *s)
{
    uint64_t texts = 0, rem = 0;
    if (store_sms_pending(s->ss, &texts, &rem) < 0)
        return;
    pthread_mutex_lock(s->mu);
    s->st.texts_pending = texts;
    s->st.reminders_pending = rem;
    pthread_mutex_unlock(s->mu);
}

static void *worker(void *ud)
{
    struct sink_sms *s = ud;
    int64_t next_purge = 0;
    while (!atomic_load(&s->stop)) {
        int busy = 0;
        int n = ingest_step(s);
        if (n >= SMS_SCAN_BATCH)
            busy = 1;
        int64_t now = clock_wall_ms();
        if (now >= next_purge) {
            unsigned purged = 0;
            if (store_sms_purge(s->ss, now / 1000, &purged) < 0) {
                log_warn("sms_store_failed", "step=purge error=\"%s\"", store_sms_errmsg(s->ss));
            } else if (purged) {
                if (store_sms_count_add(s->ss, "purged", purged) < 0)
                    log_warn("sms_store_failed", "step=purge_count");
                pthread_mutex_lock(s->mu);
                s->st.purged += purged;
                pthread_mutex_unlock(s->mu);
                log_info("sms_purged", "appointments=%u", purged);
            }
            next_purge = now + SMS_PURGE_MS;
        }
        if (send_step(s) >= SMS_SENDS_PER_TURN)
            busy = 1;
        refresh_pending(s);
        if (busy)
            continue;
        pthread_mutex_lock(s->mu);
        if (!atomic_load(&s->stop)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += (long)SMS_TICK_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->cv, s->mu, &ts);
        }
        pthread_mutex_unlock(s->mu);
    }
    /* A text cut off by the stop stays claimed; on a shared store another
     * node may send it now (same repeatability id) instead of after the
     * lease. */
    uint64_t released = 0;
    if (store_sms_release(s->ss, &released) < 0)
        log_warn("sms_store_failed", "step=release error=\"%s\"", store_sms_errmsg(s->ss));
    else if (released)
        log_info("sms_texts_released", "texts=%llu", (unsigned long long)released);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void load_counter(void *ud, const char *name, uint64_t n)
{
    struct sink_sms *s = ud;
    for (int i = 0; i < C_N; i++) {
        if (strcmp(name, counter_name(i)) != 0)
            continue;
        s->counts[i] = (int64_t)n;
    }
}

static void sms_free(struct sink_sms *s)
{
    if (!s)
        return;
    store_sms_close(s->ss);
    sink_acs_client_free(s->acs);
    if (s->fd >= 0)
        close(s->fd);
    for (size_t i = 0; i < s->n_places; i++)
        tz_free(s->places[i].tz);
    free(s->places);
    buf_release(&s->scratch);
    OPENSSL_cleanse(s->key, sizeof s->key);
    pthread_mutex_destroy(&s->mu_storage);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static int open_file_sink(struct sink_sms *s, const char *path, char *err, size_t errcap)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        char e2[256];
        if (sink_mkdirs(dir, e2, sizeof e2) < 0) {
            snprintf(err, errcap, "sinks.sms.path: %s", e2);
            return -1;
        }
    }
    s->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        int e = errno;
        snprintf(err, errcap, "sinks.sms.path: open %s: %s", path, strerror(e));
        return -1;
    }
    return 0;
}

/* ---- settings ------------------------------------------------------------- */

/* Checks the templates of one set (the global one, a language's or a
 * facility's); `need` when every kind must be there. */
static unsigned check_templates(const struct config_sms_templates *t, const char *where, int need,
                                sink_sms_problem_fn fn, void *ud)
{
    unsigned bad = 0;
    for (unsigned k = 0; k < K_N; k++) {
        const char *v = template_of(t, (enum kind)k);
        char why[200], msg[400];
        if (!v && !need)
            continue;
        if (v && sink_sms_template_check(v, why, sizeof why) == 0)
            continue;
        snprintf(msg, sizeof msg, "%s.templates.%s: %s", where, kind_names[k], v ? why : "missing");
        fn(ud, msg);
        bad++;
    }
    return bad;
}

static unsigned check_languages(const struct config_sms_language *l, size_t n, const char *where,
                                sink_sms_problem_fn fn, void *ud)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        char at[160];
        snprintf(at, sizeof at, "%s.languages[%zu]", where, i);
        bad += check_templates(&l[i].templates, at, 0, fn, ud);
    }
    return bad;
}

/* A link is a template too, but it cannot hold itself. */
static unsigned check_link(const char *link, const char *where, sink_sms_problem_fn fn, void *ud)
{
    char why[200], msg[400];
    if (!link || !*link)
        return 0;
    if (sink_sms_template_check(link, why, sizeof why) == 0) {
        if (!strstr(link, "{link}"))
            return 0;
        snprintf(why, sizeof why, "{link} cannot be used inside the link itself");
    }
    snprintf(msg, sizeof msg, "%s.link: %s", where, why);
    fn(ud, msg);
    return 1;
}

unsigned sink_sms_config_check(const struct config *c, sink_sms_problem_fn fn, void *ud)
{
    const __typeof__(c->sinks.sms) *m = &c->sinks.sms;
    if (m->type == CONFIG_SMS_NONE)
        return 0;
    unsigned bad = check_templates(&m->templates, "sinks.sms", 1, fn, ud) +
                   check_languages(m->languages, m->n_languages, "sinks.sms", fn, ud) +
                   check_link(m->link, "sinks.sms", fn, ud);
    for (size_t i = 0; i < m->n_facilities; i++) {
        const struct config_sms_facility *f = &m->facilities[i];
        char at[64];
        snprintf(at, sizeof at, "sinks.sms.facilities[%zu]", i);
        bad += check_templates(&f->templates, at, 0, fn, ud) +
               check_languages(f->languages, f->n_languages, at, fn, ud) +
               check_link(f->link, at, fn, ud);
    }
    return bad;
}

struct first_problem {
    char *err;
    size_t cap;
};
static void first_problem(void *ud, const char *msg)
{
    struct first_problem *p = ud;
    if (p->cap && !p->err[0])
        snprintf(p->err, p->cap, "%s", msg);
}

/* One place per facility entry, then the global one: each with its zone
 * loaded once, so a text never reads zone files. */
static int load_places(struct sink_sms *s, char *err, size_t errcap)
{
    const __typeof__(s->cfg->sinks.sms) *m = &s->cfg->sinks.sms;
    s->n_places = m->n_facilities + 1;
    if (!(s->places = calloc(s->n_places, sizeof *s->places))) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < s->n_places; i++) {
        struct place *p = &s->places[i];
        const struct config_sms_facility *f = i < m->n_facilities ? &m->facilities[i] : NULL;
        const char *zone = f && f->time_zone ? f->time_zone : m->time_zone;
        const char *link = f && f->link ? f->link : m->link;
        char why[200];
        p->from = f && f->from ? f->from : m->from;
        p->link = link ? link : "";
        if (!(p->tz = tz_load(zone, why, sizeof why))) {
            if (f)
                snprintf(err, errcap, "sinks.sms.facilities[%zu].time_zone: %s", i, why);
            else
                snprintf(err, errcap, "sinks.sms.time_zone: %s", why);
            return -1;
        }
        p->zone = (struct sink_sms_zone){ zone_offset, zone_to_utc, p->tz };
    }
    return 0;
}

struct sink_sms *sink_sms_start(const struct config *c, const struct store_opts *store, char *err,
                                size_t errcap)
{
    if (errcap)
        err[0] = '\0';
    struct sink_sms *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    s->fd = -1;
    s->mu = &s->mu_storage;
    pthread_mutex_init(s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->type = c->sinks.sms.type;
    s->cfg = c;
    buf_init(&s->scratch, 1024 * 1024);
    if (s->type == CONFIG_SMS_NONE)
        return s;
    struct first_problem fp = { err, errcap };
    if (sink_sms_config_check(c, first_problem, &fp) > 0)
        goto fail;
    if (load_places(s, err, errcap) < 0)
        goto fail;
    if (s->type == CONFIG_SMS_ACS) {
        if (!c->sinks.sms.access_key ||
            sink_acs_key_decode(c->sinks.sms.access_key, s->key, sizeof s->key, &s->key_len) < 0) {
            snprintf(err, errcap, "sinks.sms.access_key: not a base64 ACS access key");
            goto fail;
        }
        if (!c->sinks.sms.from) {
            snprintf(err, errcap, "sinks.sms.from: required for type acs");
            goto fail;
        }
        if (!(s->acs = sink_acs_client_new(c->sinks.sms.endpoint, s->key, s->key_len,
                                           c->sinks.sms.ca_file, SMS_HTTP_TIMEOUT_S, err,
                                           errcap)))
            goto fail;
    } else if (open_file_sink(s, c->sinks.sms.path, err, errcap) < 0) {
        goto fail;
    }
    char e2[300];
    if (!(s->ss = store_sms_open(store, e2, sizeof e2))) {
        snprintf(err, errcap, "sms: %s", e2);
        goto fail;
    }
    /* Totals survive restarts: start from the persisted counters. */
    if (store_sms_counters(s->ss, load_counter, s) < 0) {
        snprintf(err, errcap, "sms: %s", store_sms_errmsg(s->ss));
        goto fail;
    }
    counts_publish(s);
    refresh_pending(s);
    s->rnd = (uint32_t)clock_mono_ns() | 1u;
    if (pthread_create(&s->th, NULL, worker, s) != 0) {
        snprintf(err, errcap, "sms: cannot start the worker thread");
        goto fail;
    }
    s->started = 1;
    log_info("sms_started", "type=%s facilities=%zu reminders=%zu quiet_hours=%s max_segments=%u",
             s->type == CONFIG_SMS_ACS ? "acs" : "file", c->sinks.sms.n_facilities,
             c->sinks.sms.n_reminders,
             c->sinks.sms.quiet_hours.enabled ? "on" : "off", c->sinks.sms.max_segments);
    return s;
fail:
    sms_free(s);
    return NULL;
}

void sink_sms_stop(struct sink_sms *s)
{
    if (!s)
        return;
    if (s->started) {
        pthread_mutex_lock(s->mu);
        atomic_store(&s->stop, 1);
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(s->mu);
        pthread_join(s->th, NULL);
        log_info("sms_stopped", "sent=%llu failed=%llu pending=%llu",
                 (unsigned long long)s->st.sent, (unsigned long long)s->st.failed,
                 (unsigned long long)s->st.texts_pending);
    }
    sms_free(s);
}

void sink_sms_get_stats(const struct sink_sms *s, struct sink_sms_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return;
    pthread_mutex_lock(s->mu);
    *out = s->st;
    pthread_mutex_unlock(s->mu);
}
