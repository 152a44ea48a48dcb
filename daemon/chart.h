/* chart — a small inline SVG chart for the status page: a value per minute
 * over the last hour, as bars or as a line, with the largest value as the
 * scale and a tooltip (<title>) on every minute.  Plain SVG in the page: no
 * script, no external fetch.  Any thread; writes only to `out`. */
#ifndef DAEMON_CHART_H
#define DAEMON_CHART_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

enum chart_kind { CHART_BARS = 0, CHART_LINE };

struct chart {
    const char *id;            /* element id (plain ASCII, not escaped) */
    const char *title;         /* e.g. "Messages per minute" (plain ASCII) */
    const char *unit;          /* printed after values: "", "%", " ms" */
    int decimals;              /* digits after the point in labels and tooltips */
    enum chart_kind kind;
    int64_t last_minute;       /* wall-clock minute (since the epoch) of v[n-1] */
    const double *v;           /* n values, oldest first */
    const uint8_t *valid;      /* n flags: 0 = no data for that minute (a gap) */
    size_t n;
};

/* Appends one <svg> element; 0, or -1 when `out` hits its ceiling. */
int chart_svg(struct buf *out, const struct chart *c);

#endif
