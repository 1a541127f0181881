/* window.c - see window.h. */
#include "window.h"

size_t window_turn_tokens(const turn_rec *t) { return t->tok[SEG_USER].n + t->tok[SEG_REPLY].n + t->tok[SEG_END].n; }

uint32_t window_first(const turn_rec *turns, uint32_t n, size_t fixed, size_t budget, size_t *history) {
    size_t h = 0;
    for (uint32_t i = 0; i < n; i++) h += window_turn_tokens(&turns[i]);
    uint32_t first = 0; /* drop the oldest whole turns until the rest fits */
    while (first < n && fixed + h > budget) h -= window_turn_tokens(&turns[first++]);
    *history = h;
    return first;
}

void window_append(const turn_rec *turns, uint32_t first, uint32_t n, tokvec *out) {
    for (uint32_t i = first; i < n; i++)
        for (int s = SEG_USER; s <= SEG_END; s++) tokvec_append(out, turns[i].tok[s].v, turns[i].tok[s].n);
}
