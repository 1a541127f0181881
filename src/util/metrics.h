/* metrics.h - counters, gauges and histograms, written out in Prometheus's
 * text exposition format (version 0.0.4) for GET /metrics.
 *
 * A family is defined once (name, kind, help, histogram bounds); its series
 * are created on first use, one per label set. Label sets are given as
 * Prometheus writes them, `endpoint="/completion",status="200"`, and their
 * values must need no escaping: callers pass fixed strings (route names,
 * modes, status codes), never client input, which also keeps the number of
 * series bounded. Every call is thread-safe. */
#ifndef DC_METRICS_H
#define DC_METRICS_H

#include "vec.h"

typedef struct metrics metrics;

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_kind;

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* name and help must outlive m (literals); bounds (ascending, n_bounds of
 * them; +Inf is implied) are copied. Histograms only. */
void metrics_define(metrics *m, const char *name, metric_kind kind, const char *help, const double *bounds,
                    int n_bounds);

/* labels: NULL for none. Unknown names are ignored (a programming error
 * that must not take the node down). */
void metrics_add(metrics *m, const char *name, const char *labels, double v);     /* counter, gauge */
void metrics_set(metrics *m, const char *name, const char *labels, double v); /* gauge; a counter kept elsewhere */
void metrics_observe(metrics *m, const char *name, const char *labels, double v); /* histogram */

/* Appends every family with at least one series. */
void metrics_render(metrics *m, strbuf *out);

#endif
