/* turn.c - see turn.h. */
#include "turn.h"

turn_decision turn_decide(bool exists, uint32_t stored, uint32_t requested, bool last_try) {
    if (!exists) {
        if (requested == 1) return TURN_PROCEED;
        /* The session may be on its way from another node. */
        return last_try ? TURN_NOT_FOUND : TURN_WAIT;
    }
    if (requested <= stored) return TURN_CONFLICT;
    if (requested == stored + 1) return TURN_PROCEED;
    return last_try ? TURN_STALE : TURN_WAIT;
}
