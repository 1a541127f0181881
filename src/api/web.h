/* web.h - the node's web page (web/index.html), embedded into the binary at
 * build time by cmake/embed.cmake (build/gen/web_index.c) and served at GET /.
 * A chat that shows, per turn, which node answered. */
#ifndef DC_API_WEB_H
#define DC_API_WEB_H

/* NUL-terminated; web_index_html_len excludes the NUL. */
extern const char web_index_html[];
extern const unsigned long web_index_html_len;

#endif
