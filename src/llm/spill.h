/* spill.h - sequence states kept outside the llama.cpp context: in memory
 * first, then on disk. Private to the engine (engine.c); see spill.c.
 *
 * Ownership: the engine owns the spill and calls it from its own thread
 * only; nothing here locks. Entries are read-only to the caller. */
#ifndef DC_SPILL_H
#define DC_SPILL_H

#include <llama.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/vec.h"

typedef struct spill spill;

typedef struct {
    int mem_max;        /* states kept in memory at once (0: none) */
    const char *dir;    /* where the engine's private folder of state files goes; NULL: no disk */
    size_t disk_budget; /* bytes of state files kept (0: no disk) */
} spill_params;

spill_params spill_default_params(void);

/* One kept state. A caller reads the fields; only spill.c writes them. */
typedef struct {
    tokvec toks;   /* the tokens whose KV it holds: positions 0..n-1 */
    char *owner;   /* whose they are (never NULL) */
    uint64_t id;   /* stable while entries come and go (indexes do not) */
    size_t bytes;  /* the state's size */
    uint64_t used; /* LRU tick (spill.c's own clock) */
    uint8_t *mem;  /* the state in memory, or NULL: in the file at path */
    char path[600];
} spill_entry;

typedef struct {
    uint64_t saves, restores;
    int n_mem, n_disk;
    size_t mem_bytes, disk_bytes, mem_tokens;
} spill_stats;

/* Creates the spill; with a dir, also the engine's private folder there
 * (and reclaims the folders of engines that crashed). A folder that cannot
 * be made only turns the disk off (logged). NULL only when out of memory. */
spill *spill_new(const spill_params *p);
/* Drops every entry and removes the folder. */
void spill_free(spill *sp);
/* Whether a save can keep anything (memory or disk). */
bool spill_on(const spill *sp);

int spill_n(const spill *sp);
const spill_entry *spill_at(const spill *sp, int i);
int spill_find(const spill *sp, uint64_t id); /* index, or -1 */
void spill_stats_get(const spill *sp, spill_stats *out);

/* Keeps the state of sequence seq of ctx, which holds owner's toks. The
 * least recently used entries make room (memory ones go to disk first),
 * never entry keep (the one about to be restored into seq; 0: none). A
 * failure only costs the entry (logged). */
void spill_save(spill *sp, struct llama_context *ctx, int seq, const char *owner, const int32_t *toks, size_t n,
                uint64_t keep);
/* Loads entry i into sequence seq (which the caller emptied), appends its
 * tokens to toks and drops the entry: the state lives in the sequence now.
 * On failure (logged) the sequence is emptied again, the entry dropped all
 * the same, and false returned. */
bool spill_restore(spill *sp, int i, struct llama_context *ctx, int seq, tokvec *toks);
/* Appends entry i's state bytes to out (the entry stays). */
bool spill_read(spill *sp, int i, strbuf *out);
void spill_drop(spill *sp, int i);

#endif
