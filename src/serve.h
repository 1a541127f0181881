/* serve.h - `discedge serve`. */
#ifndef DC_SERVE_H
#define DC_SERVE_H

int serve_main(int argc, char **argv);

#endif
