/* chat.h - `discedge chat`. */
#ifndef DC_CHAT_H
#define DC_CHAT_H

int chat_main(int argc, char **argv);

#endif
