/* engine.c - continuous batching with KV-cache reuse over one llama.cpp
 * context.
 *
 * Why: the paper's prototype prefilled the whole conversation on every turn
 * and served one client at a time. Prefill dominates a turn as the history
 * grows, and on a CPU one decoding sequence leaves the cores waiting on
 * memory. So the context holds several sequences ("slots"), each in its own
 * KV stream (kv_unified = false: attention then spans only that sequence's
 * cells, not every cached conversation's), and one thread drives them all.
 *
 * A slot remembers the tokens whose KV it holds. A request takes the free
 * slot sharing the longest prefix with its input (ties: least recently
 * used, so a new conversation evicts the oldest), drops the slot's KV past
 * that prefix and prefills only the rest. Nothing about sessions is needed
 * here: a turn of a session extends the tokens of its previous turn, so its
 * own slot matches, and any mismatch (a turn served by another node, an
 * evicted slot) simply matches less and prefills more. Correct first, fast
 * second. One mismatch is common enough to handle: a conversation past its
 * window loses its oldest turns from the middle of its input, and the slot
 * then removes those cells and shifts the rest into place instead of
 * prefilling the window again (plan_reuse).
 *
 * Owners: a slot (and a spilled state) also remembers whose KV it holds
 * (llm_gen_params.owner), and only a request of the same owner sees its
 * prefix; for anyone else it counts as 0. Otherwise the prefix length a
 * reply reports (cache_n, cached_tokens), its prefill time, and the choice
 * of slot itself (a probe matching a victim's system prompt would take and
 * truncate the victim's slot) tell one user, token by token, whether a
 * guess of another user's prompt is right. docs/SECURITY.md says what is
 * left (queueing and eviction, which depend on load, not on content).
 *
 * Spill: the context has only the sequences that generate at once (one
 * KV stream each, a full window, reserved up front). A conversation pushed
 * out of its sequence for another keeps its KV in the spill (spill.c), in
 * exactly the bytes its tokens need: in memory for the --kv-cache-sessions
 * the node keeps, on disk for the rest, and comes back when a request
 * extends it again: loading a state costs a copy, far less than
 * prefilling the same tokens (bench/RESULTS.md has both measured). So
 * resident KV follows the tokens kept, not the conversations times the
 * window. The engine thread does the copies and the file I/O, outside the
 * lock, between steps.
 *
 * Warm-up (llm_warm): a conversation served elsewhere can be prefilled
 * here before its client arrives, so that its next turn here prefills only
 * the new message. It is the lowest priority work there is: it runs only
 * while no request is active or queued, warm_chunk tokens per step, and
 * the loop looks at the queue again after every step, so a request that
 * arrives waits for one chunk at most. A warm-up is no job and holds no
 * slot: each step looks again for the slot of that owner holding the
 * most of its tokens, as a request would (plan_reuse: a prefix, or one
 * with a range shifted out; a request may have taken the slot meanwhile,
 * or extended it past what warming wanted: then there is nothing left to
 * do), so a warm-up preempted at any point resumes where the KV stands, and
 * warming a conversation again after its next turn only extends it. Slots
 * it fills are flagged `warm` until a request uses them; at most
 * warm_sessions are, the rest of the slots stay the live conversations'
 * (a warm-up past the bound replaces the least recently warmed one). A
 * warmed slot unused for warm_window_ms is evicted before any other, and
 * llm_forget wipes an owner's KV at once (a deleted session).
 *
 * Each step of the loop decodes one batch: one token for every generating
 * request and prompt chunks of the requests still prefilling, up to n_batch
 * tokens, in sequence-id order (step() says why). Logits are valid only
 * until the next llama_decode, so each request samples right after the step
 * that produced its logits.
 *
 * Threads: callers enqueue a job (on their own stack) and wait on a
 * condition variable, polling their alive() callback so a client that went
 * away frees its slot. Only the engine thread touches llama.cpp; job fields
 * other than `cancel` and `state` belong to it until the job is DONE, and
 * those two are read and written under `mu`.
 *
 * Size: this file is longer than most because it is one state machine.
 * Admission, preparation (reuse, shift, spill and restore), the decode
 * step, warm-up and KV transfer all decide what a sequence holds, and they
 * share the slots' invariants (whose KV, which tokens, busy or not, shift
 * pending) that nothing else may see; split across files those would have
 * to be exported. What is a job of its own, keeping states outside the
 * context, is in spill.c. */
#include "engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../util/clock.h"
#include "../util/log.h"
#include "spill.h"

typedef enum { JOB_QUEUED, JOB_PREFILL, JOB_DECODE, JOB_DONE } job_state;

typedef struct job {
    const int32_t *in;
    size_t n;
    llm_gen_params gp;
    tokvec *out;
    llm_timings *t;
    struct llama_sampler *smpl;
    job_state state;
    bool cancel;
    llm_status rc;
    char err[160];
    int slot;
    uint64_t restore; /* id of a spilled state to load into the slot first, or 0 */
    bool prepared;    /* the slot holds this job's reusable prefix and nothing after it */
    int32_t next;     /* sampled and not yet decoded */
    int n_fed;        /* tokens this job put in the current batch */
    bool ended;       /* done (rc says how); engine_main finishes it */
    int logits_at;    /* batch index of its logits in the current batch, or -1 */
    double t_queued, t_admit;
    uint64_t warm0;   /* warm-up chunks decoded when it was queued (stats.warm_chunks) */
    size_t out_n0;    /* out->n on entry, to roll back on failure */
    struct job *qnext;
} job;

typedef struct {
    tokvec toks; /* the tokens whose KV this sequence holds: positions 0..n-1 */
    char *owner; /* whose they are (engine thread); NULL: nobody's to reuse */
    job *busy;
    uint64_t used; /* LRU tick */
    /* engine thread: filled by warm-up and not used by a request since;
     * when it was last warmed, and the prefill time it cost */
    bool warm;
    double warm_at, warm_ms;
} slot;

/* A conversation to warm: owner and tokens (copies). */
typedef struct {
    char *owner;
    tokvec toks;
    double at; /* when asked (monotonic ms) */
} warm_req;

struct engine {
    engine_params p;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    llama_memory_t mem;
    struct llama_batch batch;
    slot *slots;
    job **active;
    int n_active;
    job *q_head, *q_tail;
    int n_queued;
    uint64_t tick;
    double svc_ms; /* a sequence's recent time per request, admit to done (moving average); 0: none yet */
    llm_stats stats;
    bool can_shift;     /* the memory can move a sequence's positions (plan_reuse) */
    int n_swa;          /* the model's sliding window (0: none) */
    bool shift_pending; /* a slot_shift that no llama_decode has applied yet (engine thread) */
    llama_logit_bias *no_eog; /* -inf on every end-of-generation token, for ignore_eos */
    int n_eog;
    /* engine thread only */
    spill *sp;      /* conversations' KV pushed out of their sequences */
    warm_req wcur;  /* the warm-up being prefilled (owner NULL: none) */
    struct {
        uint64_t done, tokens, used, unused, chunks;
        double ms, unused_ms;
    } wst; /* warm-up counters, copied into stats under mu */
    /* under mu: warm-ups asked for (oldest first) and owners to forget */
    warm_req *wq;
    int n_wq;
    char **forget;
    int n_forget;
    bool warming; /* wcur is set (for stats) */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the engine: work arrived or stop */
    pthread_cond_t done; /* callers: a job finished (or time to poll alive) */
    pthread_t thread;
    bool stop;
    struct ctl *c_head, *c_tail; /* control jobs (KV transfer), under mu; run by the engine thread */
};

static struct llama_sampler *sampler_new(const engine *e, const llm_gen_params *p) {
    struct llama_sampler *s = llama_sampler_chain_init(llama_sampler_chain_default_params());
    if (p->ignore_eos)
        llama_sampler_chain_add(s, llama_sampler_init_logit_bias(llama_vocab_n_tokens(e->vocab), e->n_eog, e->no_eog));
    if (p->temperature <= 0.0f) {
        llama_sampler_chain_add(s, llama_sampler_init_greedy());
        return s;
    }
    if (p->top_k > 0) llama_sampler_chain_add(s, llama_sampler_init_top_k(p->top_k));
    if (p->top_p < 1.0f) llama_sampler_chain_add(s, llama_sampler_init_top_p(p->top_p, 1));
    llama_sampler_chain_add(s, llama_sampler_init_temp(p->temperature));
    llama_sampler_chain_add(s, llama_sampler_init_dist(p->seed));
    return s;
}

/* KV is shared only between requests of one owner (see the top). */
static bool same_owner(const char *kept, const char *asker) { return kept && asker && *asker && !strcmp(kept, asker); }

static size_t common_prefix(const tokvec *a, const int32_t *b, size_t n) {
    size_t i = 0, lim = a->n < n ? a->n : n;
    while (i < lim && a->v[i] == b[i]) i++;
    return i;
}

/* How a kept sequence S (a slot's tokens, or a spilled state's) serves an
 * input I: its first `a` tokens as they are (the common prefix), then,
 * when cut > 0, the cells [a, a+cut) removed and the `len` tokens after
 * them, S[a+cut .. a+cut+len) == I[a .. a+len), shifted down by cut into
 * place. a + len tokens of I are reused.
 *
 * This is what a conversation past its window needs: the context manager
 * drops its oldest whole turns (ctx.c), so the input becomes [system]
 * [turns first..n-1][new message] while the slot holds [system][turns
 * 0..n-1][reply]: the prefix ends after the system message, and all the
 * rest is still there, one range further on. llama-server's context shift
 * does the same (llama_memory_seq_rm, then llama_memory_seq_add).
 *
 * The shifted cells are not bit for bit what a fresh prefill of the
 * shorter input computes: their K is rotated to the new positions (RoPE
 * composes, up to rounding in the cache's f16), and their values were
 * computed while the removed tokens were in view. test_llm measures how
 * far that moves the logits against the suite's noise floor. */
typedef struct {
    size_t a, cut, len;
} reuse_plan;

/* A shift must reuse at least this many tokens. Every turn starts with the
 * same template markup ("<|im_start|>user\n"), so short matches further on
 * are coincidences, not a conversation's turns; and a shift costs a RoPE
 * pass over the sequence's K cells at the next decode and the approximation
 * above, so a few tokens are not worth it. A dropped turn is worth a
 * conversation's whole window. */
#define SHIFT_MIN 32
/* Token comparisons one plan may spend looking for the shifted match. It
 * runs under mu in admit(), once per free slot and per spilled state, so
 * it must stay cheap whatever the tokens: a real conversation's match
 * starts at a turn's first token and runs to S's end in one pass (about
 * the window), and the false starts at the other turns' markup stop
 * within a few tokens; only crafted repetitive input gets near the bound,
 * and then it just reuses less. 1<<16 comparisons take well under 0.1 ms. */
#define MATCH_WORK (1u << 16)

static reuse_plan plan_reuse(const engine *e, const tokvec *s, const int32_t *in, size_t n) {
    reuse_plan p = {.a = common_prefix(s, in, n)};
    /* Memory that cannot move positions gets the prefix only:
     * llama_memory_can_shift says no for M-RoPE models and for an
     * interleaved sliding-window cache (Gemma 3) whose SWA part is smaller
     * than its full part. And even where the two are the same size (a
     * window under n_swa + n_ubatch), llama.cpp's SWA cache lets a cell
     * go once it is n_swa positions behind the sequence's end (find_slot
     * reuses it, a saved state leaves it out); the shift brings the cells
     * before the cut closer, and the turn would then attend without cells
     * a fresh prefill has. A sequence that never reached n_swa positions
     * lost none, so it may shift; a longer one prefills as before. */
    if (!e->can_shift || (e->n_swa > 0 && s->n >= (size_t)e->n_swa) || p.a >= n || p.a >= s->n) return p;
    size_t work = 0;
    /* the best start is the earliest whose match runs to S's end; a later
     * start can only match less than what is left after it */
    for (size_t b = p.a + 1; b < s->n && s->n - b > p.len && s->n - b >= SHIFT_MIN && work < MATCH_WORK; b++) {
        work++;
        if (s->v[b] != in[p.a]) continue;
        size_t l = 1, lim = s->n - b < n - p.a ? s->n - b : n - p.a;
        while (l < lim && s->v[b + l] == in[p.a + l]) l++;
        work += l;
        if (l > p.len) {
            p.len = l;
            p.cut = b - p.a;
        }
        if (b + l == s->n) break;
    }
    if (p.len < SHIFT_MIN) p.len = p.cut = 0;
    return p;
}

/* Tokens of in a kept sequence s can serve (plan_reuse): how admit() and
 * warm-up rank slots and spilled states. */
static size_t reusable(const engine *e, const tokvec *s, const int32_t *in, size_t n) {
    reuse_plan p = plan_reuse(e, s, in, n);
    return p.a + p.len;
}

static void slot_truncate(engine *e, int s, size_t keep) {
    slot *sl = &e->slots[s];
    if (keep >= sl->toks.n) return;
    /* a partial removal can fail for memory types that cannot cut a
     * sequence (recurrent models): then the sequence starts over */
    if (!llama_memory_seq_rm(e->mem, s, (llama_pos)keep, -1)) {
        llama_memory_seq_rm(e->mem, s, -1, -1);
        keep = 0;
    }
    sl->toks.n = keep;
}

/* Removes the cells [a, a+cut) of slot s and moves those after them down
 * by cut, so that they sit at the positions the input gives them. The K
 * rotation itself runs in llama.cpp at the next llama_decode (and until
 * then the slot's state must not be saved: shift_pending). Memory that
 * cannot cut a range from a sequence's middle keeps the prefix only. */
static void slot_shift(engine *e, int s, size_t a, size_t cut) {
    slot *sl = &e->slots[s];
    if (!llama_memory_seq_rm(e->mem, s, (llama_pos)a, (llama_pos)(a + cut))) {
        slot_truncate(e, s, a);
        return;
    }
    llama_memory_seq_add(e->mem, s, (llama_pos)(a + cut), -1, -(llama_pos)cut);
    memmove(sl->toks.v + a, sl->toks.v + a + cut, (sl->toks.n - a - cut) * sizeof *sl->toks.v);
    sl->toks.n -= cut;
    e->shift_pending = true;
}

/* Under mu. Marks j finished; the caller may return as soon as mu drops. */
static void job_finish(engine *e, job *j, llm_status rc) {
    j->rc = rc;
    if (rc != LLM_OK) j->out->n = j->out_n0;
    if (rc == LLM_CANCELLED) {
        snprintf(j->err, sizeof j->err, "the client went away");
        e->stats.cancelled++;
    }
    if (j->state != JOB_QUEUED) {
        e->stats.requests++;
        e->stats.kv_hits += j->t->cached_n > 0;
        e->stats.cached_tokens += (uint64_t)j->t->cached_n;
        e->stats.prefilled_tokens += (uint64_t)j->t->prompt_n;
        e->stats.prompt_ms += j->t->prompt_ms;
        e->slots[j->slot].busy = NULL;
        e->slots[j->slot].used = ++e->tick;
        j->t->predicted_ms = j->t->predicted_n ? clock_mono_ms() - j->t_admit - j->t->prompt_ms : 0;
        /* the pace Retry-After is estimated from: recent requests weigh
         * most, as the mix of prompt and reply lengths drifts */
        if (rc == LLM_OK) {
            double svc = clock_mono_ms() - j->t_admit;
            e->svc_ms = e->svc_ms > 0 ? 0.8 * e->svc_ms + 0.2 * svc : svc;
        }
    }
    if (j->smpl) llama_sampler_free(j->smpl);
    j->smpl = NULL;
    e->stats.generated_tokens += (uint64_t)j->t->predicted_n;
    j->state = JOB_DONE;
    pthread_cond_broadcast(&e->done);
}

/* --- spill (engine thread only; see the top and spill.c) --- */

/* Keeps slot s's KV in the spill before the slot is reused, without
 * pushing out spill entry keep (0: none): the one the slot takes next.
 * Failures only cost the cache entry. */
static void slot_spill(engine *e, int s, uint64_t keep) {
    /* llama.cpp writes a cell's new position but its K as it was until
     * the shift runs (at the next decode): such a state would be wrong.
     * The flag is the engine's, not the slot's (another slot shifted in
     * the same step skips this save too): a skipped save only costs a
     * cache entry, and a shift is rare. */
    if (e->shift_pending) return;
    const slot *sl = &e->slots[s];
    spill_save(e->sp, e->ctx, s, sl->owner, sl->toks.v, sl->toks.n, keep);
}

/* Loads spill entry i into slot s (emptied first); the entry goes. On
 * failure the slot stays empty. */
static void slot_restore(engine *e, int i, int s) {
    slot *sl = &e->slots[s];
    llama_memory_seq_rm(e->mem, s, -1, -1);
    sl->toks.n = 0;
    spill_restore(e->sp, i, e->ctx, s, &sl->toks);
}

/* --- warm-up (see the top) --- */

static void warm_req_free(warm_req *w) {
    free(w->owner);
    tokvec_free(&w->toks);
    *w = (warm_req){0};
}

/* A slot stops being a warmed one: a request took it (counted as a warm-up
 * used when the request is the owner's) or warm-up gave it up. */
static void slot_unwarm(engine *e, int s, bool used) {
    slot *sl = &e->slots[s];
    if (!sl->warm) return;
    if (used) {
        e->wst.used++;
    } else {
        e->wst.unused++;
        e->wst.unused_ms += sl->warm_ms;
    }
    sl->warm = false;
    sl->warm_ms = 0;
}

/* Under mu (admit): slot s goes to a request of owner. */
static void slot_claim(engine *e, int s, const char *owner) { slot_unwarm(e, s, same_owner(e->slots[s].owner, owner)); }

static void slot_wipe(engine *e, int s) {
    slot *sl = &e->slots[s];
    llama_memory_seq_rm(e->mem, s, -1, -1);
    sl->toks.n = 0;
    free(sl->owner);
    sl->owner = NULL;
}

/* Engine thread: drops every KV of the owners asked to be forgotten, in
 * slots and on disk, and the warm-up under way for them. A slot a request
 * is using is left to it (its owner's own turn). Also retires the warmed
 * slots unused for warm_window_ms: they stay as KV, but count as the
 * first to evict. */
static void apply_forgets(engine *e, char **owners, int n) {
    for (int k = 0; k < n; k++) {
        for (int s = 0; s < e->p.n_slots; s++) {
            if (e->slots[s].busy || !same_owner(e->slots[s].owner, owners[k])) continue;
            slot_unwarm(e, s, false);
            slot_wipe(e, s);
        }
        for (int i = spill_n(e->sp) - 1; i >= 0; i--)
            if (same_owner(spill_at(e->sp, i)->owner, owners[k])) spill_drop(e->sp, i);
        if (same_owner(e->wcur.owner, owners[k])) warm_req_free(&e->wcur);
        free(owners[k]);
    }
    free(owners);
    double now = clock_mono_ms();
    for (int s = 0; s < e->p.n_slots; s++)
        if (e->slots[s].warm && !e->slots[s].busy && now - e->slots[s].warm_at > e->p.warm_window_ms) {
            slot_unwarm(e, s, false);
            e->slots[s].used = 0; /* the first to go */
        }
}

/* The slot a warm-up of w starts in, when no slot holds a prefix of it:
 * an empty one, else the least recently used; but while warm_sessions
 * slots are warmed already, the least recently used of those, so that
 * warm-up never takes more of the cache than it is given. */
static int warm_victim(engine *e) {
    int n_warm = 0;
    for (int s = 0; s < e->p.n_slots; s++) n_warm += e->slots[s].warm;
    bool among_warm = n_warm >= e->p.warm_sessions;
    int best = -1;
    for (int s = 0; s < e->p.n_slots; s++) {
        const slot *sl = &e->slots[s];
        if (sl->busy || (among_warm && !sl->warm)) continue;
        if (best < 0 || (sl->toks.n == 0) > (e->slots[best].toks.n == 0) ||
            ((sl->toks.n == 0) == (e->slots[best].toks.n == 0) && sl->used < e->slots[best].used))
            best = s;
    }
    return best;
}

static void prepare(engine *e, job *j);
static void batch_add(struct llama_batch *b, int32_t tok, size_t pos, int seq, bool logits);

/* Engine thread, no request active: one chunk of the warm-up under way. */
static void warm_step(engine *e) {
    warm_req *w = &e->wcur;
    double t0 = clock_mono_ms();
    if (t0 - w->at > e->p.warm_window_ms) { /* asked too long ago to matter */
        warm_req_free(w);
        return;
    }
    /* where the owner's KV of these tokens stands now (see the top) */
    int at = -1;
    size_t have = 0;
    for (int s = 0; s < e->p.n_slots; s++) {
        if (e->slots[s].busy || !same_owner(e->slots[s].owner, w->owner)) continue;
        size_t p = reusable(e, &e->slots[s].toks, w->toks.v, w->toks.n);
        if (at < 0 || p > have) {
            at = s;
            have = p;
        }
    }
    if (at >= 0 && have >= w->toks.n) { /* all there: a request or an earlier warm-up did it */
        warm_req_free(w);
        e->wst.done++;
        return;
    }
    if (at < 0 || have == 0 || e->slots[at].toks.n != have) {
        /* start (or restart) in a slot of its own, through the same
         * preparation as a request: what the slot held is spilled when
         * worth it, a spilled state of this owner is restored when it
         * covers more, and the slot ends up holding this owner's longest
         * reusable prefix and nothing else */
        if (at < 0 || have == 0) {
            at = warm_victim(e);
            /* a warmed conversation it replaces is warm-up's own, within
             * its bound: dropped, not spilled, so that warm-ups never push
             * the live conversations' KV out of memory */
            if (at >= 0 && e->slots[at].warm) {
                slot_unwarm(e, at, false);
                slot_wipe(e, at);
            }
        }
        if (at < 0) { /* every slot warmed and busy: try again later */
            warm_req_free(w);
            return;
        }
        llm_timings t = {0};
        tokvec none = {0};
        job j = {.in = w->toks.v,
                 .n = w->toks.n,
                 .gp = {.cache_prompt = true, .owner = w->owner},
                 .t = &t,
                 .out = &none,
                 .slot = at};
        for (int i = 0; i < spill_n(e->sp); i++) {
            const spill_entry *x = spill_at(e->sp, i);
            if (!same_owner(x->owner, w->owner)) continue;
            size_t p = reusable(e, &x->toks, w->toks.v, w->toks.n);
            if (p >= have + (size_t)e->p.spill_min) {
                have = p;
                j.restore = x->id;
            }
        }
        if (!e->slots[at].warm) e->slots[at].warm_ms = 0;
        prepare(e, &j);
        have = e->slots[at].toks.n;
    }
    slot *sl = &e->slots[at];
    struct llama_batch *b = &e->batch;
    b->n_tokens = 0;
    size_t take = w->toks.n - have;
    if (take > (size_t)e->p.warm_chunk) take = (size_t)e->p.warm_chunk;
    if (take > (size_t)e->p.n_batch) take = (size_t)e->p.n_batch;
    for (size_t k = 0; k < take; k++) batch_add(b, w->toks.v[have + k], have + k, at, have + k + 1 == w->toks.n);
    int dr = llama_decode(e->ctx, *b);
    e->shift_pending = false; /* as in step() */
    double ms = clock_mono_ms() - t0;
    e->wst.ms += ms;
    if (dr != 0) {
        log_warn("engine: warm-up decode returned %d; dropping it", dr);
        slot_unwarm(e, at, false);
        slot_wipe(e, at);
        warm_req_free(w);
        return;
    }
    tokvec_append(&sl->toks, w->toks.v + have, take);
    e->wst.tokens += take;
    e->wst.chunks++;
    sl->warm = true;
    sl->warm_at = w->at;
    sl->warm_ms += ms;
    sl->used = ++e->tick;
    if (sl->toks.n >= w->toks.n) {
        warm_req_free(w);
        e->wst.done++;
    }
}

/* Under mu: the pending warm-up of owner, or -1; and removing entry i. */
static int wq_find(const engine *e, const char *owner) {
    for (int i = 0; i < e->n_wq; i++)
        if (!strcmp(e->wq[i].owner, owner)) return i;
    return -1;
}

static void wq_remove(engine *e, int i) {
    if (i < 0 || i >= e->n_wq) return;
    warm_req_free(&e->wq[i]);
    memmove(&e->wq[i], &e->wq[i + 1], (size_t)(e->n_wq - i - 1) * sizeof *e->wq);
    e->n_wq--;
}

bool engine_warm(engine *e, const char *owner, const int32_t *toks, size_t n) {
    if (e->stats.warm_sessions <= 0 || !owner || !*owner || n == 0 || n >= (size_t)e->p.n_ctx_seq) return false;
    warm_req w = {.owner = dc_xstrdup(owner), .at = clock_mono_ms()};
    tokvec_append(&w.toks, toks, n);
    pthread_mutex_lock(&e->mu);
    /* one pending warm-up per owner (the newest tokens win), and no more
     * pending than may be kept */
    wq_remove(e, wq_find(e, owner));
    if (e->n_wq >= e->p.warm_sessions) wq_remove(e, 0);
    e->wq = dc_xrealloc(e->wq, (size_t)(e->n_wq + 1) * sizeof *e->wq);
    e->wq[e->n_wq++] = w;
    e->stats.warm_requests++;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    return true;
}

void engine_forget(engine *e, const char *owner) {
    if (!owner || !*owner) return;
    pthread_mutex_lock(&e->mu);
    wq_remove(e, wq_find(e, owner));
    e->forget = dc_xrealloc(e->forget, (size_t)(e->n_forget + 1) * sizeof *e->forget);
    e->forget[e->n_forget++] = dc_xstrdup(owner);
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

/* Under mu: moves queued jobs onto free slots. It only chooses; the KV
 * work (spill, restore, truncation) is prepare()'s, outside the lock. */
static void admit(engine *e) {
    while (e->n_active < e->p.n_parallel && e->q_head) {
        job *j = e->q_head;
        e->q_head = j->qnext;
        if (!e->q_head) e->q_tail = NULL;
        e->n_queued--;
        if (j->cancel) {
            job_finish(e, j, LLM_CANCELLED);
            continue;
        }
        bool reuse = e->p.reuse && j->gp.cache_prompt;
        int best = -1;
        size_t best_p = 0;
        for (int s = 0; s < e->p.n_slots; s++) {
            if (e->slots[s].busy) continue;
            bool mine = reuse && same_owner(e->slots[s].owner, j->gp.owner);
            size_t p = mine ? reusable(e, &e->slots[s].toks, j->in, j->n) : 0;
            if (best < 0 || p > best_p || (p == best_p && e->slots[s].used < e->slots[best].used)) {
                best = s;
                best_p = p;
            }
        }
        /* n_slots >= n_parallel, so a free slot exists. A spilled state is
         * worth loading when it covers clearly more than the best slot. */
        j->restore = 0;
        for (int i = 0; reuse && i < spill_n(e->sp); i++) {
            const spill_entry *x = spill_at(e->sp, i);
            if (!same_owner(x->owner, j->gp.owner)) continue;
            size_t p = reusable(e, &x->toks, j->in, j->n);
            if (p >= best_p + (size_t)e->p.spill_min) {
                best_p = p;
                j->restore = x->id;
            }
        }
        j->slot = best;
        j->prepared = false;
        slot_claim(e, best, j->gp.owner);
        e->slots[best].busy = j;
        e->slots[best].used = ++e->tick;
        j->state = JOB_PREFILL;
        j->t_admit = clock_mono_ms();
        j->t->queue_ms = j->t_admit - j->t_queued;
        /* the bound warm-up keeps (see the top): checked by the tests */
        uint64_t waited = e->stats.warm_chunks - j->warm0;
        if (waited > e->stats.warm_wait_chunks_max) e->stats.warm_wait_chunks_max = waited;
        j->smpl = sampler_new(e, &j->gp);
        e->active[e->n_active++] = j;
    }
}

/* Engine thread, without mu: leaves in j's slot exactly the longest prefix
 * of j's input it can reuse, shifting a range out first when that reuses
 * more (plan_reuse). Whatever else the slot held is spilled first when
 * that is worth it (spill on, and at least spill_min tokens lost). A
 * restored state is planned, and shifted, the same way. */
static void prepare(engine *e, job *j) {
    slot *sl = &e->slots[j->slot];
    bool reuse = e->p.reuse && j->gp.cache_prompt, spill = spill_on(e->sp) && reuse;
    reuse_plan rp = {0};
    if (reuse && same_owner(sl->owner, j->gp.owner)) rp = plan_reuse(e, &sl->toks, j->in, j->n);
    /* (KV nobody may reuse is not worth keeping) */
    if (spill && sl->owner && sl->toks.n >= rp.a + rp.len + (size_t)e->p.spill_min) slot_spill(e, j->slot, j->restore);
    /* the entry chosen at admission may be gone: another job took it first
     * (the save above never pushes it out) */
    int entry = j->restore ? spill_find(e->sp, j->restore) : -1;
    if (entry >= 0) {
        slot_restore(e, entry, j->slot);
        rp = plan_reuse(e, &sl->toks, j->in, j->n);
    }
    if (rp.cut) slot_shift(e, j->slot, rp.a, rp.cut);
    size_t keep = rp.cut ? rp.a + rp.len : rp.a;
    if (keep >= j->n) keep = j->n - 1; /* the last input token must run again for its logits */
    slot_truncate(e, j->slot, keep);
    /* what stays is j's owner's (or nothing); what j computes will be too */
    free(sl->owner);
    sl->owner = j->gp.owner && *j->gp.owner ? dc_xstrdup(j->gp.owner) : NULL;
    j->t->cached_n = (int)sl->toks.n;
    j->t->prompt_n = (int)(j->n - sl->toks.n);
    j->prepared = true;
}

static void batch_add(struct llama_batch *b, int32_t tok, size_t pos, int seq, bool logits) {
    int i = b->n_tokens++;
    b->token[i] = tok;
    b->pos[i] = (llama_pos)pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}

/* Appends j's tokens for this step: its last sampled token when decoding,
 * or up to *room tokens of its input when prefilling. */
static void feed(engine *e, job *j, int *room) {
    struct llama_batch *b = &e->batch;
    j->n_fed = 0;
    j->logits_at = -1;
    if (j->state == JOB_DECODE) {
        j->logits_at = b->n_tokens;
        batch_add(b, j->next, e->slots[j->slot].toks.n, j->slot, true);
        j->n_fed = 1;
        return;
    }
    size_t from = e->slots[j->slot].toks.n, take = j->n - from;
    if (take > (size_t)*room) take = (size_t)*room;
    for (size_t k = 0; k < take; k++) {
        bool last = from + k + 1 == j->n;
        if (last) j->logits_at = b->n_tokens;
        batch_add(b, j->in[from + k], from + k, j->slot, last);
    }
    j->n_fed = (int)take;
    *room -= (int)take;
}

/* One llama_decode over every active job, without mu (only this thread
 * touches the jobs' working fields and llama.cpp). Jobs that end get
 * j->ended, and engine_main finishes them.
 *
 * Tokens go into the batch in sequence-id order. With one KV stream per
 * sequence, llama.cpp cuts a batch into micro-batches of consecutive,
 * increasing sequence ids (split_equal, "sequential"), and every
 * micro-batch is a whole pass over the weights: in the order jobs happened
 * to arrive, 16 decoding sessions cost up to 16 passes per step instead of
 * one (bench/RESULTS.md). Every decoding job gets its token; prefill chunks
 * share what is left of n_batch. */
static void step(engine *e) {
    struct llama_batch *b = &e->batch;
    b->n_tokens = 0;
    int decoding = 0;
    for (int i = 0; i < e->n_active; i++) {
        job *j = e->active[i];
        if (!j->prepared) prepare(e, j);
        decoding += j->state == JOB_DECODE;
    }
    int room = e->p.n_batch - decoding;
    for (int s = 0; s < e->p.n_slots; s++)
        if (e->slots[s].busy) feed(e, e->slots[s].busy, &room);
    if (b->n_tokens == 0) return;

    int dr = llama_decode(e->ctx, *b);
    e->shift_pending = false; /* llama_decode applies pending shifts first, whatever the batch holds */
    for (int i = 0; i < e->n_active; i++) {
        job *j = e->active[i];
        if (!j->n_fed) continue;
        slot *sl = &e->slots[j->slot];
        if (dr != 0) {
            /* what this batch left in the sequence is unknown: start it over */
            llama_memory_seq_rm(e->mem, j->slot, -1, -1);
            sl->toks.n = 0;
            snprintf(j->err, sizeof j->err, "llama_decode returned %d", dr);
            j->rc = LLM_FAIL;
            j->ended = true;
            continue;
        }
        if (j->state == JOB_DECODE) tokvec_push(&sl->toks, j->next);
        else tokvec_append(&sl->toks, j->in + sl->toks.n, (size_t)j->n_fed);
        if (j->logits_at < 0) continue;
        if (j->state == JOB_PREFILL) {
            j->t->prompt_ms = clock_mono_ms() - j->t_admit;
            j->state = JOB_DECODE;
        }
        if (j->gp.on_logits)
            j->gp.on_logits(j->gp.on_logits_ud, llama_get_logits_ith(e->ctx, j->logits_at),
                            llama_vocab_n_tokens(e->vocab));
        int32_t tok = llama_sampler_sample(j->smpl, e->ctx, j->logits_at);
        if (llama_vocab_is_eog(e->vocab, tok)) {
            j->t->stopped_eog = true;
            j->t->eog_token = tok;
            j->rc = LLM_OK;
            j->ended = true;
            continue;
        }
        tokvec_push(j->out, tok);
        if (j->gp.on_token) j->gp.on_token(j->gp.on_token_ud, tok);
        j->t->predicted_n++;
        if (j->t->predicted_n >= j->gp.n_predict || sl->toks.n + 1 >= (size_t)e->p.n_ctx_seq) {
            j->t->stopped_limit = true;
            j->rc = LLM_OK;
            j->ended = true;
            continue;
        }
        j->next = tok;
    }
}

/* Under mu: finishes the active jobs that ended (or whose client left). */
static void reap(engine *e, bool cancelled_only) {
    for (int i = e->n_active - 1; i >= 0; i--) {
        job *j = e->active[i];
        if (cancelled_only ? !j->cancel : !j->ended) continue;
        job_finish(e, j, cancelled_only ? LLM_CANCELLED : j->rc);
        e->active[i] = e->active[--e->n_active];
    }
}

/* --- KV transfer between nodes (issue 15): control jobs -----------------
 *
 * A node that must serve a session it holds no KV for may load the KV of
 * the session's stored prefix from the node that served the previous turn
 * (ctx.c, api/peer.c). The engine's part is three small jobs on its own
 * thread, run between steps (engine_main), so that they never race a live
 * request on a sequence: llama.cpp is only ever touched by this thread, and
 * a busy slot is never read or written by them.
 *   held:   the longest prefix of T whose KV this owner has here (slots or
 *           spill), so the caller knows whether a transfer could help;
 *   export: the state of the owner's slot or spilled entry whose tokens are
 *           the longest *whole* prefix of T. An entry holding tokens past
 *           its common prefix with T is never handed out, not trimmed:
 *           trimming would cut a live cache entry (or copy a whole state to
 *           cut it), and an entry that diverges from the stored tokens is
 *           not the session's stored prefix anyway. A slot holds a turn's
 *           input and generated tokens, which the stored tokens extend (they
 *           add the turn-end markup), so after a turn its slot qualifies.
 *   import: loads a state into a free slot at once (the LRU one, whose KV
 *           is spilled first when that is worth it, as prepare() does), so
 *           that llama_state_seq_set_data and the positions it left are
 *           checked now, and the next request of that owner extending the
 *           tokens finds the slot through admit() as any cached prefix: no
 *           new path in admission. (Not a spill file: those are checked
 *           only when restored, and a state that fails then costs a
 *           prefill without anyone being told.) Refused when every slot is
 *           busy or KV reuse is off. */
typedef enum { CTL_HELD, CTL_EXPORT, CTL_IMPORT } ctl_kind;

typedef struct ctl {
    ctl_kind kind;
    const char *owner;
    const int32_t *toks; /* T (held, export) or the state's tokens (import) */
    size_t n;
    const void *state; /* import */
    size_t state_n;
    strbuf *out;  /* export: the state bytes are appended */
    size_t result; /* tokens held, exported or imported */
    int rc;        /* 0, or -1 with err */
    char err[160];
    bool done;
    struct ctl *next;
} ctl;

/* Under mu: the control jobs queued now. */
static ctl *ctl_take(engine *e) {
    ctl *c = e->c_head;
    e->c_head = e->c_tail = NULL;
    return c;
}

/* Under mu: hands finished control jobs back (their callers may return at once). */
static void ctl_finish(engine *e, ctl *c) {
    if (!c) return;
    while (c) {
        ctl *next = c->next;
        c->done = true;
        c = next;
    }
    pthread_cond_broadcast(&e->done);
}

/* Whether the whole of toks is a prefix of T. */
static bool whole_prefix(const tokvec *toks, const int32_t *t, size_t n) {
    return toks->n > 0 && toks->n <= n && common_prefix(toks, t, n) == toks->n;
}

static void ctl_held(engine *e, ctl *c) {
    size_t best = 0;
    for (int s = 0; s < e->p.n_slots; s++)
        if (same_owner(e->slots[s].owner, c->owner)) {
            size_t p = common_prefix(&e->slots[s].toks, c->toks, c->n);
            if (p > best) best = p;
        }
    for (int i = 0; i < spill_n(e->sp); i++)
        if (same_owner(spill_at(e->sp, i)->owner, c->owner)) {
            size_t p = common_prefix(&spill_at(e->sp, i)->toks, c->toks, c->n);
            if (p > best) best = p;
        }
    c->result = best;
    c->rc = 0;
}

static void ctl_export(engine *e, ctl *c) {
    int from = -1, entry = -1;
    size_t best = 0;
    /* a slot's state is wrong until a pending shift has run (slot_spill) */
    for (int s = 0; s < e->p.n_slots && !e->shift_pending; s++) {
        const slot *sl = &e->slots[s];
        if (!sl->busy && same_owner(sl->owner, c->owner) && whole_prefix(&sl->toks, c->toks, c->n) &&
            sl->toks.n > best) {
            best = sl->toks.n;
            from = s;
        }
    }
    for (int i = 0; i < spill_n(e->sp); i++) {
        const spill_entry *x = spill_at(e->sp, i);
        if (same_owner(x->owner, c->owner) && whole_prefix(&x->toks, c->toks, c->n) && x->toks.n > best) {
            best = x->toks.n;
            entry = i;
            from = -1;
        }
    }
    c->rc = -1;
    if (!best) {
        snprintf(c->err, sizeof c->err, "no KV of this session's stored tokens here");
        return;
    }
    bool ok;
    if (from >= 0) {
        size_t size = llama_state_seq_get_size(e->ctx, from), at = c->out->n;
        strbuf_reserve(c->out, at + size + 1);
        ok = size && llama_state_seq_get_data(e->ctx, (uint8_t *)c->out->s + at, size, from) == size;
        if (ok) c->out->n = at + size;
    } else {
        ok = spill_read(e->sp, entry, c->out);
    }
    if (!ok) {
        snprintf(c->err, sizeof c->err, "cannot read the sequence state");
        return;
    }
    c->result = best;
    c->rc = 0;
}

static void ctl_import(engine *e, ctl *c) {
    c->rc = -1;
    if (!e->p.reuse) {
        snprintf(c->err, sizeof c->err, "KV reuse is off here (--kv-cache-sessions 0)");
        return;
    }
    if (c->n == 0 || c->n >= (size_t)e->p.n_ctx_seq || !c->owner || !*c->owner) {
        snprintf(c->err, sizeof c->err, "a state of %zu tokens does not fit a sequence of %d", c->n, e->p.n_ctx_seq);
        return;
    }
    int s = -1;
    for (int i = 0; i < e->p.n_slots; i++)
        if (!e->slots[i].busy && (s < 0 || e->slots[i].used < e->slots[s].used)) s = i;
    if (s < 0) {
        snprintf(c->err, sizeof c->err, "every sequence is busy");
        return;
    }
    slot *sl = &e->slots[s];
    if (spill_on(e->sp) && sl->owner && sl->toks.n >= (size_t)e->p.spill_min) slot_spill(e, s, 0);
    slot_unwarm(e, s, false);
    slot_wipe(e, s);
    /* llama.cpp checks the state's layout against this context (layers,
     * KV types, row sizes, cell count); the positions it restored must be
     * exactly 0..n-1, one per token the header names */
    bool ok = llama_state_seq_set_data(e->ctx, c->state, c->state_n, s) == c->state_n &&
        llama_memory_seq_pos_min(e->mem, s) == 0 && llama_memory_seq_pos_max(e->mem, s) == (llama_pos)c->n - 1;
    if (!ok) {
        llama_memory_seq_rm(e->mem, s, -1, -1);
        snprintf(c->err, sizeof c->err, "the state does not load into this context");
        return;
    }
    tokvec_append(&sl->toks, c->toks, c->n);
    sl->owner = dc_xstrdup(c->owner);
    sl->used = ++e->tick; /* the most recently used: the request it is for comes next */
    c->result = c->n;
    c->rc = 0;
}

/* Engine thread, without mu. */
static void ctl_run(engine *e, ctl *c) {
    for (; c; c = c->next) {
        if (c->kind == CTL_HELD) ctl_held(e, c);
        else if (c->kind == CTL_EXPORT) ctl_export(e, c);
        else ctl_import(e, c);
    }
}

static void *engine_main(void *arg) {
    engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->stop && !e->n_active && !e->q_head && !e->n_forget && !e->n_wq && !e->wcur.owner && !e->c_head)
            pthread_cond_wait(&e->wake, &e->mu);
        if (e->stop) break;
        admit(e);
        reap(e, true); /* a client that went away leaves between steps */
        char **forget = e->forget;
        int n_forget = e->n_forget;
        e->forget = NULL;
        e->n_forget = 0;
        struct ctl *cl = ctl_take(e);
        /* warm-up only on an idle engine (see the top), oldest asked first */
        bool warm = !e->n_active && !e->q_head && (e->wcur.owner || e->n_wq);
        if (warm && !e->wcur.owner) {
            e->wcur = e->wq[0];
            memmove(&e->wq[0], &e->wq[1], (size_t)(e->n_wq - 1) * sizeof *e->wq);
            e->n_wq--;
        }
        pthread_mutex_unlock(&e->mu);
        /* (its sweep of stale warmed slots matters only to warm-up's own
         * choices: not on every decode step) */
        if (n_forget || warm) apply_forgets(e, forget, n_forget);
        ctl_run(e, cl);
        if (e->n_active) step(e);
        else if (warm && e->wcur.owner) warm_step(e);
        pthread_mutex_lock(&e->mu);
        ctl_finish(e, cl);
        spill_stats ss;
        spill_stats_get(e->sp, &ss);
        e->stats.spill_saves = ss.saves;
        e->stats.spill_restores = ss.restores;
        e->stats.spill_bytes = ss.disk_bytes;
        e->stats.kv_parked = ss.n_mem;
        e->stats.kv_parked_bytes = ss.mem_bytes;
        e->stats.kv_parked_tokens = ss.mem_tokens;
        e->stats.kv_slot_tokens = 0;
        for (int s = 0; s < e->p.n_slots; s++) e->stats.kv_slot_tokens += e->slots[s].toks.n;
        e->stats.warm_done = e->wst.done;
        e->stats.warm_tokens = e->wst.tokens;
        e->stats.warm_used = e->wst.used;
        e->stats.warm_unused = e->wst.unused;
        e->stats.warm_ms = e->wst.ms;
        e->stats.warm_unused_ms = e->wst.unused_ms;
        e->stats.warm_chunks = e->wst.chunks;
        e->warming = e->wcur.owner != NULL;
        int n_warm = 0;
        for (int s = 0; s < e->p.n_slots; s++) n_warm += e->slots[s].warm;
        e->stats.warm_slots = n_warm;
        reap(e, false);
    }
    for (int i = 0; i < e->n_active; i++) {
        snprintf(e->active[i]->err, sizeof e->active[i]->err, "the LLM service is shutting down");
        job_finish(e, e->active[i], LLM_FAIL);
    }
    e->n_active = 0;
    for (job *j = e->q_head; j; j = e->q_head) {
        e->q_head = j->qnext;
        snprintf(j->err, sizeof j->err, "the LLM service is shutting down");
        job_finish(e, j, LLM_FAIL);
    }
    e->q_tail = NULL;
    e->n_queued = 0;
    ctl_finish(e, ctl_take(e)); /* not run: they fail */
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

engine *engine_new(struct llama_context *ctx, const struct llama_vocab *vocab, const engine_params *p) {
    if (p->n_parallel < 1 || p->n_slots < p->n_parallel || p->n_queue < 0 || p->n_batch < 1) return NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->p = *p;
    if (e->p.warm_chunk < 1) e->p.warm_chunk = 128;
    if (e->p.warm_window_ms <= 0) e->p.warm_window_ms = 600e3;
    e->ctx = ctx;
    e->vocab = vocab;
    e->mem = llama_get_memory(ctx);
    e->can_shift = llama_memory_can_shift(e->mem);
    e->n_swa = llama_model_n_swa(llama_get_model(ctx));
    e->batch = llama_batch_init(p->n_batch, 0, 1);
    e->slots = calloc((size_t)p->n_slots, sizeof *e->slots);
    e->active = calloc((size_t)p->n_parallel, sizeof *e->active);
    e->stats.n_slots = p->n_slots;
    e->stats.warm_sessions = p->reuse ? p->warm_sessions : 0;
    spill_params sp = spill_default_params();
    /* the conversations kept beyond the sequences (see the top) */
    sp.mem_max = p->reuse && p->kv_sessions > p->n_slots ? p->kv_sessions - p->n_slots : 0;
    sp.dir = p->spill_dir;
    sp.disk_budget = p->spill_dir ? p->spill_budget : 0;
    e->sp = spill_new(&sp);
    /* spill_min weighs a save or a restore against prefilling the tokens
     * it saves: a file's I/O needs a few dozen of them, a copy in memory
     * (a tenth of a microsecond a byte) is worth any single one; and a
     * kept conversation must stay kept, however short */
    if (sp.mem_max > 0) e->p.spill_min = 1;
    int nv = llama_vocab_n_tokens(vocab);
    for (int i = 0; i < nv; i++) e->n_eog += llama_vocab_is_eog(vocab, i);
    e->no_eog = calloc((size_t)e->n_eog + 1, sizeof *e->no_eog);
    for (int i = 0, k = 0; i < nv; i++)
        if (llama_vocab_is_eog(vocab, i)) e->no_eog[k++] = (llama_logit_bias){i, -INFINITY};
    e->stats.n_parallel = p->n_parallel;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->done, &ca);
    pthread_condattr_destroy(&ca);
    if (!e->slots || !e->active || !e->sp || pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        spill_free(e->sp);
        free(e->slots);
        free(e->active);
        free(e->no_eog);
        llama_batch_free(e->batch);
        free(e);
        return NULL;
    }
    return e;
}

void engine_free(engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    spill_free(e->sp);
    warm_req_free(&e->wcur);
    for (int i = 0; i < e->n_wq; i++) warm_req_free(&e->wq[i]);
    free(e->wq);
    for (int i = 0; i < e->n_forget; i++) free(e->forget[i]);
    free(e->forget);
    for (int s = 0; s < e->p.n_slots; s++) {
        tokvec_free(&e->slots[s].toks);
        free(e->slots[s].owner);
    }
    free(e->slots);
    free(e->active);
    free(e->no_eog);
    llama_batch_free(e->batch);
    pthread_cond_destroy(&e->done);
    pthread_cond_destroy(&e->wake);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* Under mu: a request arriving now would be refused. The queue counts
 * requests beyond the free sequences. */
static bool engine_full(const engine *e) {
    return e->stop || e->n_queued >= e->p.n_queue + (e->p.n_parallel - e->n_active);
}

/* Under mu: seconds until the requests queued now have all reached a
 * sequence, at the recent pace (n_parallel sequences, each svc_ms a
 * request). A refused client told this comes back when there is room
 * again rather than spinning on 429s; clamped to [1, 60] so that one
 * slow outlier does not send clients away for minutes. */
static unsigned engine_retry_after_s(const engine *e) {
    double ms = e->svc_ms > 0 ? e->n_queued * e->svc_ms / e->p.n_parallel : 1000;
    unsigned s = (unsigned)(ms / 1000.0 + 0.999);
    return s < 1 ? 1 : s > 60 ? 60 : s;
}

llm_status engine_generate(engine *e, const int32_t *input, size_t n, const llm_gen_params *p, tokvec *out,
                           llm_timings *t, char *err, size_t errlen) {
    job j = {.in = input,
             .n = n,
             .gp = *p,
             .out = out,
             .t = t,
             .state = JOB_QUEUED,
             .out_n0 = out->n,
             .t_queued = clock_mono_ms()};
    pthread_mutex_lock(&e->mu);
    j.warm0 = e->stats.warm_chunks;
    if (engine_full(e)) {
        e->stats.busy++;
        pthread_mutex_unlock(&e->mu);
        snprintf(err, errlen, "%s",
                 e->stop ? "the LLM service is shutting down" : "all sequences busy and the queue is full");
        return e->stop ? LLM_FAIL : LLM_BUSY;
    }
    if (e->q_tail) e->q_tail->qnext = &j;
    else e->q_head = &j;
    e->q_tail = &j;
    e->n_queued++;
    pthread_cond_signal(&e->wake);
    while (j.state != JOB_DONE) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100 * 1000000L; /* how soon a client that left is noticed */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&e->done, &e->mu, &ts);
        if (j.state == JOB_DONE || j.cancel || !p->alive) continue;
        pthread_mutex_unlock(&e->mu);
        bool alive = p->alive(p->alive_ud);
        pthread_mutex_lock(&e->mu);
        if (!alive && j.state == JOB_QUEUED) {
            /* not started: leave the queue now rather than when a slot frees */
            job **pp = &e->q_head;
            while (*pp != &j) pp = &(*pp)->qnext;
            *pp = j.qnext;
            if (e->q_tail == &j) {
                e->q_tail = NULL;
                for (job *q = e->q_head; q; q = q->qnext) e->q_tail = q;
            }
            e->n_queued--;
            job_finish(e, &j, LLM_CANCELLED);
        } else if (!alive && j.state != JOB_DONE) {
            j.cancel = true;
            pthread_cond_signal(&e->wake);
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (j.rc != LLM_OK) snprintf(err, errlen, "%s", j.err);
    return j.rc;
}

llm_status engine_admit(engine *e) {
    pthread_mutex_lock(&e->mu);
    bool full = engine_full(e);
    e->stats.busy += full;
    pthread_mutex_unlock(&e->mu);
    return full ? LLM_BUSY : LLM_OK;
}

void engine_stats_get(engine *e, llm_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    out->active = e->n_active;
    out->queued = e->n_queued;
    out->retry_after_s = engine_retry_after_s(e);
    out->warm_pending = e->n_wq + e->warming;
    pthread_mutex_unlock(&e->mu);
}

/* Queues a control job and waits until the engine thread has run it
 * (between two steps: at most one batch away). */
static int engine_ctl(engine *e, ctl *c, char *err, size_t errlen) {
    c->rc = -1;
    snprintf(c->err, sizeof c->err, "the LLM service is shutting down");
    pthread_mutex_lock(&e->mu);
    if (!e->stop) {
        if (e->c_tail) e->c_tail->next = c;
        else e->c_head = c;
        e->c_tail = c;
        pthread_cond_signal(&e->wake);
        while (!c->done) pthread_cond_wait(&e->done, &e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    if (c->rc && err) snprintf(err, errlen, "%s", c->err);
    return c->rc;
}

size_t engine_kv_held(engine *e, const char *owner, const int32_t *toks, size_t n) {
    ctl c = {.kind = CTL_HELD, .owner = owner, .toks = toks, .n = n};
    return engine_ctl(e, &c, NULL, 0) == 0 ? c.result : 0;
}

int engine_kv_export(engine *e, const char *owner, const int32_t *toks, size_t n, strbuf *out, size_t *n_held,
                     char *err, size_t errlen) {
    ctl c = {.kind = CTL_EXPORT, .owner = owner, .toks = toks, .n = n, .out = out};
    int rc = engine_ctl(e, &c, err, errlen);
    *n_held = rc == 0 ? c.result : 0;
    return rc;
}

int engine_kv_import(engine *e, const char *owner, const int32_t *toks, size_t n, const void *state, size_t state_n,
                     char *err, size_t errlen) {
    ctl c = {.kind = CTL_IMPORT, .owner = owner, .toks = toks, .n = n, .state = state, .state_n = state_n};
    return engine_ctl(e, &c, err, errlen);
}
