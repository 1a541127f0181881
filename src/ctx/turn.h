/* turn.h - the paper's turn protocol, as a pure decision.
 *
 * The client counts turns. A request for turn N continues a session whose
 * stored turn is N-1. Anything else is one of: the local replica has not yet
 * seen the client's latest turn (wait and re-read, then give up), the client
 * repeats or skips back (conflict: tell it the expected turn), or there is no
 * such session. Kept free of I/O so every case is unit-tested. */
#ifndef DC_TURN_H
#define DC_TURN_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    TURN_PROCEED,   /* requested == stored + 1 (or a new session at turn 1) */
    TURN_WAIT,      /* replica behind: re-read after a pause */
    TURN_CONFLICT,  /* requested <= stored: 409, expected stored + 1 */
    TURN_STALE,     /* still behind after the last re-read: 503 stale_context */
    TURN_NOT_FOUND  /* no session and requested > 1, after the last re-read: 404 */
} turn_decision;

/* exists: the session is in the store; stored: its last committed turn;
 * requested: the client's turn (>= 1); last_try: no re-reads left. */
turn_decision turn_decide(bool exists, uint32_t stored, uint32_t requested, bool last_try);

#endif
