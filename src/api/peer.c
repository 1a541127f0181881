/* peer.c - node-to-node calls (see peer.h): the KV transfer of issue 15
 * item 3.
 *
 * Why: a node that must serve a session it holds no KV for prefills the
 * whole stored context, while the node that served the previous turn holds
 * exactly that KV. Moving it is worth it when it is faster: the state of a
 * SmolLM2 token is ~23 KB in f16 (half in q8_0), so on a LAN it arrives in
 * a fraction of the time a CPU needs to prefill it, and on a thin uplink it
 * does not. So each fetch is decided by a prediction (peer_kv_fetch), and
 * anything that fails or is refused costs only that fetch: the turn
 * prefills as it always did.
 *
 * Authentication: a shared secret (--peer-key-file), sent in its own
 * header and compared in constant time. A client's API key never opens the
 * peer route, and the peer key opens nothing else: the two are separate
 * because a peer may read any session's KV (it serves every user's
 * sessions), which no client may. The key goes to the URL a turn's record
 * names (session_meta.node_url), so whoever can write records to the store
 * could collect it: the store is trusted as the nodes are (docs/SECURITY.md;
 * --store-key authenticates records), and the key should travel over TLS
 * or a private network only. */
#include "peer.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../util/clock.h"
#include "../util/log.h"

struct peer {
    char key[256];
    size_t key_n;
    llm *m;
    pthread_mutex_t mu;
    double bytes_per_ms; /* the link's measured throughput, fetch overhead included (moving average) */
};

peer_params peer_default_params(void) { return (peer_params){.key_file = NULL, .link_mbps = 100, .m = NULL}; }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

peer *peer_new(const peer_params *p, char *err, size_t errlen) {
    int fd = open(p->key_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        snprintf(err, errlen, "cannot read the peer key file %s", p->key_file);
        return NULL;
    }
    if (st.st_mode & 077) {
        close(fd);
        snprintf(err, errlen, "the peer key file %s can be read by others: chmod 600 it", p->key_file);
        return NULL;
    }
    peer *pr = calloc(1, sizeof *pr);
    ssize_t n = pr ? read(fd, pr->key, sizeof pr->key - 1) : -1;
    close(fd);
    while (n > 0 && (pr->key[n - 1] == '\n' || pr->key[n - 1] == '\r' || pr->key[n - 1] == ' ')) n--;
    if (n < 16 || memchr(pr->key, '\0', (size_t)n) || memchr(pr->key, '\n', (size_t)n)) {
        free(pr);
        snprintf(err, errlen, "the peer key in %s must be one line of 16 to 255 bytes", p->key_file);
        return NULL;
    }
    pr->key_n = (size_t)n;
    pr->m = p->m;
    pr->bytes_per_ms = (p->link_mbps > 0 ? p->link_mbps : 100) * 1e6 / 8 / 1e3;
    pthread_mutex_init(&pr->mu, NULL);
    pthread_once(&curl_once, curl_init);
    return pr;
}

void peer_free(peer *pr) {
    if (!pr) return;
    pthread_mutex_destroy(&pr->mu);
    memset(pr->key, 0, sizeof pr->key);
    free(pr);
}

dc_code peer_check(const peer *pr, const char *presented, dc_error *err) {
    if (!presented || !*presented)
        return dc_fail(err, DC_E_UNAUTHORIZED,
                       "this route is for peer nodes: it needs the peer key (" PEER_KEY_HEADER ")");
    /* constant time in the key's contents: every byte of the longer is read */
    size_t n = strlen(presented), len = n > pr->key_n ? n : pr->key_n;
    unsigned diff = (unsigned)(n ^ pr->key_n);
    for (size_t i = 0; i < len; i++)
        diff |= (unsigned char)(i < n ? presented[i] : 0) ^ (unsigned char)(i < pr->key_n ? pr->key[i] : 0);
    if (diff) return dc_fail(err, DC_E_FORBIDDEN, "wrong peer key");
    return DC_OK;
}

typedef struct {
    strbuf *out;
    size_t cap;
} sink;

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
    sink *s = ud;
    if (s->out->n + size * n > s->cap) return 0; /* more than any state of these tokens: abort */
    strbuf_append(s->out, data, size * n);
    return size * n;
}

/* The prediction. Fetching costs the state's bytes over the link's
 * measured throughput (which includes the round trip and the peer's work:
 * it is measured on whole fetches); prefilling costs the missing tokens
 * over this engine's measured prefill rate (prefilled tokens / prompt ms,
 * all requests so far; batching makes it a conservative rate). A fresh
 * node has measured neither: the link starts at --peer-link-mbps, and
 * prefill at 1 token/ms, about a 0.5B model on a few CPU cores, so a
 * fresh node fetches only what it would take long to prefill. The fetch
 * gives up (and the turn prefills) once it has taken twice the predicted
 * prefill time. */
int peer_kv_fetch(void *ud, const char *url, const char *sid, size_t n, size_t n_missing, strbuf *blob) {
    peer *pr = ud;
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) return 0;
    llm_stats ls;
    llm_stats_get(pr->m, &ls);
    size_t cells = (size_t)ls.n_slots * (size_t)llm_n_ctx(pr->m);
    double bytes_per_token = cells ? (double)ls.kv_bytes / (double)cells : 0;
    double tok_per_ms = ls.prompt_ms > 0 && ls.prefilled_tokens >= 64 ? ls.prefilled_tokens / ls.prompt_ms : 1.0;
    pthread_mutex_lock(&pr->mu);
    double link = pr->bytes_per_ms;
    pthread_mutex_unlock(&pr->mu);
    double fetch_ms = n * bytes_per_token / link, prefill_ms = n_missing / tok_per_ms;
    if (!bytes_per_token || fetch_ms >= prefill_ms) {
        log_debug("session %s: KV transfer not worth it (%.0f ms predicted against %.0f ms of prefill)", sid, fetch_ms,
                  prefill_ms);
        return 0;
    }
    char full[512], hdr[300];
    snprintf(full, sizeof full, "%s/v1/peer/kv/%s", url, sid);
    snprintf(hdr, sizeof hdr, PEER_KEY_HEADER ": %.*s", (int)pr->key_n, pr->key);
    CURL *h = curl_easy_init();
    if (!h) return -1;
    struct curl_slist *hl = curl_slist_append(NULL, hdr);
    sink s = {blob, (size_t)(n * bytes_per_token * 2) + (1u << 20)};
    long timeout = (long)(2 * prefill_ms) + 100;
    curl_easy_setopt(h, CURLOPT_URL, full);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout < 1000 ? timeout : 1000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    double t0 = clock_mono_ms();
    CURLcode cc = curl_easy_perform(h);
    double ms = clock_mono_ms() - t0;
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    if (cc != CURLE_OK || status != 200) {
        log_info("session %s: no KV from %s (%s, HTTP %ld); prefilling", sid, url,
                 cc != CURLE_OK ? curl_easy_strerror(cc) : "refused", status);
        strbuf_clear(blob);
        return -1;
    }
    pthread_mutex_lock(&pr->mu);
    double got = blob->n / (ms > 0.1 ? ms : 0.1);
    pr->bytes_per_ms = 0.7 * pr->bytes_per_ms + 0.3 * got;
    pthread_mutex_unlock(&pr->mu);
    log_debug("session %s: %zu bytes of KV from %s in %.1f ms (predicted %.1f; prefill %.1f)", sid, blob->n, url, ms,
              fetch_ms, prefill_ms);
    return 1;
}
