/* llm_server.h - the LLM service over HTTP: `discedge llm-serve`.
 *
 * Exposes this machine's engine with the subset of llama.cpp llama-server's
 * API that the remote implementation (llm/remote.c) uses, so a context
 * manager on another machine can drive it (`discedge serve --llm URL`):
 *   GET  /props /health
 *   POST /tokenize /detokenize /apply-template /completion
 * /props adds a "discedge" object (model name, fingerprint, vocabulary size)
 * that plain llama-server does not have, and one call of its own:
 *   POST /render   messages -> token ids, rendered and tokenized as
 *                  llm_chat_render does (one round trip for a turn's message)
 * which remote.c uses when /props says "discedge": {"render": true}. */
#ifndef DC_API_LLM_SERVER_H
#define DC_API_LLM_SERVER_H

#include <stddef.h>

#include "../llm/llm.h"

typedef struct llm_server llm_server;

typedef struct {
    const char *host;
    int port;              /* 0: any free port */
    size_t max_body;
    int default_n_predict; /* for n_predict -1 or absent */
    const char *model_path; /* reported in /props */
} llm_server_params;

llm_server_params llm_server_default_params(void);
llm_server *llm_server_start(const llm_server_params *p, llm *m, char *err, size_t errlen);
int llm_server_port(const llm_server *s);
void llm_server_stop(llm_server *s);

#endif
