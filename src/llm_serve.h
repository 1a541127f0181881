/* llm_serve.h - `discedge llm-serve`. */
#ifndef DC_LLM_SERVE_H
#define DC_LLM_SERVE_H

int llm_serve_main(int argc, char **argv);

#endif
