/* test_opts.c - the option tables (util/opts.h): every kind takes the
 * forms it documents and refuses the rest with a message naming the option;
 * a configuration file applies before the command line, which wins; --help
 * lists every row with its default. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/opts.h"

/* The variables of the test table, reset before each parse. */
static struct {
    int port;
    long long ttl_s;
    int wait_ms;
    size_t body;
    size_t mib;
    double mbps;
    const char *node, *url, *kind, *dir;
    bool verbose, quiet;
    int calls;
} v;

static int count_call(void *ud, const char *value, char *why, size_t n) {
    (void)ud;
    if (!strcmp(value, "bad")) return snprintf(why, n, "\"bad\" is refused"), -1;
    v.calls++;
    return 0;
}

static const char *const kinds[] = {"f16", "q8_0", NULL};
static const char *const schemes[] = {"http://", "https://", NULL};

static int parse_in(int argc, char **argv, int max_args, opts_result *r, char *err, size_t errlen) {
    memset(&v, 0, sizeof v);
    v.port = 8080;
    v.ttl_s = 86400;
    v.wait_ms = 2000;
    v.body = 1 << 20;
    v.mib = 1024;
    v.mbps = 100;
    const opt t[] = {
        {.kind = OPT_TEXT, .help = "A heading."},
        {"port", OPT_INT, "N", "TCP port", OPT_TO(v.port), .min = 0, .max = 65535},
        {"session-ttl", OPT_DURATION, "SECS", "idle time", OPT_TO(v.ttl_s), .min = 0, .max = 1LL << 40, .unit = 1000},
        {"sync-timeout", OPT_DURATION, "MS", "wait", OPT_TO(v.wait_ms), .min = 0, .max = 3600000, .unit = 1},
        {"max-body", OPT_SIZE, "BYTES", "body", OPT_TO(v.body), .min = 1, .max = 1LL << 32, .unit = 1},
        {"spill-mib", OPT_SIZE, "N", "disk", OPT_TO(v.mib), .min = 0, .max = 1 << 24, .unit = 1 << 20},
        {"mbps", OPT_REAL, "N", "link", .to = &v.mbps, .rmin = 0.001, .rmax = 1e6},
        {"node-id", OPT_STRING, "NAME", "name", .to = &v.node, .dflt = "hostname"},
        {"llm", OPT_URL, "URL", "engine", .to = &v.url, .choices = schemes},
        {"kv-type", OPT_ENUM, "T", "type", .to = &v.kind, .choices = kinds, .dflt = "f16"},
        {"dir", OPT_PATH, "DIR", "folder", .to = &v.dir},
        {"verbose", OPT_FLAG, NULL, "more", .to = &v.verbose},
        {"quiet", OPT_FLAG, NULL, "less", .to = &v.quiet},
        {"node", OPT_CALL, "URL", "repeatable", .call = count_call},
        {0},
    };
    const opt *tables[] = {t, NULL};
    /* stderr into a file, to read the message back */
    char path[] = "/tmp/dc-opts-err-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    int rc = opts_parse("t", tables, argc, argv, max_args, NULL, r);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, err, errlen - 1, 0);
    err[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return rc;
}

/* Parses "t ARGS..." (NULL-ended); returns the status, the message in err. */
static int parse(char *err, size_t errlen, ...) {
    char *argv[32] = {"t"};
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    for (char *a; argc < 31 && (a = va_arg(ap, char *));) argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    opts_result r;
    int rc = parse_in(argc, argv, 0, &r, err, errlen);
    opts_free(&r);
    return rc;
}

static void takes_each_kind(void **state) {
    (void)state;
    char err[512];
    assert_int_equal(parse(err, sizeof err, "--port", "9000", "--session-ttl=1d", "--sync-timeout", "1s", "--max-body",
                           "64K", "--spill-mib", "2G", "--mbps", "2.5", "--node-id", "edge-1", "--llm",
                           "http://u:p@h:1", "--kv-type", "q8_0", "--dir", "/x", "--verbose", "--node", "a", "--node",
                           "b", NULL),
                     0);
    assert_int_equal(v.port, 9000);
    assert_int_equal(v.ttl_s, 86400);
    assert_int_equal(v.wait_ms, 1000);
    assert_int_equal(v.body, 65536);
    assert_int_equal(v.mib, 2048);
    assert_true(v.mbps == 2.5);
    assert_string_equal(v.node, "edge-1");
    assert_string_equal(v.url, "http://u:p@h:1");
    assert_string_equal(v.kind, "q8_0");
    assert_string_equal(v.dir, "/x");
    assert_true(v.verbose);
    assert_int_equal(v.calls, 2);
    /* plain numbers mean the option's own unit */
    assert_int_equal(parse(err, sizeof err, "--session-ttl", "90", "--sync-timeout", "250", "--spill-mib", "0",
                           "--max-body", "100", NULL),
                     0);
    assert_int_equal(v.ttl_s, 90);
    assert_int_equal(v.wait_ms, 250);
    assert_int_equal(v.mib, 0);
    assert_int_equal(v.body, 100);
    assert_int_equal(
        parse(err, sizeof err, "--session-ttl", "2h", "--sync-timeout", "10m", "--spill-mib", "512MiB", NULL), 0);
    assert_int_equal(v.ttl_s, 7200);
    assert_int_equal(v.wait_ms, 600000);
    assert_int_equal(v.mib, 512);
}

static void refuses_with_the_option_and_its_form(void **state) {
    (void)state;
    static const struct {
        const char *arg, *value, *says;
    } bad[] = {
        {"--port", "abc", "t: --port: \"abc\" is not an integer in 0..65535"},
        {"--port", "-1", "--port: \"-1\" is not an integer in 0..65535"},
        {"--port", "65536", "--port: \"65536\" is not an integer"},
        {"--port", "80x", "--port: \"80x\""},
        {"--port", "", "--port: \"\""},
        {"--port", " 80", "--port: \" 80\""},
        {"--session-ttl", "1x", "--session-ttl: \"1x\" is not a duration of 0..1099511627776 seconds"},
        {"--session-ttl", "1500ms", "--session-ttl: \"1500ms\" is not a duration"}, /* not whole seconds */
        {"--session-ttl", "-5", "--session-ttl: \"-5\""},
        {"--sync-timeout", "2h", "--sync-timeout: \"2h\" is not a duration of 0..3600000 milliseconds"},
        {"--spill-mib", "100K", "--spill-mib: \"100K\" is not a size of 0..16777216 MiB"},
        {"--max-body", "0", "--max-body: \"0\" is not a size"},
        {"--max-body", "1Q", "--max-body: \"1Q\""},
        {"--mbps", "0", "--mbps: \"0\" is not a number in 0.001..1e+06"},
        {"--mbps", "fast", "--mbps: \"fast\""},
        {"--kv-type", "f32", "--kv-type: \"f32\" is not one of f16|q8_0"},
        {"--llm", "ftp://secret@x", "--llm: expected a URL http://... or https://..."},
        {"--node-id", "", "--node-id: needs a value"},
        {"--node", "bad", "--node: \"bad\" is refused"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(parse(err, sizeof err, bad[i].arg, bad[i].value, NULL), 2);
        if (!strstr(err, bad[i].says)) fail_msg("%s %s: %s", bad[i].arg, bad[i].value, err);
    }
    assert_null(strstr(err, "secret")); /* a URL is never echoed: it may hold a password */
    assert_int_equal(parse(err, sizeof err, "--llm", "ftp://secret@x", NULL), 2);
    assert_null(strstr(err, "secret"));
    assert_int_equal(parse(err, sizeof err, "--no-such", "1", NULL), 2);
    assert_non_null(strstr(err, "unknown option --no-such"));
    assert_int_equal(parse(err, sizeof err, "--no-such=1", NULL), 2);
    assert_non_null(strstr(err, "unknown option --no-such "));
    assert_int_equal(parse(err, sizeof err, "--por", "1", NULL), 2); /* no prefixes */
    assert_int_equal(parse(err, sizeof err, "-p", "1", NULL), 2);
    assert_int_equal(parse(err, sizeof err, "--port", NULL), 2);
    assert_non_null(strstr(err, "--port needs a value"));
    assert_int_equal(parse(err, sizeof err, "--verbose=yes", NULL), 2);
    assert_int_equal(parse(err, sizeof err, "stray", NULL), 2);
    assert_non_null(strstr(err, "unexpected argument \"stray\""));
    assert_int_equal(parse(err, sizeof err, "--help", NULL), 1);
    assert_int_equal(parse(err, sizeof err, "--port", "1", "-h", NULL), 1);
}

static void arguments_and_the_end_of_options(void **state) {
    (void)state;
    char err[512];
    char *argv[] = {"t", "a.yaml", "--port", "1", "--", "--port", NULL};
    opts_result r;
    assert_int_equal(parse_in(6, argv, 2, &r, err, sizeof err), 0);
    assert_int_equal(r.n_args, 2);
    assert_string_equal(r.args[0], "a.yaml");
    assert_string_equal(r.args[1], "--port");
    assert_int_equal(v.port, 1);
    opts_free(&r);
}

static char *temp_file(const char *text) {
    static char path[64];
    strcpy(path, "/tmp/dc-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* The format of cli.c's configuration files before the tables (test_api's
 * config_files then), kept: "name = value", "name value", quotes, comments,
 * bare flags and "flag = false"; the command line wins. */
static void config_files(void **state) {
    (void)state;
    char err[512], arg[128];
    char *path = temp_file("# a node\nport = 9000\n node-id \"edge 1\"  # its name\nverbose\nquiet = false\n"
                           "session-ttl = 2d\n");
    char *argv[] = {"t", "--config", path, "--port", "9001", NULL};
    opts_result r;
    assert_int_equal(parse_in(5, argv, 0, &r, err, sizeof err), 0);
    assert_int_equal(v.port, 9001); /* the command line comes after the file: it wins */
    assert_string_equal(v.node, "edge 1");
    assert_true(v.verbose);
    assert_false(v.quiet);
    assert_int_equal(v.ttl_s, 2 * 86400);
    opts_free(&r);
    snprintf(arg, sizeof arg, "--config=%s", path);
    char *argv2[] = {"t", arg, NULL};
    assert_int_equal(parse_in(2, argv2, 0, &r, err, sizeof err), 0);
    assert_int_equal(v.port, 9000);
    opts_free(&r);
    static const struct {
        const char *text, *says;
    } bad[] = {{"nope = 1\n", "unknown setting \"nope\""},
               {"port\n", "port needs a value"},
               {"verbose = maybe\n", "verbose: is a flag"},
               {"config = x\n", "unknown setting \"config\""},
               {"# x\nport = abc\n", ":2: port: \"abc\" is not an integer in 0..65535"},
               {"session-ttl = 1y\n", "session-ttl: \"1y\" is not a duration"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        FILE *f = fopen(path, "w");
        fputs(bad[i].text, f);
        fclose(f);
        assert_int_equal(parse_in(2, argv2, 0, &r, err, sizeof err), 2);
        if (!strstr(err, bad[i].says)) fail_msg("config %zu: %s", i, err);
        opts_free(&r);
    }
    unlink(path);
    char *missing[] = {"t", "--config", "/nonexistent/x.conf", NULL};
    assert_int_equal(parse_in(3, missing, 0, &r, err, sizeof err), 2);
    assert_non_null(strstr(err, "cannot read the configuration file /nonexistent/x.conf"));
    opts_free(&r);
}

static void help_lists_every_row(void **state) {
    (void)state;
    char err[512];
    char *argv[] = {"t", "--help", NULL};
    opts_result r;
    /* stdout into a file */
    char path[] = "/tmp/dc-opts-out-XXXXXX";
    int fd = mkstemp(path);
    fflush(stdout);
    int saved = dup(1);
    dup2(fd, 1);
    int rc = parse_in(2, argv, 0, &r, err, sizeof err);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    opts_free(&r);
    char out[8192];
    ssize_t n = pread(fd, out, sizeof out - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    assert_int_equal(rc, 1);
    static const char *says[] = {"A heading.",
                                 "  --port N              TCP port (default 8080)",
                                 "--session-ttl SECS",
                                 "(default 86400s)",
                                 "--sync-timeout MS",
                                 "(default 2000ms)",
                                 "--max-body BYTES",
                                 "(default 1048576)",
                                 "--spill-mib N",
                                 "(default 1024MiB)",
                                 "(default 100)",
                                 "--node-id NAME",
                                 "(default hostname)",
                                 "--llm URL",
                                 "--kv-type T",
                                 "(default f16)",
                                 "--dir DIR",
                                 "--verbose",
                                 "--quiet",
                                 "--node URL"};
    for (size_t i = 0; i < sizeof says / sizeof *says; i++)
        if (!strstr(out, says[i])) fail_msg("--help lacks \"%s\":\n%s", says[i], out);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
        if (strlen(line) > 80) fail_msg("--help line over 80 columns: %s", line);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(takes_each_kind),
        cmocka_unit_test(refuses_with_the_option_and_its_form),
        cmocka_unit_test(arguments_and_the_end_of_options),
        cmocka_unit_test(config_files),
        cmocka_unit_test(help_lists_every_row),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
