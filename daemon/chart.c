/* chart: the status page's per-minute SVG charts (see chart.h).  Fixed
 * geometry in a viewBox, so the browser scales it; numbers are written with
 * one decimal at most, and every text is ours (no value from the wire).
 * Inline in HTML, so no xmlns: the page names no URL but its own. */
#include "daemon/chart.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#define CW 360.0   /* view box */
#define CH 96.0
#define PX0 4.0    /* plot area */
#define PX1 356.0
#define PY0 16.0
#define PY1 80.0

static int put(struct buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put(struct buf *out, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return -1;
    return buf_append(out, tmp, (size_t)n);
}

/* "HH:MM" (UTC) of a wall-clock minute. */
static void hhmm(int64_t minute, char out[8])
{
    time_t t = (time_t)(minute * 60);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 8, "--:--");
        return;
    }
    snprintf(out, 8, "%02d:%02d", tm.tm_hour % 24, tm.tm_min % 60);
}

static int tooltip(struct buf *out, const struct chart *c, size_t i)
{
    char at[8];
    hhmm(c->last_minute - (int64_t)(c->n - 1 - i), at);
    return put(out, "<title>%s UTC: %.*f%s</title>", at, c->decimals, c->v[i], c->unit);
}

int chart_svg(struct buf *out, const struct chart *c)
{
    double max = 0, last = 0;
    size_t points = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (!c->valid[i])
            continue;
        if (c->v[i] > max)
            max = c->v[i];
        last = c->v[i];
        points++;
    }
    double scale = max > 0 ? max : 1;
    double step = c->n ? (PX1 - PX0) / (double)c->n : 0;
    int rc = put(out, "<svg id=\"%s\" class=\"chart\" role=\"img\" viewBox=\"0 0 %.0f %.0f\" "
                      "width=\"%.0f\" height=\"%.0f\">",
                 c->id, CW, CH, CW, CH);
    rc |= put(out, "<title>%s, last hour: now %.*f%s, highest %.*f%s</title>", c->title,
              c->decimals, last, c->unit, c->decimals, max, c->unit);
    rc |= put(out, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#fff\"/>", CW, CH);
    rc |= put(out, "<text x=\"%.0f\" y=\"11\" font-size=\"11\" fill=\"#1d2330\">%s</text>", PX0,
              c->title);
    rc |= put(out, "<text x=\"%.0f\" y=\"11\" font-size=\"11\" text-anchor=\"end\" "
                   "fill=\"#6b7280\">max %.*f%s</text>",
              PX1, c->decimals, max, c->unit);
    rc |= put(out, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#c9ccd3\"/>",
              PX0, PY1, PX1, PY1);
    rc |= put(out, "<text x=\"%.0f\" y=\"93\" font-size=\"10\" fill=\"#6b7280\">-%zu min</text>"
                   "<text x=\"%.0f\" y=\"93\" font-size=\"10\" text-anchor=\"end\" "
                   "fill=\"#6b7280\">now</text>",
              PX0, c->n, PX1);
    if (c->kind == CHART_BARS) {
        rc |= put(out, "<g class=\"bars\" fill=\"#3d6fb6\">");
        for (size_t i = 0; i < c->n && rc == 0; i++) {
            if (!c->valid[i] || c->v[i] <= 0)
                continue;
            double h = (PY1 - PY0) * c->v[i] / scale;
            rc |= put(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\">",
                      PX0 + step * (double)i, PY1 - h, step > 1.5 ? step - 1 : step, h);
            rc |= tooltip(out, c, i);
            rc |= buf_append_str(out, "</rect>");
        }
        rc |= buf_append_str(out, "</g>");
    } else {
        /* One polyline per run of minutes with data, a dot with a tooltip on
         * each minute. */
        rc |= put(out, "<g class=\"line\" fill=\"none\" stroke=\"#b3261e\" stroke-width=\"1.5\">");
        for (size_t i = 0; i < c->n && rc == 0;) {
            if (!c->valid[i]) {
                i++;
                continue;
            }
            rc |= buf_append_str(out, "<polyline points=\"");
            for (; i < c->n && c->valid[i] && rc == 0; i++)
                rc |= put(out, "%.1f,%.1f ", PX0 + step * ((double)i + 0.5),
                          PY1 - (PY1 - PY0) * c->v[i] / scale);
            rc |= buf_append_str(out, "\"/>");
        }
        rc |= buf_append_str(out, "</g><g class=\"points\" fill=\"#b3261e\">");
        for (size_t i = 0; i < c->n && rc == 0; i++) {
            if (!c->valid[i])
                continue;
            rc |= put(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"1.8\">",
                      PX0 + step * ((double)i + 0.5), PY1 - (PY1 - PY0) * c->v[i] / scale);
            rc |= tooltip(out, c, i);
            rc |= buf_append_str(out, "</circle>");
        }
        rc |= buf_append_str(out, "</g>");
    }
    if (points == 0)
        rc |= put(out, "<text x=\"%.0f\" y=\"52\" font-size=\"11\" text-anchor=\"middle\" "
                       "fill=\"#6b7280\">no data yet</text>",
                  CW / 2);
    rc |= buf_append_str(out, "</svg>");
    return rc ? -1 : 0;
}
