/* Private to hl7/: the layout of the message index and small helpers shared
 * by msg.c, path.c, decode.c, batch.c and ack.c.  Nothing here is part of
 * the module's contract. */
#ifndef HL7_HL7_INT_H
#define HL7_HL7_INT_H

#include <stddef.h>
#include <stdint.h>

#include "hl7/hl7.h"

/* One indexed segment.  Offsets are relative to hl7_msg.p (messages are
 * bounded far below 4 GiB by HB_MAX_MESSAGE_BYTES_CEILING, and longer input
 * is refused).  The field separators of the segment are
 * seps[sep0 .. sep0+nsep). */
struct hl7_seg_ix {
    uint32_t start, end; /* [start, end): segment text without terminator */
    uint32_t sep0, nsep;
    uint32_t id;         /* the three id bytes packed, for quick compares */
};

struct hl7_msg {
    const uint8_t *p; /* indexed bytes (after any BOM) */
    size_t len;
    struct hl7_delims d;
    int delims_ok;    /* 0 until MSH-1/MSH-2 were read and accepted */
    enum hl7_charset cs;
    int cs_unknown;   /* MSH-18 names no HL7 table 0211 value */
    int cs_override;
    int h_recovered;  /* h read by best effort from a first line that failed */
    struct hl7_header h;

    /* Flat index arrays, kept allocated across parses. */
    struct hl7_seg_ix *segs;
    size_t nseg, segcap;
    uint32_t *seps;
    size_t nsep, sepcap;
};

#define HL7_ID(a, b, c) (((uint32_t)(uint8_t)(a) << 16) | ((uint32_t)(uint8_t)(b) << 8) | (uint32_t)(uint8_t)(c))

static inline struct hl7_slice hl7__slice(const uint8_t *p, size_t len)
{
    struct hl7_slice s = {p, len};
    return s;
}

/* 1 for a valid segment id: an upper-case letter then two upper-case
 * letters or digits. */
static inline int hl7__is_segid(const uint8_t *p)
{
    return p[0] >= 'A' && p[0] <= 'Z' &&
           ((p[1] >= 'A' && p[1] <= 'Z') || (p[1] >= '0' && p[1] <= '9')) &&
           ((p[2] >= 'A' && p[2] <= 'Z') || (p[2] >= '0' && p[2] <= '9'));
}

/* Reads MSH-12.1 style version text ("2.5", "2.3.1", "2.8.2").  Returns 0
 * and a comparable number major*1000000 + minor*1000 + patch, or -1. */
int hl7__version_num(struct hl7_slice v, unsigned *out);

/* Checks the encoding characters at p[0..n) (MSH-2/FHS-2/BHS-2) and fills
 * *d (whose field member must already be set).  Returns 0, or the table
 * 0357 code (101 none / 102 invalid). */
int hl7__read_delims(const uint8_t *p, size_t n, struct hl7_delims *d);

/* Raw field `n` (1-based) of the segment text [s, e) with separator fs,
 * for readers that have no index (batch envelopes).  With msh_style the
 * MSH numbering applies (n = 1 is the separator itself, n = 2 the encoding
 * characters); otherwise field 1 is the first one after the id. */
struct hl7_slice hl7__raw_field(const uint8_t *s, const uint8_t *e, uint8_t fs, unsigned n,
                                int msh_style);

/* The charset named by MSH-18 (first repetition, raw).  *unknown is set
 * when the name is not an HL7 table 0211 value at all. */
enum hl7_charset hl7__charset_from(struct hl7_slice name, int *unknown);

/* Standard text of a table 0357 code. */
const char *hl7__errcode_text(int code);

#endif
