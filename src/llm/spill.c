/* spill.c - sequence states kept outside the llama.cpp context.
 *
 * Why: the context's KV streams are fixed in size. llama.cpp gives every
 * sequence of a context (kv_unified = false, engine.c says why) a stream
 * of n_ctx cells, allocated and cleared when the context is made, however
 * few tokens it will hold. Keeping every conversation in a stream of its
 * own would reserve a full window per kept conversation (755 MB for 8 of
 * SmolLM2's at 4,096 tokens, held or not). So the context has only the
 * streams that generate at once, and a conversation pushed out of its
 * stream keeps its KV here, in exactly the bytes its tokens need
 * (llama_state_seq_get_data): resident KV follows the tokens kept. Loading
 * a state back is a copy (milliseconds for a thousand tokens), far below
 * prefilling the same tokens again (bench/RESULTS.md has both measured).
 *
 * Two tiers. Memory holds mem_max states (the conversations the node
 * keeps besides those in streams, --kv-cache-sessions); the least recently
 * used of them goes to disk to make room, and the disk (disk_budget bytes,
 * --kv-spill-mib) drops its least recently used files in turn. States in
 * memory are mmap'd, not malloc'd: a dropped one gives its pages back to
 * the system at once, so the process's RSS follows what is kept (glibc
 * would keep freed chunks below its mmap threshold, which grows to 32 MB,
 * in the heap).
 *
 * States on disk are conversations, so each engine keeps them in a folder
 * of its own, created by mkdtemp (0700, a random name) in dir, and opens
 * them with O_NOFOLLOW | O_EXCL: nothing planted in a shared or predictable
 * place is followed or overwritten. The spill holds an flock on its folder
 * for its life; at start it removes the folders whose lock is free (their
 * engine crashed: the kernel dropped the lock with the process, whatever
 * PID namespace it ran in) and touches nothing else in dir. Files are
 * deleted at exit: they are a cache of this process. */
#include "spill.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../util/log.h"

struct spill {
    spill_params p;
    char *own; /* this engine's private folder (NULL: no disk) */
    int lock;  /* an fd holding an flock on it, or -1 */
    spill_entry *e;
    int n;
    uint64_t tick, seq;
    spill_stats st;
};

spill_params spill_default_params(void) { return (spill_params){.mem_max = 0, .dir = NULL, .disk_budget = 0}; }

/* --- the disk's folder --- */

/* Removes the folders in dir of engines that ended without cleaning up (a
 * crash): those whose flock nobody holds. Only names of the form mkdtemp
 * gave them ("kv-XXXXXX"), and in them only our "*.state" files; unlinkat
 * removes a symlink itself, never what it points to. */
static void reclaim(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *de; (de = readdir(d));) {
        if (strncmp(de->d_name, "kv-", 3) != 0 || strlen(de->d_name) != 9) continue;
        int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        DIR *sub = flock(fd, LOCK_EX | LOCK_NB) == 0 ? fdopendir(fd) : NULL;
        if (!sub) {
            close(fd); /* a live engine's (or not a folder of ours) */
            continue;
        }
        for (struct dirent *f; (f = readdir(sub));) {
            size_t n = strlen(f->d_name);
            if (n > 6 && !strcmp(f->d_name + n - 6, ".state")) unlinkat(fd, f->d_name, 0);
        }
        closedir(sub); /* closes fd and drops the lock */
        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) == 0)
            log_info("engine: removed the KV spill folder %s/%s, left by a crash", dir, de->d_name);
    }
    closedir(d);
}

/* Creates the private folder in dir and locks it. The folder is made under
 * a name reclaim() ignores and renamed once locked, so another engine
 * starting at the same moment never takes a new (still unlocked) folder for
 * a crashed one's. -1 on failure. */
static int open_own(spill *sp, const char *dir) {
    char tmpl[600], final[600];
    snprintf(tmpl, sizeof tmpl, "%s/new-XXXXXX", dir);
    if (!mkdtemp(tmpl)) return -1; /* mode 0700 */
    int fd = open(tmpl, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    snprintf(final, sizeof final, "%s/kv-%s", dir, strrchr(tmpl, '-') + 1);
    if (fd < 0 || flock(fd, LOCK_EX) != 0 || rename(tmpl, final) != 0) {
        if (fd >= 0) close(fd);
        rmdir(tmpl);
        return -1;
    }
    sp->lock = fd;
    sp->own = dc_xstrdup(final);
    return 0;
}

spill *spill_new(const spill_params *p) {
    spill *sp = calloc(1, sizeof *sp);
    if (!sp) return NULL;
    sp->p = *p;
    sp->lock = -1;
    if (p->dir && p->disk_budget) {
        /* the folder and its parent (a node's --data-dir may not exist yet) */
        char parent[512];
        snprintf(parent, sizeof parent, "%s", p->dir);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            mkdir(parent, 0700);
        }
        bool ok = mkdir(p->dir, 0700) == 0 || errno == EEXIST;
        if (ok) reclaim(p->dir);
        if (!ok || open_own(sp, p->dir) != 0)
            log_warn("engine: cannot create a private folder in %s (%s); KV spill to disk off", p->dir,
                     strerror(errno));
    }
    return sp;
}

void spill_free(spill *sp) {
    if (!sp) return;
    while (sp->n) spill_drop(sp, 0);
    free(sp->e);
    if (sp->own) rmdir(sp->own);
    if (sp->lock >= 0) close(sp->lock);
    free(sp->own);
    free(sp);
}

bool spill_on(const spill *sp) { return sp->p.mem_max > 0 || sp->own; }
int spill_n(const spill *sp) { return sp->n; }
const spill_entry *spill_at(const spill *sp, int i) { return &sp->e[i]; }

int spill_find(const spill *sp, uint64_t id) {
    for (int i = 0; i < sp->n; i++)
        if (sp->e[i].id == id) return i;
    return -1;
}

void spill_stats_get(const spill *sp, spill_stats *out) { *out = sp->st; }

/* --- entries --- */

static void mem_free(uint8_t *m, size_t bytes) {
    if (m) munmap(m, bytes);
}

static uint8_t *mem_alloc(size_t bytes) {
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

void spill_drop(spill *sp, int i) {
    spill_entry *x = &sp->e[i];
    if (x->mem) {
        mem_free(x->mem, x->bytes);
        sp->st.n_mem--;
        sp->st.mem_bytes -= x->bytes;
        sp->st.mem_tokens -= x->toks.n;
    } else {
        unlink(x->path);
        sp->st.n_disk--;
        sp->st.disk_bytes -= x->bytes;
    }
    tokvec_free(&x->toks);
    free(x->owner);
    sp->e[i] = sp->e[--sp->n];
}

/* The least recently used entry of a tier but entry keep, or -1. */
static int lru(const spill *sp, bool in_mem, uint64_t keep) {
    int best = -1;
    for (int i = 0; i < sp->n; i++)
        if ((sp->e[i].mem != NULL) == in_mem && sp->e[i].id != keep && (best < 0 || sp->e[i].used < sp->e[best].used))
            best = i;
    return best;
}

/* Writes bytes to a new file of the folder, named for id, into path.
 * Drops the least recently used files but keep first to stay within the
 * budget. */
static bool disk_write(spill *sp, uint64_t id, const uint8_t *bytes, size_t n, char *path, size_t pathlen,
                       uint64_t keep) {
    if (!sp->own || n > sp->p.disk_budget) return false;
    for (int i; sp->st.disk_bytes + n > sp->p.disk_budget && (i = lru(sp, false, keep)) >= 0;) spill_drop(sp, i);
    snprintf(path, pathlen, "%s/%llu.state", sp->own, (unsigned long long)id);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write(fd, bytes, n) == (ssize_t)n;
    if (fd >= 0) close(fd);
    if (!ok) {
        if (fd >= 0) unlink(path); /* only a file this call created */
        log_warn("engine: cannot spill a sequence state to %s", path);
    }
    return ok;
}

/* Memory entry i goes to disk, or is dropped when the disk cannot take it. */
static void demote(spill *sp, int i, uint64_t keep) {
    spill_entry *x = &sp->e[i];
    if (!disk_write(sp, x->id, x->mem, x->bytes, x->path, sizeof x->path, keep)) {
        spill_drop(sp, i);
        return;
    }
    /* disk_write may have dropped other entries, never a memory one: x
     * still sits at i */
    mem_free(x->mem, x->bytes);
    x->mem = NULL;
    sp->st.n_mem--;
    sp->st.mem_bytes -= x->bytes;
    sp->st.mem_tokens -= x->toks.n;
    sp->st.n_disk++;
    sp->st.disk_bytes += x->bytes;
}

void spill_save(spill *sp, struct llama_context *ctx, int seq, const char *owner, const int32_t *toks, size_t n,
                uint64_t keep) {
    size_t size = llama_state_seq_get_size(ctx, seq);
    if (!size || !owner) return;
    spill_entry x = {.bytes = size, .used = ++sp->tick, .id = ++sp->seq};
    bool ok;
    if (sp->p.mem_max > 0) {
        /* keep leaves memory next, for the sequence this one leaves: it
         * does not count, and memory is over by one entry until then */
        int k = keep ? spill_find(sp, keep) : -1, limit = sp->p.mem_max + (k >= 0 && sp->e[k].mem);
        for (int i; sp->st.n_mem >= limit && (i = lru(sp, true, keep)) >= 0;) demote(sp, i, keep);
        x.mem = mem_alloc(size);
        ok = x.mem && llama_state_seq_get_data(ctx, x.mem, size, seq) == size;
        if (!ok) {
            mem_free(x.mem, size);
            log_warn("engine: cannot keep a sequence state of %zu bytes in memory", size);
            return;
        }
    } else {
        uint8_t *buf = size <= sp->p.disk_budget ? malloc(size) : NULL;
        ok = buf && llama_state_seq_get_data(ctx, buf, size, seq) == size &&
            disk_write(sp, x.id, buf, size, x.path, sizeof x.path, keep);
        free(buf);
        if (!ok) return;
    }
    tokvec_append(&x.toks, toks, n);
    x.owner = dc_xstrdup(owner);
    sp->e = dc_xrealloc(sp->e, (size_t)(sp->n + 1) * sizeof *sp->e);
    sp->e[sp->n++] = x;
    if (x.mem) {
        sp->st.n_mem++;
        sp->st.mem_bytes += size;
        sp->st.mem_tokens += n;
    } else {
        sp->st.n_disk++;
        sp->st.disk_bytes += size;
    }
    sp->st.saves++;
}

/* Copies entry x's state to dst (x->bytes of room). */
static bool read_into(const spill_entry *x, uint8_t *dst) {
    if (x->mem) {
        memcpy(dst, x->mem, x->bytes);
        return true;
    }
    int fd = open(x->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    bool ok = fd >= 0 && read(fd, dst, x->bytes) == (ssize_t)x->bytes;
    if (fd >= 0) close(fd);
    return ok;
}

bool spill_restore(spill *sp, int i, struct llama_context *ctx, int seq, tokvec *toks) {
    spill_entry *x = &sp->e[i];
    /* a state in memory loads straight from its pages */
    uint8_t *buf = x->mem ? x->mem : malloc(x->bytes);
    bool ok = buf && (x->mem || read_into(x, buf)) && llama_state_seq_set_data(ctx, buf, x->bytes, seq) == x->bytes;
    if (!x->mem) free(buf);
    if (ok) {
        tokvec_append(toks, x->toks.v, x->toks.n);
        sp->st.restores++;
    } else {
        llama_memory_seq_rm(llama_get_memory(ctx), seq, -1, -1);
        log_warn("engine: cannot restore a sequence state (%s); prefilling instead", x->mem ? "memory" : x->path);
    }
    spill_drop(sp, i);
    return ok;
}

bool spill_read(spill *sp, int i, strbuf *out) {
    spill_entry *x = &sp->e[i];
    strbuf_reserve(out, out->n + x->bytes + 1);
    if (!read_into(x, (uint8_t *)out->s + out->n)) return false;
    out->n += x->bytes;
    x->used = ++sp->tick;
    return true;
}
