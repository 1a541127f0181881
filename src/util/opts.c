/* opts.c - see opts.h. Why not getopt_long: it leaves the value's checking
 * to every caller (atoi made "--port abc" a random port), and it knows
 * nothing of help texts or configuration files, so each option was written
 * four times. Unique prefixes of long options ("--mod") are not accepted:
 * a configuration that works today must not change meaning when a new
 * option shares the prefix. */
#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lines.h"
#include "vec.h"

/* --- values ------------------------------------------------------------- */

/* A whole decimal number, all of s (sign allowed). */
static int whole(const char *s, long long *v) {
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return *s && !isspace((unsigned char)*s) && !*end && !errno ? 0 : -1;
}

/* A number followed by one of the units (name, factor); a plain number
 * counts in plain. */
typedef struct {
    const char *name;
    long long factor;
} unit_name;

static int with_unit(const char *s, const unit_name *units, long long plain, long long *out) {
    char *end;
    errno = 0;
    if (!*s || !(isdigit((unsigned char)*s))) return -1; /* no sign, no space, no hex */
    long long v = strtoll(s, &end, 10);
    if (errno) return -1;
    long long f = plain;
    if (*end) {
        f = 0;
        for (const unit_name *u = units; u->name && !f; u++)
            if (!strcmp(end, u->name)) f = u->factor;
        if (!f) return -1;
    }
    if (v > LLONG_MAX / f) return -1;
    *out = v * f;
    return 0;
}

int opts_duration_ms(const char *s, long long plain_unit_ms, long long *ms) {
    static const unit_name u[] = {{"ms", 1},      {"s", 1000},     {"m", 60000}, {"min", 60000},
                                  {"h", 3600000}, {"d", 86400000}, {NULL, 0}};
    return with_unit(s, u, plain_unit_ms, ms);
}

int opts_bytes(const char *s, long long plain_unit, long long *bytes) {
    static const unit_name u[] = {{"B", 1},          {"K", 1LL << 10},   {"KB", 1LL << 10},  {"KiB", 1LL << 10},
                                  {"k", 1LL << 10},  {"M", 1LL << 20},   {"MB", 1LL << 20},  {"MiB", 1LL << 20},
                                  {"G", 1LL << 30},  {"GB", 1LL << 30},  {"GiB", 1LL << 30}, {"T", 1LL << 40},
                                  {"TB", 1LL << 40}, {"TiB", 1LL << 40}, {NULL, 0}};
    return with_unit(s, u, plain_unit, bytes);
}

static const char *duration_unit(long long unit) {
    return unit == 1 ? "milliseconds" : unit == 1000 ? "seconds" : unit == 60000 ? "minutes" : "units";
}

static const char *size_unit(long long unit) {
    return unit == 1 ? "bytes" : unit == 1 << 10 ? "KiB" : unit == 1 << 20 ? "MiB" : unit == 1 << 30 ? "GiB" : "units";
}

static void range_text(const opt *o, char *out, size_t n) { snprintf(out, n, "%lld..%lld", o->min, o->max); }

static void store_int(const opt *o, long long v) {
    switch (o->size) {
    case sizeof(int32_t): *(int32_t *)o->to = (int32_t)v; break;
    case sizeof(int64_t): *(int64_t *)o->to = (int64_t)v; break;
    default: abort(); /* OPT_TO on a variable of another size: a bug in a table */
    }
}

static long long load_int(const opt *o) {
    return o->size == sizeof(int32_t) ? *(int32_t *)o->to : (long long)*(int64_t *)o->to;
}

/* Puts value into the row's variable, or writes why not into why. */
static int apply(const opt *o, const char *value, char *why, size_t n) {
    long long v = 0;
    char range[64];
    switch (o->kind) {
    case OPT_INT:
        range_text(o, range, sizeof range);
        if (whole(value, &v) || v < o->min || v > o->max)
            return snprintf(why, n, "\"%s\" is not an integer in %s", value, range), -1;
        store_int(o, v);
        return 0;
    case OPT_DURATION: {
        range_text(o, range, sizeof range);
        long long ms;
        if (opts_duration_ms(value, o->unit, &ms) || ms % o->unit || (v = ms / o->unit) < o->min || v > o->max)
            return snprintf(why, n,
                            "\"%s\" is not a duration of %s %s (a number of %s, or with a unit: 500ms, 30s, 10m, "
                            "1h, 1d)",
                            value, range, duration_unit(o->unit), duration_unit(o->unit)),
                   -1;
        store_int(o, v);
        return 0;
    }
    case OPT_SIZE: {
        range_text(o, range, sizeof range);
        long long b;
        if (opts_bytes(value, o->unit, &b) || b % o->unit || (v = b / o->unit) < o->min || v > o->max)
            return snprintf(why, n, "\"%s\" is not a size of %s %s (a number of %s, or with a unit: 512K, 64M, 2G)",
                            value, range, size_unit(o->unit), size_unit(o->unit)),
                   -1;
        store_int(o, v);
        return 0;
    }
    case OPT_REAL: {
        char *end;
        double d = strtod(value, &end);
        if (!*value || isspace((unsigned char)*value) || *end || !(d >= o->rmin && d <= o->rmax))
            return snprintf(why, n, "\"%s\" is not a number in %g..%g", value, o->rmin, o->rmax), -1;
        *(double *)o->to = d;
        return 0;
    }
    case OPT_STRING:
    case OPT_PATH:
        if (!*value) return snprintf(why, n, "needs a value"), -1;
        *(const char **)o->to = value;
        return 0;
    case OPT_URL: {
        bool ok = false;
        for (const char *const *s = o->choices; *s && !ok; s++) ok = !strncmp(value, *s, strlen(*s));
        if (!ok) { /* the value is not shown: it may hold a password */
            strbuf b = {0};
            for (const char *const *s = o->choices; *s; s++)
                strbuf_printf(&b, "%s%s...", s == o->choices ? "" : s[1] ? ", " : " or ", *s);
            snprintf(why, n, "expected a URL %s", b.s ? b.s : "");
            strbuf_free(&b);
            return -1;
        }
        *(const char **)o->to = value;
        return 0;
    }
    case OPT_ENUM:
        for (const char *const *s = o->choices; *s; s++)
            if (!strcmp(value, *s)) {
                *(const char **)o->to = *s;
                return 0;
            }
        {
            strbuf b = {0};
            for (const char *const *s = o->choices; *s; s++) strbuf_printf(&b, "%s%s", s == o->choices ? "" : "|", *s);
            snprintf(why, n, "\"%s\" is not one of %s", value, b.s ? b.s : "");
            strbuf_free(&b);
        }
        return -1;
    case OPT_CALL: return o->call(o->to, value, why, n);
    case OPT_FLAG:
        if (!strcmp(value, "true")) *(bool *)o->to = true;
        else if (!strcmp(value, "false")) *(bool *)o->to = false;
        else return snprintf(why, n, "is a flag: true, false, or no value"), -1;
        return 0;
    default: return snprintf(why, n, "is not an option"), -1;
    }
}

/* --- the table ---------------------------------------------------------- */

static const opt *find(const opt *const *tables, const char *name, size_t len) {
    for (const opt *const *t = tables; *t; t++)
        for (const opt *o = *t; o->kind != OPT_END; o++)
            if (o->name && strlen(o->name) == len && !strncmp(o->name, name, len)) return o;
    return NULL;
}

static void keep(opts_result *r, char *s) {
    r->owned = dc_xrealloc(r->owned, (size_t)(r->n_owned + 1) * sizeof *r->owned);
    r->owned[r->n_owned++] = s;
}

static char *unquote(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    if (n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) { /* a quoted value */
        s[n - 1] = '\0';
        s++;
    }
    return s;
}

/* Applies path's settings. */
static int read_config(const char *cmd, const opt *const *tables, const char *path, opts_result *r) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: cannot read the configuration file %s\n", cmd, path);
        return -1;
    }
    char buf[4096], *name, why[512];
    int lineno = 0, rc = 0;
    while (!rc && (name = lines_next(f, buf, sizeof buf, &lineno))) {
        char *value = name + strcspn(name, " \t=");
        bool has_value = *value;
        if (*value) {
            *value++ = '\0';
            value = unquote(value);
            if (*value == '=') value = unquote(value + 1);
            has_value = *value;
        }
        const opt *o = find(tables, name, strlen(name));
        if (!o || !strcmp(name, "config") || !strcmp(name, "help")) {
            fprintf(stderr, "%s: %s:%d: unknown setting \"%s\" (settings are the long options of --help)\n", cmd, path,
                    lineno, name);
            rc = -1;
        } else if (o->kind != OPT_FLAG && !has_value) {
            fprintf(stderr, "%s: %s:%d: %s needs a value\n", cmd, path, lineno, name);
            rc = -1;
        } else {
            char *kept = dc_xstrdup(o->kind == OPT_FLAG && !has_value ? "true" : value);
            keep(r, kept);
            if (apply(o, kept, why, sizeof why) != 0) {
                fprintf(stderr, "%s: %s:%d: %s: %s\n", cmd, path, lineno, name, why);
                rc = -1;
            }
        }
    }
    fclose(f);
    return rc;
}

int opts_parse(const char *cmd, const opt *const *tables, int argc, char **argv, int max_args, const char *intro,
               opts_result *out) {
    *out = (opts_result){0};
    out->args = dc_xrealloc(NULL, (size_t)(argc + 1) * sizeof *out->args);
    int config_at = -1; /* the first --config: its file applies before the command line */
    for (int i = 1; i < argc && config_at < 0; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strncmp(argv[i], "--config=", 9) || !strcmp(argv[i], "--config")) config_at = i;
    }
    if (config_at >= 0) {
        const char *path = argv[config_at][8] == '=' ? argv[config_at] + 9 : argv[config_at + 1];
        if (!path || !*path) {
            fprintf(stderr, "%s: --config needs a FILE\n", cmd);
            return 2;
        }
        if (read_config(cmd, tables, path, out) != 0) return 2;
    }
    char why[512];
    bool help = false, only_args = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_args || a[0] != '-' || !a[1]) {
            if (out->n_args == max_args) {
                fprintf(stderr, "%s: unexpected argument \"%s\" (see --help)\n", cmd, a);
                return 2;
            }
            out->args[out->n_args++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_args = true;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help = true;
            continue;
        }
        const char *name = a + 2, *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (!strncmp(a, "--config", 8) && len == 6) { /* applied above */
            i += !eq;
            continue;
        }
        const opt *o = a[1] == '-' ? find(tables, name, len) : NULL;
        if (!o || o->kind == OPT_TEXT) {
            fprintf(stderr, "%s: unknown option %.*s (see --help)\n", cmd, (int)(eq ? eq - a : (long)strlen(a)), a);
            return 2;
        }
        const char *value;
        if (o->kind == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "%s: --%s takes no value\n", cmd, o->name);
                return 2;
            }
            value = "true";
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, "%s: --%s needs a value (%s)\n", cmd, o->name, o->arg ? o->arg : "see --help");
            return 2;
        }
        if (apply(o, value, why, sizeof why) != 0) {
            fprintf(stderr, "%s: --%s: %s\n", cmd, o->name, why);
            return 2;
        }
    }
    out->args[out->n_args] = NULL;
    if (help) {
        if (intro) fputs(intro, stdout);
        opts_usage(stdout, tables);
        return 1;
    }
    return 0;
}

void opts_free(opts_result *r) {
    for (int i = 0; i < r->n_owned; i++) free(r->owned[i]);
    free(r->owned);
    free(r->args);
    *r = (opts_result){0};
}

/* --- --help ------------------------------------------------------------- */

#define HELP_COL 24
#define HELP_WIDTH 80

/* The variable's value before parsing, as a default. */
static void default_text(const opt *o, char *out, size_t n) {
    *out = '\0';
    if (o->dflt) {
        snprintf(out, n, "%s", o->dflt);
        return;
    }
    if (!o->to) return;
    switch (o->kind) {
    case OPT_INT: snprintf(out, n, "%lld", load_int(o)); break;
    case OPT_DURATION: snprintf(out, n, "%lld%s", load_int(o), o->unit == 1 ? "ms" : o->unit == 1000 ? "s" : ""); break;
    case OPT_SIZE: snprintf(out, n, "%lld%s", load_int(o), o->unit == 1 ? "" : size_unit(o->unit)); break;
    case OPT_REAL: snprintf(out, n, "%g", *(double *)o->to); break;
    case OPT_STRING:
    case OPT_PATH:
    case OPT_URL:
    case OPT_ENUM:
        if (*(const char **)o->to) snprintf(out, n, "%s", *(const char **)o->to);
        break;
    default: break;
    }
}

/* Writes text from column `at` (the cursor's), wrapped at HELP_WIDTH with
 * continuation lines indented to indent. */
static void wrap(FILE *f, const char *text, int at, int indent) {
    const char *p = text;
    while (*p) {
        while (*p == ' ') p++;
        size_t w = strcspn(p, " ");
        if (at > indent && at + 1 + (int)w > HELP_WIDTH) {
            fprintf(f, "\n%*s", indent, "");
            at = indent;
        } else if (at > indent) {
            fputc(' ', f);
            at++;
        }
        fwrite(p, 1, w, f);
        at += (int)w;
        p += w;
    }
    fputc('\n', f);
}

void opts_usage(FILE *f, const opt *const *tables) {
    for (const opt *const *t = tables; *t; t++)
        for (const opt *o = *t; o->kind != OPT_END; o++) {
            if (o->kind == OPT_TEXT) {
                fputc('\n', f);
                wrap(f, o->help, 0, 0);
                continue;
            }
            char head[128], dflt[128];
            int at = snprintf(head, sizeof head, "  --%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
            fputs(head, f);
            if (at >= HELP_COL - 1) {
                fputc(' ', f);
                at++;
            } else {
                at += fprintf(f, "%*s", HELP_COL - at, "");
            }
            default_text(o, dflt, sizeof dflt);
            strbuf b = {0};
            strbuf_puts(&b, o->help ? o->help : "");
            /* "... (a note)" + default: "... (a note; default X)" */
            if (*dflt && b.n && b.s[b.n - 1] == ')') {
                b.s[--b.n] = '\0';
                strbuf_printf(&b, "; default %s)", dflt);
            } else if (*dflt) {
                strbuf_printf(&b, " (default %s)", dflt);
            }
            wrap(f, b.s, at, HELP_COL);
            strbuf_free(&b);
        }
}
