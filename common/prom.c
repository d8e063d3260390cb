/* The Prometheus text exposition format: HELP/TYPE lines, samples, histograms. */
#include "common/prom.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define PROM_HISTO_LABELS 8

void prom_init(struct prom *p, struct buf *out)
{
    p->out = out;
    p->rc = 0;
}

static void put(struct prom *p, const char *s, size_t n)
{
    if (p->rc == 0) {
        p->rc = buf_append(p->out, s, n);
    }
}

static void puts_(struct prom *p, const char *s)
{
    put(p, s, strlen(s));
}

/* Escapes s for a HELP line (escape_quote false) or a label value (true). */
static int escape(struct buf *out, const char *s, int escape_quote)
{
    int rc = 0;
    const char *run = s;
    for (const char *c = s; *c != '\0' && rc == 0; c++) {
        const char *rep = NULL;
        if (*c == '\\') {
            rep = "\\\\";
        } else if (*c == '\n') {
            rep = "\\n";
        } else if (*c == '"' && escape_quote) {
            rep = "\\\"";
        }
        if (rep == NULL) {
            continue;
        }
        rc = buf_append(out, run, (size_t)(c - run));
        if (rc == 0) {
            rc = buf_append(out, rep, 2);
        }
        run = c + 1;
    }
    if (rc == 0) {
        rc = buf_append(out, run, strlen(run));
    }
    return rc;
}

int prom_escape_label(struct buf *out, const char *v)
{
    return escape(out, v, 1);
}

void prom_family(struct prom *p, const char *name, const char *type, const char *help)
{
    puts_(p, "# HELP ");
    puts_(p, name);
    puts_(p, " ");
    if (p->rc == 0) {
        p->rc = escape(p->out, help, 0);
    }
    puts_(p, "\n# TYPE ");
    puts_(p, name);
    puts_(p, " ");
    puts_(p, type);
    puts_(p, "\n");
}

static void labels_put(struct prom *p, const struct prom_label *labels, size_t n)
{
    if (n == 0) {
        return;
    }
    puts_(p, "{");
    for (size_t i = 0; i < n; i++) {
        puts_(p, i > 0 ? "," : "");
        puts_(p, labels[i].name);
        puts_(p, "=\"");
        if (p->rc == 0) {
            p->rc = prom_escape_label(p->out, labels[i].value != NULL ? labels[i].value : "");
        }
        puts_(p, "\"");
    }
    puts_(p, "}");
}

/* The text of value as the format wants it: the shortest of 15 or 17 significant digits that
 * reads back as value. (isnan and isinf are macros: no libm needed.) */
static void format_value(double value, char *out, size_t cap)
{
    double mag = value < 0 ? -value : value;
    if (isnan(value)) {
        snprintf(out, cap, "NaN");
    } else if (isinf(value)) {
        snprintf(out, cap, "%s", value > 0 ? "+Inf" : "-Inf");
    } else if (mag < 9007199254740992.0 && value == (double)(int64_t)value) {
        snprintf(out, cap, "%" PRId64, (int64_t)value);
    } else {
        snprintf(out, cap, "%.15g", value);
        if (strtod(out, NULL) != value) {
            snprintf(out, cap, "%.17g", value);
        }
    }
}

static void sample_text(struct prom *p, const char *name, const char *suffix,
                        const struct prom_label *labels, size_t nlabels, const char *value)
{
    puts_(p, name);
    puts_(p, suffix);
    labels_put(p, labels, nlabels);
    puts_(p, " ");
    puts_(p, value);
    puts_(p, "\n");
}

void prom_sample(struct prom *p, const char *name, const struct prom_label *labels, size_t nlabels,
                 double value)
{
    char text[40];
    format_value(value, text, sizeof text);
    sample_text(p, name, "", labels, nlabels, text);
}

void prom_sample_u64(struct prom *p, const char *name, const struct prom_label *labels,
                     size_t nlabels, uint64_t value)
{
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, value);
    sample_text(p, name, "", labels, nlabels, text);
}

void prom_histogram(struct prom *p, const char *name, const struct prom_label *labels,
                    size_t nlabels, const struct histo_snapshot *h)
{
    struct prom_label with_le[PROM_HISTO_LABELS];
    if (nlabels >= PROM_HISTO_LABELS) {
        nlabels = PROM_HISTO_LABELS - 1;
    }
    if (nlabels > 0) {
        memcpy(with_le, labels, nlabels * sizeof *labels);
    }
    uint64_t cumulative = 0;
    char le[40];
    char text[24];
    for (size_t i = 0; i <= h->nbounds; i++) {
        cumulative += h->counts[i];
        if (i < h->nbounds) {
            format_value(h->bounds_s[i], le, sizeof le);
        } else {
            snprintf(le, sizeof le, "+Inf");
        }
        with_le[nlabels] = (struct prom_label){"le", le};
        snprintf(text, sizeof text, "%" PRIu64, cumulative);
        sample_text(p, name, "_bucket", with_le, nlabels + 1, text);
    }
    format_value(h->sum_s, le, sizeof le);
    sample_text(p, name, "_sum", labels, nlabels, le);
    snprintf(text, sizeof text, "%" PRIu64, h->count);
    sample_text(p, name, "_count", labels, nlabels, text);
}
