/* fakes.h - a scripted LLM and an in-memory store behind the llm.h and
 * store.h contracts, so that the context manager's turn protocol (ctx.c)
 * runs in unit tests in microseconds, without a model or a disk.
 *
 * The LLM (fake_llm.c). A byte tokenizer: every byte of text is the token
 * of its value; with special parsing, the markup "[S]" "[U]" "[A]" "[/]" is
 * one control token each (FAKE_TOK_SYS..FAKE_TOK_END), and FAKE_TOK_BOS
 * starts a conversation. Its chat template renders a message as
 * "[U]content[/]" ("[S]" system, "[A]" assistant), the assistant prefix as
 * "[A]", so the end-of-turn markup is the one token "[/]" and a tokenized
 * turn's body is len(message) + 3 user tokens (BOS and "[S]..." belong to
 * the system segment), the reply's bytes and one end token. Replies come
 * from a script, in order ("ok" once it runs out); a generation can be
 * scripted to fail (LLM_CANCELLED stands for a caller gone during one:
 * alive is not polled), and a hook can run inside one (a racing writer,
 * time passing). What each generation was fed is kept.
 *
 * The store (fake_store.c). One core (the authoritative copy, shared by
 * every node handle opened on it) and, per node handle, a replica: what
 * that node reads. A node's own commits and deletes reach its replica at
 * once; another node's reach it only when the test says (fake_store_sync),
 * when store_wait is scripted to see them arrive, or after a number of
 * re-reads. store_wait never sleeps: it returns at once, having seen the
 * turn or not (a timeout), and records the timeout it was given. Commits
 * are compare-and-set on the revision read, as the NATS store's; leaf:
 * a read whose replica has less than `want` asks the core (nats.c). */
#ifndef DC_TEST_FAKES_H
#define DC_TEST_FAKES_H

#include <stdbool.h>
#include <stdint.h>

#include "llm/llm.h"
#include "store/store.h"
#include "store/store_impl.h" /* struct store, which fake_store embeds */

enum { FAKE_TOK_SYS = 256, FAKE_TOK_USER, FAKE_TOK_ASSISTANT, FAKE_TOK_END, FAKE_TOK_BOS, FAKE_VOCAB };

typedef struct {
    /* script */
    const char *replies[32]; /* consumed in order; NULL or past the end: "ok" */
    int next_reply;
    llm_status fail;         /* the next generation returns this (LLM_OK: none), once */
    llm_status admit;        /* what llm_admit says (LLM_OK unless set) */
    void (*during)(void *ud); /* runs once inside the next generation, then is cleared */
    void *during_ud;
    /* record */
    int generations;         /* generations run (scripted failures included) */
    tokvec last_input;       /* what the last generation was fed */
    int renders;             /* apply_template calls */
} fake_llm;

/* An llm of n_ctx tokens and the given fingerprint over a new fake_llm
 * (*fake; freed with the llm). */
llm *fake_llm_open(int n_ctx, uint64_t fingerprint, fake_llm **fake);

/* The text of toks (specials as their markup, BOS as "<s>"), for asserts. */
void fake_llm_text(const tokvec *toks, strbuf *out);

typedef struct fake_core fake_core;

typedef struct {
    store base; /* first: a store * is a fake_store * */
    fake_core *core;
    void *replica; /* the sessions as this node sees them */
    /* script */
    bool leaf;            /* a read short of `want` asks the core */
    bool core_down;       /* the core cannot be reached: commits and core reads are STORE_UNAVAILABLE */
    bool wait_sees;       /* store_wait sees the turn arrive (the replica catches up); else it times out */
    int sync_after_loads; /* > 0: the replica catches up after this many more reads */
    /* record */
    int loads, core_loads, commits, waits, meta_gets;
    int wait_timeout_ms;  /* the timeout the last store_wait was given */
} fake_store;

fake_core *fake_core_new(int64_t ttl_ms);
void fake_core_free(fake_core *core);
/* A node's handle on core (closed with store_close). */
fake_store *fake_store_open(fake_core *core);
/* The replica catches up with the core: every commit and delete made
 * through other handles reaches this node. */
void fake_store_sync(fake_store *fs);
/* Moves the session's last activity back by ms in the core (time passes
 * for the TTL without a clock). */
void fake_core_age(fake_core *core, const char *sid, int64_t ms);

#endif
