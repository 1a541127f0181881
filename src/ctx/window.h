/* window.h - what of a tokenized session the model sees.
 *
 * A session's model input is its system segment (BOS and the system
 * message: never cut) followed by its turns' bodies (user message, reply,
 * end-of-turn markup), oldest first. When that does not fit the context
 * window, the oldest whole turns are left out. A turn and a warm-up
 * (warm.c) lay the context out by these same two functions, so what a
 * warm-up prefills is a prefix of what the next turn feeds the model. */
#ifndef DC_WINDOW_H
#define DC_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#include "../store/codec.h"

/* Tokens a stored turn contributes to the input, system segment excluded. */
size_t window_turn_tokens(const turn_rec *t);

/* The oldest of turns[0..n) kept when `fixed` tokens (the system segment,
 * the new message, the reply's room) must fit in `budget` with them: n
 * when none fits. *history: the kept turns' tokens. */
uint32_t window_first(const turn_rec *turns, uint32_t n, size_t fixed, size_t budget, size_t *history);

/* Appends turns[first..n)'s bodies to out. */
void window_append(const turn_rec *turns, uint32_t first, uint32_t n, tokvec *out);

#endif
