/* identity.c - see identity.h. */
#include "identity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *identity_user(const char *key_user, const char *claimed) {
    if (key_user && *key_user) return key_user;
    if (claimed) return claimed; /* checked where it is used (ids.h): "" is no one's name */
    return IDENTITY_ANONYMOUS;
}

dc_code identity_new_session(uint32_t *turn, char sid[ID_MAX + 1], dc_error *err) {
    if (*turn > 1) return dc_fail(err, DC_E_INVALID, "turn %u needs the session_id of turn 1", *turn);
    *turn = 1;
    if (id_random_hex(sid) != 0) return dc_fail(err, DC_E_INTERNAL, "no randomness for a session id");
    return DC_OK;
}

dc_code identity_fork_id(char sid[ID_MAX + 1], dc_error *err) {
    if (id_random_hex(sid) != 0) return dc_fail(err, DC_E_INTERNAL, "no randomness for a session id");
    return DC_OK;
}

void identity_reply_id(bool responses, const char *sid, uint32_t turn, char out[IDENTITY_REPLY_MAX]) {
    char rnd[33];
    if (!(responses && sid) && id_random_hex(rnd) != 0) strcpy(rnd, "0"); /* unique is nice, not needed */
    if (!responses) snprintf(out, IDENTITY_REPLY_MAX, "chatcmpl-%s", rnd);
    else if (sid) snprintf(out, IDENTITY_REPLY_MAX, "resp_%s_%u", sid, turn);
    else snprintf(out, IDENTITY_REPLY_MAX, "resp_%s", rnd);
}

bool identity_response_id_parse(const char *id, char sid[ID_MAX + 1], uint32_t *turn) {
    if (strncmp(id, "resp_", 5) != 0) return false;
    const char *s = id + 5, *us = strrchr(s, '_');
    if (!us || us == s || (size_t)(us - s) > ID_MAX) return false;
    char *end;
    unsigned long t = strtoul(us + 1, &end, 10);
    if (!us[1] || *end || t < 1 || t >= UINT32_MAX - 1 || us[1] == '0') return false;
    memcpy(sid, s, (size_t)(us - s));
    sid[us - s] = '\0';
    *turn = (uint32_t)t;
    return id_is_valid(sid);
}
