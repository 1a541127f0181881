/* opts.h - a command's options as one table (Redis' config table, for a
 * command line): each row names an option, its kind of value and the
 * accepted range, where the value goes, and its help text. --help, the
 * --config FILE settings and the command line are all read from the table,
 * so an option lives in one place, and a value is either what the row
 * accepts or an exit with status 2 and a message naming the option and the
 * form it takes, e.g.
 *
 *     serve: --port: "abc" is not an integer in 0..65535
 *
 * The configuration file: one setting per line, "name = value" or
 * "name value" (a value may be quoted), or a flag's bare name (or
 * "name = true|false"); '#' starts a comment; names are the long options
 * without "--". Its settings apply first, the command line's after, so the
 * command line wins. */
#ifndef DC_OPTS_H
#define DC_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum {
    OPT_END = 0,  /* ends a table */
    OPT_TEXT,     /* no option: a paragraph of --help (help), e.g. a heading */
    OPT_INT,      /* a whole decimal number in min..max */
    OPT_DURATION, /* a time: a plain number in `unit`, or with a unit: 250ms, 30s, 10m, 1h, 1d */
    OPT_SIZE,     /* bytes: a plain number in `unit`, or with a unit: 512K, 64MiB, 2GiB (1K = 1024) */
    OPT_REAL,     /* a decimal number in rmin..rmax */
    OPT_STRING,   /* any non-empty text */
    OPT_PATH,     /* a file or folder name (not checked here: its user opens it) */
    OPT_URL,      /* a URL starting with one of schemes[]; never echoed (it may hold a password) */
    OPT_ENUM,     /* one of choices[] */
    OPT_FLAG,     /* no value: sets a bool */
    OPT_CALL      /* each value goes to call(): repeatable options */
} opt_kind;

typedef struct opt opt;
struct opt {
    const char *name; /* --name, and the configuration file's setting */
    opt_kind kind;
    const char *arg;  /* the value in --help: "N", "DIR", "URL" */
    const char *help; /* one paragraph; --help wraps it */
    /* Where the value goes: OPT_INT, OPT_DURATION, OPT_SIZE: an integer
     * variable of `size` bytes (int, long, int64_t, size_t: OPT_TO);
     * OPT_REAL: a double; OPT_STRING, OPT_PATH, OPT_URL, OPT_ENUM: a
     * const char * (the value, which lives until opts_free); OPT_FLAG: a
     * bool; OPT_CALL: what call() gets as ud. */
    void *to;
    size_t size;
    long long min, max; /* OPT_INT: the range; OPT_DURATION, OPT_SIZE: the same, in `unit`s */
    /* OPT_DURATION: milliseconds per unit of the variable, which is also what
     * a plain number means (1: ms, 1000: s); OPT_SIZE: bytes per unit (1,
     * 1 << 20 for MiB). A value with a unit must be a whole number of them. */
    long long unit;
    double rmin, rmax;          /* OPT_REAL */
    const char *const *choices; /* OPT_ENUM: the values; OPT_URL: the schemes ("http://"); NULL-ended */
    /* OPT_CALL: takes a value (0), or says why not into why (-1) */
    int (*call)(void *ud, const char *value, char *why, size_t whylen);
    /* --help shows "(default X)" after the help: X is this text, or where
     * it is NULL the variable's value before parsing (none for strings
     * that are NULL, flags and OPT_CALL); "" shows none. */
    const char *dflt;
};

/* The variable of an integer row and its size. */
#define OPT_TO(var) .to = &(var), .size = sizeof(var)

/* What parsing kept: the configuration file's values (string options point
 * into them) and the command's arguments that are not options. */
typedef struct {
    char **owned;
    int n_owned;
    char **args; /* argv's own strings */
    int n_args;
} opts_result;

/* Parses argv[1..argc) against tables (a NULL-ended list of OPT_END-ended
 * tables, searched in order), after the settings of the --config FILE
 * among them (--config FILE or --config=FILE; the first one). "--" ends the
 * options. Arguments that are not options go to out->args, at most
 * max_args of them. --help (or -h) prints opts_usage(stdout) after intro.
 * Returns 0 when parsed, 1 after --help (exit 0), or 2 after printing why
 * to stderr (exit 2). Call opts_free(out) in every case. */
int opts_parse(const char *cmd, const opt *const *tables, int argc, char **argv, int max_args, const char *intro,
               opts_result *out);
void opts_free(opts_result *r);

/* The options of tables for --help: "  --name ARG   help (default X)". */
void opts_usage(FILE *f, const opt *const *tables);

/* The parsers, for values read elsewhere: 0, or -1 (the value is not of
 * the form). */
int opts_duration_ms(const char *s, long long plain_unit_ms, long long *ms);
int opts_bytes(const char *s, long long plain_unit, long long *bytes);

#endif
