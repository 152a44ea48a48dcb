/* hl7 — HL7 v2 message index, paths, escapes, charsets, batches, ACK builder.
 *
 * The parser indexes a message in place: nothing is copied, every value is a
 * view (struct hl7_slice) into the caller's bytes, which must outlive the
 * index.  Escape sequences and MSH-18 character sets are decoded only on
 * access (hl7_decode).  Knows nothing of sockets, rules or storage.
 *
 * Threads: a struct hl7_msg belongs to one thread at a time; the functions
 * keep no global state and may be called from any thread. */
#ifndef HL7_HL7_H
#define HL7_HL7_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct hl7_slice {
    const uint8_t *p;
    size_t len;
};

/* Encoding characters from MSH-1/MSH-2 (never assumed). trunc is 0 when the
 * message (v2.7+) declares no truncation character. */
struct hl7_delims {
    uint8_t field, comp, rep, esc, sub, trunc;
};

enum hl7_charset {
    HL7_CS_ASCII = 0,  /* also the default when MSH-18 is empty */
    HL7_CS_LATIN1,     /* 8859/1 */
    HL7_CS_UTF8,       /* UNICODE UTF-8 */
    HL7_CS_LATIN15,    /* 8859/15 */
    HL7_CS_UNSUPPORTED /* named in MSH-18 but not converted: bytes passed through */
};

/* HL7 table 0357 codes used by hl7bridge. */
enum hl7_errcode {
    HL7_E_OK = 0,
    HL7_E_SEGMENT_SEQUENCE = 100,
    HL7_E_REQUIRED_MISSING = 101,
    HL7_E_DATA_TYPE = 102,
    HL7_E_TABLE_VALUE = 103,
    HL7_E_UNSUPPORTED_TYPE = 200,
    HL7_E_UNSUPPORTED_EVENT = 201,
    HL7_E_UNSUPPORTED_PROCESSING_ID = 202,
    HL7_E_UNSUPPORTED_VERSION = 203,
    HL7_E_UNKNOWN_KEY = 204,
    HL7_E_DUPLICATE_KEY = 205,
    HL7_E_RECORD_LOCKED = 206,
    HL7_E_INTERNAL = 207,
};

/* Where and why a message was not accepted.  The location follows ERR-2
 * (segment^sequence^field^repetition^component^subcomponent); 0 means "not
 * applicable".  text never contains message content (no PHI). */
struct hl7_err {
    int code;            /* enum hl7_errcode */
    char seg[4];         /* NUL-terminated segment id, "" when unknown */
    unsigned seg_seq;    /* 1-based ordinal of that segment in the message */
    unsigned field, rep, comp, sub;
    size_t offset;       /* byte offset into the message */
    char text[160];
};

void hl7_err_set(struct hl7_err *e, int code, const char *seg, unsigned seg_seq,
                 unsigned field, const char *text);

/* The MSH facts every module needs, as raw (still escaped) views.  Fields that
 * the message does not carry are empty slices.  send_app/send_fac are the
 * whole MSH-3/MSH-4 fields (all components), as used for duplicate detection. */
struct hl7_header {
    struct hl7_slice send_app, send_fac, recv_app, recv_fac; /* MSH-3..6 */
    struct hl7_slice timestamp;                              /* MSH-7 */
    struct hl7_slice msg_type, trigger, structure;           /* MSH-9.1 .2 .3 */
    struct hl7_slice control_id;                             /* MSH-10 */
    struct hl7_slice processing_id;                          /* MSH-11 (whole) */
    struct hl7_slice version;                                /* MSH-12 (whole) */
    struct hl7_slice version_id;                             /* MSH-12.1 */
    struct hl7_slice accept_ack, app_ack;                    /* MSH-15, MSH-16 */
    struct hl7_slice charset;                                /* MSH-18 first rep */
};

/* ---- message index ---------------------------------------------------- */

struct hl7_msg; /* opaque */

struct hl7_parse_opts {
    /* Overrides MSH-18 for senders whose declared charset does not match
     * their bytes (per-listener `charset:`).  HL7_CS_ASCII with
     * override_charset == 0 means "use MSH-18". */
    int override_charset;
    enum hl7_charset charset;
};

/* Returns an empty index (owned by the caller; free with hl7_msg_free). */
struct hl7_msg *hl7_msg_new(void);
void hl7_msg_free(struct hl7_msg *m);

/* Indexes `len` bytes at `p` (borrowed; must outlive every later access).
 * Segments end with CR; LF and CRLF are tolerated; a UTF-8 BOM before MSH is
 * skipped.  Returns 0, or -1 with *err filled (code 100 when there is no
 * MSH or a segment id is invalid, 101 for a truncated MSH without encoding
 * characters, 207 for a message beyond HL7_MAX_SEGMENTS).  After a failure
 * the header fields that could be read are still available, so an ACK can
 * echo them — also when MSH-1/MSH-2 were refused: MSH-3..MSH-16 are then
 * read by best effort from the first line (hl7_msg_delims stays standard).  Never reads outside [p, p+len). `opts` may be NULL. */
int hl7_msg_parse(struct hl7_msg *m, const uint8_t *p, size_t len,
                  const struct hl7_parse_opts *opts, struct hl7_err *err)
    __attribute__((warn_unused_result));

/* Checks what hl7bridge requires to accept a message: no NUL byte (102
 * naming the segment and field), MSH-9.1 (the trigger may be empty), MSH-12
 * with a v2 version (2.1 or later), a valid MSH-7, a known MSH-18.  Returns
 * 0 or -1 with *err (101 with the field's location, 102, 103, 203). */
int hl7_msg_validate(const struct hl7_msg *m, struct hl7_err *err)
    __attribute__((warn_unused_result));

/* Optional strict check, not part of hl7_msg_validate: every escape
 * character opens a sequence that is closed within the same field.
 * hl7_decode keeps a lone escape character literally (senders routinely put
 * a bare "\" in free text), so only listeners configured to be strict should
 * refuse such messages.  Returns 0 or -1 with *err (102 with the location of
 * the first offending field). */
int hl7_msg_check_escapes(const struct hl7_msg *m, struct hl7_err *err)
    __attribute__((warn_unused_result));

/* Appends the message's content as duplicate detection compares it: every
 * segment as received, each followed by one CR (so CR, LF or CRLF line ends,
 * blank lines and a BOM make no difference), with MSH-7 (date/time of the
 * message) left empty, since an engine that re-sends a message may stamp
 * it anew.  Everything else, MSH-10 included, counts.  For a message that
 * parsed; returns 0 or -1 when `out` hits its ceiling. */
int hl7_msg_content(const struct hl7_msg *m, struct buf *out) __attribute__((warn_unused_result));

const struct hl7_header *hl7_msg_header(const struct hl7_msg *m);
const struct hl7_delims *hl7_msg_delims(const struct hl7_msg *m);
enum hl7_charset hl7_msg_charset(const struct hl7_msg *m);
/* The bytes that were indexed (after any skipped BOM). */
struct hl7_slice hl7_msg_bytes(const struct hl7_msg *m);

/* Segments are numbered 0..count-1 in message order (MSH is 0). */
size_t hl7_seg_count(const struct hl7_msg *m);
/* The 3-byte segment id (a view). */
struct hl7_slice hl7_seg_id(const struct hl7_msg *m, size_t seg);
/* The whole segment text without its terminator. */
struct hl7_slice hl7_seg_text(const struct hl7_msg *m, size_t seg);
/* Index of the nth (1-based) segment with this 3-letter id, or -1. */
long hl7_seg_find(const struct hl7_msg *m, const char id[3], unsigned nth);
/* Number of fields of segment `seg` (for MSH, MSH-1 counts as a field). */
unsigned hl7_seg_field_count(const struct hl7_msg *m, size_t seg);
/* Raw field `field` (1-based, HL7 numbering: MSH-1 is the field separator,
 * MSH-2 the encoding characters) with all its repetitions; empty when absent. */
struct hl7_slice hl7_seg_field(const struct hl7_msg *m, size_t seg, unsigned field);

/* Splitting a raw value on a delimiter: the nth (1-based) piece, or an empty
 * slice; and the number of pieces (1 for an empty value). */
struct hl7_slice hl7_slice_piece(struct hl7_slice s, uint8_t delim, unsigned nth);
unsigned hl7_slice_count(struct hl7_slice s, uint8_t delim);
/* HL7 explicit null: the two bytes "" . */
int hl7_slice_is_null(struct hl7_slice s);
int hl7_slice_eq(struct hl7_slice s, const char *lit);

/* ---- paths ----------------------------------------------------------- */

#define HL7_REP_ALL (-1) /* [*] */

/* A compiled path in the usual notation: SEG[n]-F[r].C.S, e.g. `PID-3[2].1`,
 * `OBX[3]-5.1`, `MSH-9.2`, `PID-3[*].1`.  0 means "not given": segment
 * instance 0 = first, field 0 = whole segment, rep 0 = first repetition,
 * comp 0 = whole repetition, sub 0 = whole component. */
struct hl7_path {
    char seg[4];
    unsigned seg_nth;
    unsigned field;
    int rep;
    unsigned comp;
    unsigned sub;
};

/* Parses `len` bytes at `s`.  Returns 0, or -1 with a short reason in
 * *why (a static string) and the offending byte offset in *at. */
int hl7_path_parse(const char *s, size_t len, struct hl7_path *out, const char **why, size_t *at)
    __attribute__((warn_unused_result));
/* Formats a path back into its notation (for messages and ERR-2). */
void hl7_path_format(const struct hl7_path *p, char *out, size_t cap);

/* Looks a path up.  `seg` >= 0 forces a segment index (for rules iterating
 * over repeating segments; the path's segment id must still match), -1 uses
 * path->seg/seg_nth.  For rep == HL7_REP_ALL the first repetition is used; use
 * hl7_get_rep to walk them.  Returns 1 and the raw view when the value is
 * present and non-empty, 0 when absent or empty. */
int hl7_get(const struct hl7_msg *m, const struct hl7_path *path, long seg, struct hl7_slice *out);
/* The same with an explicit 1-based repetition (overrides path->rep). */
int hl7_get_rep(const struct hl7_msg *m, const struct hl7_path *path, long seg, unsigned rep,
                struct hl7_slice *out);
/* Number of repetitions of the path's field (0 when absent). */
unsigned hl7_rep_count(const struct hl7_msg *m, const struct hl7_path *path, long seg);

/* ---- decoding -------------------------------------------------------- */

/* Appends the decoded value of a raw view to `out`: escape sequences
 * (\F\ \S\ \T\ \R\ \E\, \Xhh..\, \.br\ → line break, other formatting
 * sequences dropped) and the message's charset converted to UTF-8.  The HL7
 * null "" decodes to the empty string.  Returns 0 or -1 when `out` hits its
 * ceiling. */
int hl7_decode(const struct hl7_msg *m, struct hl7_slice raw, struct buf *out)
    __attribute__((warn_unused_result));
/* Appends `len` bytes of UTF-8 text escaped with the message's delimiters
 * (the inverse of hl7_decode for the five structural characters). */
int hl7_escape(const struct hl7_delims *d, const uint8_t *p, size_t len, struct buf *out)
    __attribute__((warn_unused_result));

/* ---- batches (FHS/BHS ... BTS/FTS) ------------------------------------ */

struct hl7_batch_iter {
    const uint8_t *p;
    size_t len, pos;
    struct hl7_delims d;
    int has_header;                      /* FHS or BHS (else: MSH … BTS/FTS) */
    struct hl7_slice batch_control_id;  /* BHS-11 (FHS-11); MSH-10 of the first
                                         * message when there is no header */
    struct hl7_slice send_app, send_fac; /* BHS-3, BHS-4 (or the first MSH's) */
    struct hl7_slice version;            /* MSH-12 of the first message */
    unsigned declared_count;             /* BTS-1, 0 when absent */
    unsigned seen;
    size_t batch_start;                  /* offset of the current BHS/FHS (has_header) */
    /* BTS-1 / FTS-1 counts that do not match (or are no number): worth a
     * warning, never a reason to refuse messages.  The first one's location
     * (segment, field 1) and text are in count_err. */
    unsigned count_mismatches;
    struct hl7_err count_err;
};

/* 1 when the bytes begin (after an optional BOM and blank lines) with FHS or
 * BHS. */
int hl7_is_batch(const uint8_t *p, size_t len);
/* Starts iterating a batch.  Returns 0, or -1 with *err when the envelope
 * cannot be read: shape (segments outside messages, BHS inside an open
 * batch, data after FTS) or a message whose MSH-1/MSH-2 differ from the
 * header's delimiters (102).  A batch may have a header (FHS and/or BHS) or
 * only a trailer (MSH … BTS/FTS). */
int hl7_batch_begin(struct hl7_batch_iter *it, const uint8_t *p, size_t len, struct hl7_err *err)
    __attribute__((warn_unused_result));
/* The next message of the batch as a view (MSH up to the next MSH/BTS/FTS).
 * Returns 1, 0 at the end, -1 with *err when the envelope is broken.  Count
 * mismatches are not errors: see count_mismatches. */
int hl7_batch_next(struct hl7_batch_iter *it, struct hl7_slice *msg, struct hl7_err *err);

/* ---- acknowledgements -------------------------------------------------- */

enum hl7_ack_code { HL7_ACK_AA = 0, HL7_ACK_AE, HL7_ACK_AR, HL7_ACK_CA, HL7_ACK_CE, HL7_ACK_CR };
const char *hl7_ack_code_name(enum hl7_ack_code c);
/* Parses "AA".."CR"; returns -1 for anything else. */
int hl7_ack_code_parse(const uint8_t *p, size_t len, enum hl7_ack_code *out);

enum hl7_outcome { HL7_ACCEPT = 0, HL7_ERROR, HL7_REJECT };

/* Chooses the acknowledgement for an outcome: original mode gives AA/AE/AR;
 * enhanced mode gives CA/CE/CR, and returns 0 in *send when MSH-15 says not
 * to send one (NE never, ER only on error, SU only on success). */
enum hl7_ack_code hl7_ack_choose(const struct hl7_msg *m, int enhanced, enum hl7_outcome o,
                                 int *send);

struct hl7_ack_ctx {
    const char *app;        /* our MSH-3 */
    const char *facility;   /* our MSH-4 */
    const char *control_id; /* fresh MSH-10 of the ACK */
    int64_t now_ms;         /* MSH-7 (UTC wall clock), rendered YYYYMMDDHHMMSS.sss+0000 */
};

/* Appends one ACK message (segments ended by CR, no MLLP framing) to `out`:
 * MSH with our app/facility as sender, the incoming MSH-3/MSH-4 as receiver,
 * MSH-9 ACK^<trigger>^ACK, MSH-11/MSH-12 echoed (2.5 when unknown);
 * MSA-1 code, MSA-2 the incoming MSH-10, MSA-3 `text` (escaped);
 * an ERR segment when `err` is non-NULL, in the form of the message's
 * version (v2.5+: ERR-2 location, ERR-3 code^text^HL70357, ERR-4 severity E;
 * older: ERR-1 location^code).  `m` may be a message whose parse failed (what
 * could be read is echoed) or NULL.  Delimiters are the incoming message's
 * when known, else |^~\&.  Returns 0 or -1 when `out` is full. */
int hl7_ack_build(const struct hl7_msg *m, enum hl7_ack_code code, const char *text,
                  const struct hl7_err *err, const struct hl7_ack_ctx *ctx, struct buf *out)
    __attribute__((warn_unused_result));

/* The same for a whole batch: MSA-2 is BHS-11, the receiver BHS-3/BHS-4. */
int hl7_ack_build_batch(const struct hl7_batch_iter *it, enum hl7_ack_code code, const char *text,
                        const struct hl7_err *err, const struct hl7_ack_ctx *ctx, struct buf *out)
    __attribute__((warn_unused_result));

#endif
