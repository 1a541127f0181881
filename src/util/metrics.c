/* metrics.c - see metrics.h. A handful of families with a few series each:
 * linear lists under one mutex are simpler than anything faster, and a
 * turn costs milliseconds to seconds, an update well under a microsecond. */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct series {
    char *labels; /* "" for none */
    double value; /* counter, gauge; histogram: the sum */
    double count;
    double *buckets; /* histogram: observations <= bounds[i] (not cumulative) */
    struct series *next;
} series;

typedef struct family {
    const char *name, *help;
    metric_kind kind;
    double *bounds;
    int n_bounds;
    series *head, **tail;
    struct family *next;
} family;

struct metrics {
    pthread_mutex_t mu;
    family *head, **tail;
};

metrics *metrics_new(void) {
    metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->tail = &m->head;
    return m;
}

void metrics_free(metrics *m) {
    if (!m) return;
    for (family *f = m->head, *fn; f; f = fn) {
        fn = f->next;
        for (series *s = f->head, *sn; s; s = sn) {
            sn = s->next;
            free(s->labels);
            free(s->buckets);
            free(s);
        }
        free(f->bounds);
        free(f);
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_define(metrics *m, const char *name, metric_kind kind, const char *help, const double *bounds,
                    int n_bounds) {
    family *f = dc_xrealloc(NULL, sizeof *f);
    *f = (family){.name = name, .help = help, .kind = kind};
    f->tail = &f->head;
    if (kind == METRIC_HISTOGRAM && n_bounds > 0) {
        f->bounds = dc_xrealloc(NULL, (size_t)n_bounds * sizeof *f->bounds);
        memcpy(f->bounds, bounds, (size_t)n_bounds * sizeof *f->bounds);
        f->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&m->mu);
    *m->tail = f;
    m->tail = &f->next;
    pthread_mutex_unlock(&m->mu);
}

/* The series of name{labels}, created if new; NULL for an unknown name, or
 * a histogram asked for as a counter or gauge (or the reverse). Under mu. */
static series *find(metrics *m, const char *name, const char *labels, metric_kind kind, family **fam) {
    if (!labels) labels = "";
    family *f = m->head;
    while (f && strcmp(f->name, name) != 0) f = f->next;
    /* add works on gauges too; set on counters too, for a counter kept
     * elsewhere (the engine's) and mirrored here */
    if (!f || (f->kind != kind && (kind == METRIC_HISTOGRAM || f->kind == METRIC_HISTOGRAM))) return NULL;
    *fam = f;
    for (series *s = f->head; s; s = s->next)
        if (!strcmp(s->labels, labels)) return s;
    series *s = dc_xrealloc(NULL, sizeof *s);
    *s = (series){.labels = strdup(labels)};
    if (!s->labels) abort();
    if (f->kind == METRIC_HISTOGRAM) {
        size_t n = ((size_t)f->n_bounds + 1) * sizeof *s->buckets;
        s->buckets = memset(dc_xrealloc(NULL, n), 0, n);
    }
    *f->tail = s;
    f->tail = &s->next;
    return s;
}

void metrics_add(metrics *m, const char *name, const char *labels, double v) {
    family *f;
    pthread_mutex_lock(&m->mu);
    series *s = find(m, name, labels, METRIC_COUNTER, &f);
    if (s) s->value += v;
    pthread_mutex_unlock(&m->mu);
}

void metrics_set(metrics *m, const char *name, const char *labels, double v) {
    family *f;
    pthread_mutex_lock(&m->mu);
    series *s = find(m, name, labels, METRIC_GAUGE, &f);
    if (s) s->value = v;
    pthread_mutex_unlock(&m->mu);
}

void metrics_observe(metrics *m, const char *name, const char *labels, double v) {
    family *f;
    pthread_mutex_lock(&m->mu);
    series *s = find(m, name, labels, METRIC_HISTOGRAM, &f);
    if (s) {
        int i = 0;
        while (i < f->n_bounds && v > f->bounds[i]) i++;
        s->buckets[i]++; /* i == n_bounds: only in +Inf */
        s->count++;
        s->value += v;
    }
    pthread_mutex_unlock(&m->mu);
}

/* name{labels[,extra]} */
static void series_name(strbuf *out, const char *name, const char *suffix, const char *labels, const char *extra) {
    strbuf_printf(out, "%s%s", name, suffix);
    if (!*labels && !extra) return;
    strbuf_printf(out, "{%s%s%s}", labels, *labels && extra ? "," : "", extra ? extra : "");
}

void metrics_render(metrics *m, strbuf *out) {
    static const char *kinds[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->mu);
    for (family *f = m->head; f; f = f->next) {
        if (!f->head) continue;
        strbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, kinds[f->kind]);
        for (series *s = f->head; s; s = s->next) {
            if (f->kind != METRIC_HISTOGRAM) {
                series_name(out, f->name, "", s->labels, NULL);
                strbuf_printf(out, " %.17g\n", s->value);
                continue;
            }
            double cum = 0;
            char le[48];
            for (int i = 0; i <= f->n_bounds; i++) {
                cum += s->buckets[i];
                if (i < f->n_bounds) snprintf(le, sizeof le, "le=\"%g\"", f->bounds[i]);
                else snprintf(le, sizeof le, "le=\"+Inf\"");
                series_name(out, f->name, "_bucket", s->labels, le);
                strbuf_printf(out, " %.17g\n", cum);
            }
            series_name(out, f->name, "_sum", s->labels, NULL);
            strbuf_printf(out, " %.17g\n", s->value);
            series_name(out, f->name, "_count", s->labels, NULL);
            strbuf_printf(out, " %.17g\n", s->count);
        }
    }
    pthread_mutex_unlock(&m->mu);
}
