/* store_driver.c - drives the NATS store itself against a real nats-server,
 * for the races of issue 14 that HTTP cannot time (items 7, 8, 9, 11).
 *
 * Why a program and not a node: each race needs a commit, a delete or a sweep
 * to land inside a window a few milliseconds wide (between a read and the
 * publish that depends on it). Here the window is held open on purpose: with
 * the store's fault hook (DC_FAULT_BURY_PAUSE_MS, nats.c), by pausing the
 * nats-server (SIGSTOP) while a publish is in flight, or by committing
 * through a second store handle, which is what a second node is.
 *
 * usage: store_driver CASE NATS_URL [CORE_DOMAIN | NATS_SERVER_PID]
 * Prints one line "ok: ..." or "FAIL: ..." and exits 0 or 1. The Python side
 * (test_hardening_store.py) starts the servers and runs one case per test. */

#include <dirent.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "store/store.h"
#include "util/clock.h"

static const char *url, *core_domain;
static char keygroup[32];

static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return 1;
}

static store *open_nats(int64_t ttl_ms) {
    store_params p = store_default_params();
    p.url = url;
    p.keygroup = keygroup;
    p.ttl_ms = ttl_ms;
    p.core_domain = core_domain;
    char err[512];
    store *s = store_open(&p, err, sizeof err);
    if (!s) {
        printf("FAIL: store_open: %s\n", err);
        exit(1);
    }
    return s;
}

static session_meta meta_of(const char *user, uint32_t turn, int64_t created_ms, int64_t last_ms) {
    session_meta m = {
        .mode = MODE_TOKENIZED, .turn = turn, .created_ms = created_ms, .last_ms = last_ms, .fingerprint = 77};
    snprintf(m.user_id, sizeof m.user_id, "%s", user);
    snprintf(m.model, sizeof m.model, "m");
    return m;
}

/* Commits turn m->turn with n_tok token ids in its reply (m->rev as the
 * caller read it; updated on success). */
static store_status commit(store *s, const char *sid, session_meta *m, size_t n_tok) {
    turn_rec t = {.kind = TURN_TOKENS, .turn = m->turn, .fingerprint = 77};
    for (size_t i = 0; i < n_tok; i++) tokvec_push(&t.tok[SEG_REPLY], (int32_t)(m->turn * 1000 + i % 1000));
    int32_t user = (int32_t)m->turn;
    tokvec_append(&t.tok[SEG_USER], &user, 1);
    store_status st = store_turn_commit(s, sid, m, &t);
    turn_rec_free(&t);
    return st;
}

/* Commits turns 1..n of a life of user, last active at last_ms. */
static store_status life(store *s, const char *sid, const char *user, uint32_t n, int64_t last_ms, size_t n_tok) {
    session_meta m = meta_of(user, 1, last_ms, last_ms);
    for (uint32_t t = 1; t <= n; t++) {
        m.turn = t;
        store_status st = commit(s, sid, &m, n_tok);
        if (st != STORE_OK) return st;
    }
    return STORE_OK;
}

/* The session's turn numbers as a string "1,2,..." (or the status). */
static store_status load_turns(store *s, const char *sid, session_meta *m, char *out, size_t n) {
    turn_rec *turns = NULL;
    store_status st = store_session_load(s, sid, STORE_WANT_LATEST, m, &turns);
    out[0] = '\0';
    if (st != STORE_OK) {
        snprintf(out, n, "%s (%s)", store_status_str(st), store_last_error());
        return st;
    }
    for (uint32_t i = 0; i < m->turn; i++)
        snprintf(out + strlen(out), n - strlen(out), "%s%u", i ? "," : "", turns[i].turn);
    store_turns_free(turns, m->turn);
    return st;
}

/* --- item 7: the sweep and a turn that lands while it works -------------- */

typedef struct {
    store *s;
    const char *sid;
    long expired;
    store_status deleted;
} sweeper;

static void *sweep_thread(void *arg) {
    sweeper *w = arg;
    w->expired = store_expire(w->s, clock_wall_ms());
    return NULL;
}

static void *delete_thread(void *arg) {
    sweeper *w = arg;
    w->deleted = store_session_delete(w->s, w->sid);
    return NULL;
}

/* A session idle past the TTL; the sweep reads it, and while it pauses
 * before its tombstone the id starts over (turn 1 of a new life, acknowledged
 * to its client). The sweep must not bury that turn. */
static int sweep_spares_a_turn_just_committed(void) {
    const int64_t ttl = 60 * 1000;
    store *s = open_nats(ttl), *other = open_nats(ttl);
    const char *sid = "swept";
    int64_t now = clock_wall_ms();
    if (life(s, sid, "alice", 2, now - 2 * ttl, 4) != STORE_OK) return fail("setup: %s", store_last_error());
    sweeper w = {.s = s};
    pthread_t th;
    pthread_create(&th, NULL, sweep_thread, &w);
    clock_sleep_ms(300); /* the sweep has judged the session idle and pauses (DC_FAULT_BURY_PAUSE_MS) */
    session_meta m = meta_of("bob", 1, clock_wall_ms(), clock_wall_ms());
    store_status st = commit(other, sid, &m, 4);
    pthread_join(th, NULL);
    if (st != STORE_OK) return fail("turn 1 of the new life: %s", store_status_str(st));
    char got[256];
    session_meta lm;
    store_status ls = load_turns(other, sid, &lm, got, sizeof got);
    store_close(s);
    store_close(other);
    if (ls != STORE_OK || lm.turn != 1 || strcmp(lm.user_id, "bob") != 0)
        return fail("the acknowledged turn 1 was buried by the sweep (sweep removed %ld): %s", w.expired, got);
    printf("ok: the sweep removed %ld, the new life's turn 1 is there (%s)\n", w.expired, got);
    return 0;
}

/* DELETE appends its tombstone, and before it purges, the id starts over
 * with turns 1 and 2. The purge must leave the new life whole. */
static int purge_after_tombstone_keeps_the_new_life(void) {
    store *s = open_nats(0), *other = open_nats(0);
    const char *sid = "purged";
    int64_t now = clock_wall_ms();
    if (life(s, sid, "alice", 2, now, 4) != STORE_OK) return fail("setup: %s", store_last_error());
    sweeper w = {.s = s, .sid = sid};
    pthread_t th;
    pthread_create(&th, NULL, delete_thread, &w);
    session_meta m;
    /* the tombstone is in: the delete now pauses before its purge */
    while (store_meta_get(other, sid, &m) == STORE_OK) clock_sleep_ms(20);
    store_status st = life(other, sid, "alice", 2, clock_wall_ms(), 4);
    pthread_join(th, NULL);
    if (st != STORE_OK || w.deleted != STORE_OK)
        return fail("new life: %s, delete: %s", store_status_str(st), store_status_str(w.deleted));
    char got[256];
    store *fresh = open_nats(0); /* no cache: what the stream holds */
    store_status ls = load_turns(fresh, sid, &m, got, sizeof got);
    store_close(s);
    store_close(other);
    store_close(fresh);
    if (ls != STORE_OK || strcmp(got, "1,2") != 0) return fail("after the purge the new life reads as: %s", got);
    printf("ok: the new life reads as %s\n", got);
    return 0;
}

/* --- item 8: a commit on a context read from an earlier life -------------- */

/* Node A reads turn 2 of alice's session. Meanwhile the session is deleted
 * and bob starts the same id over, up to turn 2. A commits turn 3 from its
 * read, through a handle with no cached entry of the session (evicted, or
 * another process): it must be refused as stale, and bob's session stay. */
static int commit_needs_the_life_it_read(void) {
    store *a = open_nats(0), *b = open_nats(0);
    const char *sid = "reborn";
    if (life(a, sid, "alice", 2, clock_wall_ms(), 4) != STORE_OK) return fail("setup: %s", store_last_error());
    session_meta read;
    char got[256];
    if (load_turns(a, sid, &read, got, sizeof got) != STORE_OK) return fail("read: %s", got);
    if (store_session_delete(b, sid) != STORE_OK) return fail("delete: %s", store_last_error());
    if (life(b, sid, "bob", 2, clock_wall_ms(), 4) != STORE_OK) return fail("bob: %s", store_last_error());
    store *a2 = open_nats(0); /* node A with no cache entry of the session */
    session_meta next = read;
    next.turn = 3;
    next.last_ms = clock_wall_ms();
    store_status st = commit(a2, sid, &next, 4);
    session_meta m;
    store_status ls = load_turns(b, sid, &m, got, sizeof got);
    store_close(a);
    store_close(a2);
    store_close(b);
    if (st == STORE_OK)
        return fail("turn 3 of alice's old life was committed on bob's session (now %s, owner %s)", got, m.user_id);
    if (ls != STORE_OK || m.turn != 2 || strcmp(m.user_id, "bob") != 0)
        return fail("bob's session changed: %s, owner %s", got, m.user_id);
    printf("ok: refused with %s; bob's session is %s\n", store_status_str(st), got);
    return 0;
}

/* --- item 9: a publish whose acknowledgement is lost ----------------------- */

static pid_t server_pid;
static volatile int committing;

/* True once every thread of the server is stopped: kill() only queues the
 * signal, and a server thread still running could answer the publish. */
static bool server_stopped(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)server_pid);
    DIR *d = opendir(path);
    if (!d) return false;
    bool all = true;
    for (struct dirent *e; all && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char stat[400], buf[256] = "";
        snprintf(stat, sizeof stat, "%s/%s/stat", path, e->d_name);
        FILE *f = fopen(stat, "r");
        if (f) {
            if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
            fclose(f);
        }
        const char *state = strrchr(buf, ')'); /* "pid (comm) S ..." */
        all = state && state[1] == ' ' && (state[2] == 'T' || state[2] == 't');
    }
    closedir(d);
    return all;
}

static void *resume_thread(void *arg) {
    (void)arg;
    while (!committing) clock_sleep_ms(5);
    /* well past the 5 s JetStream timeout of the first try (the second is
     * sent 250 ms after it), well before the second try's own timeout */
    const char *ms = getenv("DRV_RESUME_MS");
    clock_sleep_ms(ms ? atoi(ms) : 7500);
    kill(server_pid, SIGCONT);
    return NULL;
}

/* The nats-server stops (SIGSTOP) with turn 2's publish in its socket: the
 * node's wait for the acknowledgement times out. Then the server goes on and
 * stores the turn. The commit must answer that the turn is committed, not
 * "unavailable" (which tells the client to send it again as new). */
static int lost_ack_is_settled(void) {
    store *s = open_nats(0);
    const char *sid = "unacked";
    if (life(s, sid, "alice", 1, clock_wall_ms(), 4) != STORE_OK) return fail("setup: %s", store_last_error());
    session_meta m;
    char got[256];
    if (load_turns(s, sid, &m, got, sizeof got) != STORE_OK) return fail("read: %s", got);
    m.turn = 2;
    m.last_ms = clock_wall_ms();
    pthread_t th;
    pthread_create(&th, NULL, resume_thread, NULL);
    kill(server_pid, SIGSTOP);
    while (!server_stopped()) clock_sleep_ms(1);
    committing = 1;
    store_status st = commit(s, sid, &m, 4);
    pthread_join(th, NULL);
    store *fresh = open_nats(0);
    store_status ls = load_turns(fresh, sid, &m, got, sizeof got);
    store_close(s);
    store_close(fresh);
    if (ls != STORE_OK) return fail("read back: %s", got);
    if (st != STORE_OK)
        return fail("commit answered %s (%s) though the stream has turns %s", store_status_str(st), store_last_error(),
                    got);
    if (strcmp(got, "1,2") != 0) return fail("the stream has turns %s", got);
    printf("ok: committed once, the stream has turns %s\n", got);
    return 0;
}

/* --- item 11: earlier lives on a leaf mirror ------------------------------- */

static size_t heap_in_use(void) {
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks;
}

/* Five lives of one id, each idle past the TTL before the next starts (no
 * tombstones: purges on the core do not reach mirrors), then a live one;
 * every reply 20000 tokens. A node with nothing cached reads it from its
 * mirror: what it walked over of the earlier lives must be freed, and
 * dropped from the mirror so that the next miss does not walk it again (the
 * Python side counts the mirror's messages afterwards). */
/* Until this node's mirror shows turn 2 of sid (reads with want 0 stay on
 * the mirror). */
static bool mirror_shows(const char *sid, int64_t ttl) {
    for (int i = 0; i < 1200; i++) {
        store *r = open_nats(ttl);
        session_meta m;
        turn_rec *turns = NULL;
        bool ready = store_session_load(r, sid, 0, &m, &turns) == STORE_OK && m.turn == 2;
        store_turns_free(turns, ready ? m.turn : 0);
        store_close(r);
        if (ready) return true;
        clock_sleep_ms(50);
    }
    return false;
}

static int earlier_lives_are_freed_and_reclaimed(void) {
    const int64_t ttl = 60 * 1000;
    store *w = open_nats(ttl);
    const char *sid = "lives";
    int64_t now = clock_wall_ms();
    /* a new mirror takes a moment to start following the core */
    if (life(w, "single", "alice", 2, now, 20000) != STORE_OK) return fail("single: %s", store_last_error());
    if (!mirror_shows("single", ttl)) return fail("the mirror never showed the first session");
    for (int k = 0; k < 5; k++)
        if (life(w, sid, "alice", 2, now - 2 * ttl, 20000) != STORE_OK)
            return fail("life %d: %s", k, store_last_error());
    if (life(w, sid, "alice", 2, now, 20000) != STORE_OK) return fail("live: %s", store_last_error());
    if (life(w, "marker", "alice", 2, now, 1) != STORE_OK) return fail("marker: %s", store_last_error());
    store_close(w);
    /* the mirror has every life once it has the marker, committed last */
    if (!mirror_shows("marker", ttl)) return fail("the mirror never showed the marker");
    char got[256];
    session_meta m;
    /* warm up the allocator and the client library on a one-life session */
    store *r = open_nats(ttl);
    store_status st = load_turns(r, "single", &m, got, sizeof got);
    store_close(r);
    if (st != STORE_OK) return fail("single: %s", got);
    size_t before = heap_in_use();
    r = open_nats(ttl);
    st = load_turns(r, sid, &m, got, sizeof got);
    store_close(r);
    size_t after = heap_in_use();
    long grown = (long)after - (long)before;
    if (st != STORE_OK || strcmp(got, "1,2") != 0) return fail("the live life reads as %s", got);
    /* a reply of an earlier life left behind is 20000 ids, 80 KB */
    if (grown > 32 * 1024) return fail("reading it left %ld bytes allocated", grown);
    printf("ok: read as %s; heap grew by %ld bytes\n", got, grown);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: store_driver CASE NATS_URL [CORE_DOMAIN | NATS_SERVER_PID]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *c = argv[1];
    url = argv[2];
    /* a keygroup (stream) of its own per run: cases never see each other */
    snprintf(keygroup, sizeof keygroup, "drv%d", (int)getpid());
    printf("stream DISCEDGE_%s subjects dce.%s.t.\n", keygroup, keygroup);
    if (!strcmp(c, "sweep")) return sweep_spares_a_turn_just_committed();
    if (!strcmp(c, "purge")) return purge_after_tombstone_keeps_the_new_life();
    if (!strcmp(c, "reborn")) return commit_needs_the_life_it_read();
    if (!strcmp(c, "unacked")) {
        if (argc < 4) return 2;
        server_pid = (pid_t)atoi(argv[3]);
        return lost_ack_is_settled();
    }
    if (!strcmp(c, "lives")) {
        if (argc < 4) return 2;
        core_domain = argv[3];
        return earlier_lives_are_freed_and_reclaimed();
    }
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
}
