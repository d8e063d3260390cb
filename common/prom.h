/* Writes the Prometheus text exposition format (version 0.0.4) into a capped buffer. Pure. */
#ifndef COFI_PROM_H
#define COFI_PROM_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/histo.h"

/* The Content-Type of the format. */
#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* One label of a sample: both strings borrowed. name must be a valid label name; value is
 * any text (escaped here). */
struct prom_label {
    const char *name;
    const char *value;
};

/* A writer: out is borrowed and must outlive it. The first error sticks (rc) and every later
 * call does nothing, so a caller checks once at the end. */
struct prom {
    struct buf *out;
    int rc; /* 0, or buf_append's -1 (the cap) / -2 (memory) */
};

/* Starts writing into out. Can't fail. */
void prom_init(struct prom *p, struct buf *out);

/* Writes the "# HELP" and "# TYPE" lines of a family (type: "counter", "gauge",
 * "histogram"); help is escaped (backslash, newline). Call once per family, before its
 * samples. */
void prom_family(struct prom *p, const char *name, const char *type, const char *help);

/* Writes one sample line "name{labels} value". value is written as an integer when it is
 * one, "+Inf", "-Inf" or "NaN" when it is such, else with 17 significant digits. */
void prom_sample(struct prom *p, const char *name, const struct prom_label *labels, size_t nlabels,
                 double value);

/* As prom_sample for an unsigned counter (exact above 2^53). */
void prom_sample_u64(struct prom *p, const char *name, const struct prom_label *labels,
                     size_t nlabels, uint64_t value);

/* Writes a histogram's samples: name_bucket{labels,le="…"} (cumulative, +Inf last), name_sum
 * and name_count. At most 7 labels besides le. */
void prom_histogram(struct prom *p, const char *name, const struct prom_label *labels,
                    size_t nlabels, const struct histo_snapshot *h);

/* Appends the label value v escaped as the format wants (\\, \", \n) to out. Returns
 * buf_append's codes. */
int prom_escape_label(struct buf *out, const char *v);

#endif
